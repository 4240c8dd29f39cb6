"""Normalisation layers computed in float32 (as the reference does), cast back to the input dtype."""

from __future__ import annotations

import jax
import jax.numpy as jnp
from flax import nnx


class RMSNorm(nnx.Module):
    """x * rsqrt(mean(x^2) + eps) * scale  (Wan q/k norm, umT5 layer norm)."""

    def __init__(self, dim: int, *, eps: float = 1e-6, param_dtype=jnp.float32):
        self.eps = eps
        self.scale = nnx.Param(jnp.ones((dim,), param_dtype))

    def __call__(self, x: jax.Array) -> jax.Array:
        x32 = x.astype(jnp.float32)
        y = x32 * jax.lax.rsqrt(jnp.mean(x32 * x32, axis=-1, keepdims=True) + self.eps)
        return (y * self.scale[...].astype(jnp.float32)).astype(x.dtype)


class LayerNorm(nnx.Module):
    """LayerNorm over the last axis; ``affine=False`` gives the non-affine norm of AdaLN blocks."""

    def __init__(self, dim: int, *, eps: float = 1e-6, affine: bool = True, param_dtype=jnp.float32):
        self.eps = eps
        self.affine = affine
        if affine:
            self.scale = nnx.Param(jnp.ones((dim,), param_dtype))
            self.bias = nnx.Param(jnp.zeros((dim,), param_dtype))

    def __call__(self, x: jax.Array) -> jax.Array:
        x32 = x.astype(jnp.float32)
        mean = jnp.mean(x32, axis=-1, keepdims=True)
        var = jnp.mean(jnp.square(x32 - mean), axis=-1, keepdims=True)
        y = (x32 - mean) * jax.lax.rsqrt(var + self.eps)
        if self.affine:
            y = y * self.scale[...].astype(jnp.float32) + self.bias[...].astype(jnp.float32)
        return y.astype(x.dtype)
