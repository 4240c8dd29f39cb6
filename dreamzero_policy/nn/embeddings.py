"""Sinusoidal embeddings of diffusion timesteps."""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np


def _split_hi_lo(x: jax.Array) -> tuple[jax.Array, jax.Array]:
    """Veltkamp split of float32 x into hi (12 significant bits) + lo, hi + lo == x exactly."""
    c = jnp.float32(4097.0)
    t = c * x
    hi = t - (t - x)
    return hi, x - hi


def timestep_embedding(t: jax.Array, dim: int, max_period: float = 10000.0) -> jax.Array:
    """Wan's embedding: [cos(t f_i), sin(t f_i)], f_i = max_period^(-i/half) (cos first).

    The reference computes this in float64. In float32 ``t * f`` loses ~6e-5 rad at t ~ 1000, so the
    product is formed as an exact hi*hi term plus small corrections and the rotation is applied by the
    angle-addition formula: the result agrees with float64 to ~1e-7 without enabling x64.
    """
    if dim % 2:
        raise ValueError(f"embedding dim must be even, got {dim}")
    half = dim // 2
    freqs = np.power(max_period, -np.arange(half, dtype=np.float64) / half)
    f_hi = jnp.asarray(freqs.astype(np.float32))
    f_lo = jnp.asarray((freqs - freqs.astype(np.float32).astype(np.float64)).astype(np.float32))
    t = t.astype(jnp.float32)[..., None]
    t_hi, t_lo = _split_hi_lo(t)
    fh_hi, fh_lo = _split_hi_lo(f_hi)
    big = t_hi * fh_hi  # exact: 12 x 12 significant bits
    small = t_hi * fh_lo + t_lo * f_hi + t * f_lo
    cb, sb = jnp.cos(big), jnp.sin(big)
    cos = cb * jnp.cos(small) - sb * jnp.sin(small)
    sin = sb * jnp.cos(small) + cb * jnp.sin(small)
    return jnp.concatenate([cos, sin], axis=-1)


def sin_cos_encoding(t: jax.Array, dim: int) -> jax.Array:
    """The action encoder's encoding: [sin, cos] (sin first), computed in float32 as the reference does."""
    half = dim // 2
    exponent = -jnp.arange(half, dtype=jnp.float32) * (jnp.log(jnp.float32(10000.0)) / half)
    freqs = t.astype(jnp.float32)[..., None] * jnp.exp(exponent)
    return jnp.concatenate([jnp.sin(freqs), jnp.cos(freqs)], axis=-1)
