"""Rotary position embeddings in the reference's complex adjacent-pair convention.

Pairs (x[2i], x[2i+1]) are rotated as one complex number by angle ``pos * theta^(-2i/d)``. Angle
tables are computed exactly on the host in float64 and cast to float32 once, so nothing inside
``jit`` silently relies on float64 (which JAX truncates to float32 without x64). Positions may be
traced values: tables are gathered, never recomputed.
"""

from __future__ import annotations

from dataclasses import dataclass
from functools import lru_cache

import jax
import jax.numpy as jnp
import numpy as np


def video_rope_split(head_dim: int) -> tuple[int, int, int]:
    """Head-dim split for (time, height, width): d - 4*(d//6), 2*(d//6), 2*(d//6) (44/42/42 at 128)."""
    if head_dim % 2:
        raise ValueError(f"head_dim must be even for RoPE, got {head_dim}")
    hw = 2 * (head_dim // 6)
    return head_dim - 2 * hw, hw, hw


@lru_cache(maxsize=64)
def _angle_table(max_pos: int, dim: int, theta: float) -> tuple[np.ndarray, np.ndarray]:
    """cos/sin of pos * theta^(-2i/dim), shape (max_pos, dim // 2), computed in float64."""
    inv = 1.0 / np.power(theta, np.arange(0, dim, 2, dtype=np.float64) / dim)
    ang = np.outer(np.arange(max_pos, dtype=np.float64), inv)
    return np.cos(ang).astype(np.float32), np.sin(ang).astype(np.float32)


@dataclass(frozen=True)
class RopeTables:
    """Static RoPE tables for one head_dim: 3D video (t/h/w) and 1D action / state positions."""

    head_dim: int
    max_frames: int = 1024
    max_hw: int = 1024
    max_action_pos: int = 10240
    max_state_pos: int = 1024
    theta: float = 10000.0

    def _table(self, n: int, dim: int) -> tuple[jax.Array, jax.Array]:
        c, s = _angle_table(n, dim, self.theta)
        return jnp.asarray(c), jnp.asarray(s)

    def video(self, frame_pos: jax.Array, h: int, w: int) -> tuple[jax.Array, jax.Array]:
        """cos/sin (F*h*w, head_dim/2) for frames at absolute indices ``frame_pos`` (F,) on an h x w grid."""
        dt, dh, dw = video_rope_split(self.head_dim)
        if h > self.max_hw or w > self.max_hw:
            raise ValueError(f"grid {h}x{w} exceeds the RoPE table size {self.max_hw}")
        f = frame_pos.shape[0]
        parts_c, parts_s = [], []
        for dim, idx, shape in (
            (dt, frame_pos, (f, 1, 1)),
            (dh, jnp.arange(h), (1, h, 1)),
            (dw, jnp.arange(w), (1, 1, w)),
        ):
            n = self.max_frames if dim == dt and idx is frame_pos else self.max_hw
            c, s = self._table(n, dim)
            parts_c.append(jnp.broadcast_to(c[idx].reshape(*shape, -1), (f, h, w, dim // 2)))
            parts_s.append(jnp.broadcast_to(s[idx].reshape(*shape, -1), (f, h, w, dim // 2)))
        cos = jnp.concatenate(parts_c, axis=-1).reshape(f * h * w, self.head_dim // 2)
        sin = jnp.concatenate(parts_s, axis=-1).reshape(f * h * w, self.head_dim // 2)
        return cos, sin

    def action(self, pos: jax.Array) -> tuple[jax.Array, jax.Array]:
        c, s = self._table(self.max_action_pos, self.head_dim)
        return c[pos], s[pos]

    def state(self, pos: jax.Array) -> tuple[jax.Array, jax.Array]:
        c, s = self._table(self.max_state_pos, self.head_dim)
        return c[pos], s[pos]


def apply_rope(x: jax.Array, cos: jax.Array, sin: jax.Array) -> jax.Array:
    """Rotate adjacent pairs of x (B, L, H, D) by per-token angles cos/sin (L, D/2), in float32."""
    b, n, h, d = x.shape
    xr = x.astype(jnp.float32).reshape(b, n, h, d // 2, 2)
    re, im = xr[..., 0], xr[..., 1]
    c, s = cos[None, :, None, :], sin[None, :, None, :]
    out = jnp.stack([re * c - im * s, re * s + im * c], axis=-1)
    return out.reshape(b, n, h, d).astype(x.dtype)
