"""KV-cached chunked autoregressive rollout (the reference's ``lazy_joint_video_action``), jit-friendly.

Everything here is a pure function of ``(model, RolloutState, inputs)`` with static shapes: the per-layer
KV cache is pre-allocated for the longest context (frame 0 + ``max_chunks - 1`` observed blocks) and
written at ``start_frame * frame_seqlen`` with ``lax.dynamic_update_slice``; ``start_frame`` is a traced
int, so one compiled executable serves every chunk. Classifier-free guidance runs the conditional and
unconditional branches as one batch (rows [cond | uncond]); the guidance applies to the video velocity
only and the actions come from the conditional branch, as in the reference.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import NamedTuple

import jax
import jax.numpy as jnp

from dreamzero_policy.models.dit import Register
from dreamzero_policy.models.dit_block import CrossKV
from dreamzero_policy.models.world_model import DreamZeroModel
from dreamzero_policy.schedulers.unipc import UniPCSchedule, denoise


@dataclass(frozen=True)
class RolloutSpec:
    """Static description of a rollout (hashable: a jit static argument)."""

    batch: int
    frame_hw: tuple[int, int]  # tiled frame (H, W) in pixels
    latent_hw: tuple[int, int]  # VAE latent grid (h, w)
    max_chunks: int
    cfg_scale: float
    schedule: UniPCSchedule
    dit_mask: tuple[bool, ...]

    @property
    def branches(self) -> int:
        return 1 if self.cfg_scale == 1.0 else 2


class RolloutState(NamedTuple):
    k: jax.Array  # (L, branches*B, max_tokens, H, D) RoPE'd keys of observed clean frames
    v: jax.Array
    cross: CrossKV  # per-layer cross-attention K/V, (L, branches*B, Lc, H, D)
    y: jax.Array  # (B, Fy, h, w, Cy) first-frame conditioning (Cy = 0 when the model takes none)
    start_frame: jax.Array  # int32: absolute latent frame index of the next block to denoise


def _frame_seqlen(model: DreamZeroModel, spec: RolloutSpec) -> int:
    pt, ph, pw = model.cfg.dit.patch_size
    return (spec.latent_hw[0] // ph) * (spec.latent_hw[1] // pw)


def context_frames(model: DreamZeroModel, spec: RolloutSpec) -> int:
    """Latent frames the cache holds at most: frame 0 and the observed blocks of chunks 2..max_chunks."""
    return 1 + (spec.max_chunks - 1) * model.cfg.dit.frames_per_block


def _tile(x: jax.Array, n: int) -> jax.Array:
    return jnp.concatenate([x] * n, axis=0) if n > 1 else x


def start_context(model: DreamZeroModel, spec: RolloutSpec, text: jax.Array, first_frame: jax.Array) -> RolloutState:
    """A fresh context: cross-attention K/V for both branches, y and an empty cache.

    text (branches*B, L, text_dim): umT5 states, rows [prompt | negative prompt] when guided;
    first_frame (B, H, W, 3) in [-1, 1].
    """
    dit, cfg = model.dit, model.cfg
    b = spec.batch
    if text.shape[0] != spec.branches * b:
        raise ValueError(f"text states need {spec.branches * b} rows (prompt and negative prompt), got {text.shape[0]}")
    num_video = 1 + 4 * cfg.dit.frames_per_block * spec.max_chunks
    clip, y = model.encode_first_frame(first_frame, num_video)
    ctx, img = dit.embed_context(text, None if clip is None else _tile(clip, spec.branches))
    cross = dit.cross_kv(ctx, img)
    if y is None:
        y = jnp.zeros((b, 1, *spec.latent_hw, 0), jnp.float32)
    tokens = context_frames(model, spec) * _frame_seqlen(model, spec)
    shape = (cfg.dit.num_layers, spec.branches * b, tokens, cfg.dit.num_heads, cfg.dit.head_dim)
    zeros = jnp.zeros(shape, dit.compute_dtype)
    return RolloutState(zeros, zeros, cross, y.astype(jnp.float32), jnp.zeros((), jnp.int32))


def _y_slice(model: DreamZeroModel, state: RolloutState, start: jax.Array, n: int) -> jax.Array | None:
    """y for latent frames start..start+n-1 (the last n frames of y past its end, as the reference)."""
    if not model.cfg.dit.concat_first_frame_latent:
        return None
    fy = state.y.shape[1]
    s = jnp.clip(start, 0, fy - n)
    return jax.lax.dynamic_slice_in_dim(state.y, s, n, axis=1)


def observe(model: DreamZeroModel, spec: RolloutSpec, state: RolloutState, latents: jax.Array,
            start: jax.Array) -> RolloutState:
    """The t=0 pass: append clean latents (B, f, h, w, z) at absolute frame ``start`` to the cache."""
    dit = model.dit
    b, f = latents.shape[:2]
    s_len = _frame_seqlen(model, spec)
    valid = jnp.arange(state.k.shape[2]) < start * s_len
    y = _y_slice(model, state, start, f)
    video, _, (k, v) = dit.forward_chunk(
        _tile(latents, spec.branches), jnp.zeros((spec.branches * b,)), start, state.cross,
        (state.k, state.v), valid, None, None if y is None else _tile(y, spec.branches),
    )
    del video
    pos = (0, 0, start * s_len, 0, 0)
    k = jax.lax.dynamic_update_slice(state.k, k.astype(state.k.dtype), pos)
    v = jax.lax.dynamic_update_slice(state.v, v.astype(state.v.dtype), pos)
    return state._replace(k=k, v=v)


def observe_first(model: DreamZeroModel, spec: RolloutSpec, state: RolloutState, frame: jax.Array) -> RolloutState:
    """Frame (B, H, W, 3) in [-1, 1] -> latent frame 0 in the cache; the next block starts at frame 1."""
    lat = model.encode_video(frame[:, None])
    state = observe(model, spec, state, lat, jnp.zeros((), jnp.int32))
    return state._replace(start_frame=jnp.ones((), jnp.int32))


def observe_block(model: DreamZeroModel, spec: RolloutSpec, state: RolloutState, frames: jax.Array) -> RolloutState:
    """The 4*fpb frames (B, T, H, W, 3) seen while the last chunk executed replace that chunk's predicted
    latent frames in the cache. As the reference, they are encoded as a fresh clip behind a copy of their
    first frame, and the last fpb latent frames are kept."""
    fpb = model.cfg.dit.frames_per_block
    lat = model.encode_video(jnp.concatenate([frames[:, :1], frames], axis=1))[:, -fpb:]
    return observe(model, spec, state, lat, state.start_frame - fpb)


def plan(
    model: DreamZeroModel,
    spec: RolloutSpec,
    state: RolloutState,
    robot_state: jax.Array,
    embodiment: jax.Array,
    key: jax.Array,
) -> tuple[jax.Array, jax.Array, RolloutState]:
    """Jointly denoise the next block's latent frames and its action chunk, attending to the cache.

    robot_state (B, states_per_block, state_dim) normalised and padded. Returns (actions (B,
    actions_per_block, action_dim) normalised, predicted latents (B, fpb, h, w, z), state advanced by
    one block).
    """
    dcfg = model.cfg.dit
    b, nb = spec.batch, spec.branches
    fpb = dcfg.frames_per_block
    start = state.start_frame
    s_len = _frame_seqlen(model, spec)
    valid = jnp.arange(state.k.shape[2]) < start * s_len
    y = _y_slice(model, state, start, fpb)
    y = None if y is None else _tile(y, nb)
    kv, ka = jax.random.split(key)
    noise = (
        jax.random.normal(kv, (b, fpb, *spec.latent_hw, dcfg.out_dim), jnp.float32),
        jax.random.normal(ka, (b, dcfg.actions_per_block, dcfg.action_dim), jnp.float32),
    )
    emb = _tile(embodiment, nb)
    rs = _tile(robot_state, nb)

    def velocity(sample, t, _i):
        video, actions = sample
        tt = jnp.full((nb * b,), t, jnp.float32)
        reg = Register(_tile(actions, nb), jnp.full((nb * b, actions.shape[1]), t, jnp.float32), rs, emb)
        v_video, v_act, _ = model.dit.forward_chunk(
            _tile(video, nb), tt, start, state.cross, (state.k, state.v), valid, reg, y
        )
        if nb == 2:
            cond, uncond = v_video[:b], v_video[b:]
            v_video = uncond + spec.cfg_scale * (cond - uncond)
        return v_video, v_act[:b]

    video, actions = denoise(spec.schedule, velocity, noise, spec.dit_mask)
    return actions, video, state._replace(start_frame=start + fpb)
