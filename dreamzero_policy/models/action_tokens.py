"""Embodiment-specific state / action encoders and the action decoder (the DiT's action register).

Weights are stored [category, in, out] exactly as the reference's ``CategorySpecificLinear`` does, so
conversion is a copy; each batch element selects its embodiment's weights by id.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx

from dreamzero_policy.nn.embeddings import sin_cos_encoding


class CategorySpecificLinear(nnx.Module):
    def __init__(self, num_categories: int, in_dim: int, out_dim: int, *, rngs: nnx.Rngs, param_dtype=jnp.float32):
        self.W = nnx.Param(0.02 * jax.random.normal(rngs.params(), (num_categories, in_dim, out_dim), param_dtype))
        self.b = nnx.Param(jnp.zeros((num_categories, out_dim), param_dtype))

    def __call__(self, x: jax.Array, cat_ids: jax.Array) -> jax.Array:
        """x (B, T, in), cat_ids (B,) int -> (B, T, out)."""
        w = self.W[...][cat_ids].astype(x.dtype)
        b = self.b[...][cat_ids].astype(jnp.float32)
        y = jnp.einsum("bti,bio->bto", x, w, preferred_element_type=jnp.float32) + b[:, None, :]
        return y.astype(x.dtype)


class CategorySpecificMLP(nnx.Module):
    """layer1 -> ReLU -> layer2 (state encoder and action decoder)."""

    def __init__(self, num_categories: int, in_dim: int, hidden: int, out_dim: int, *, rngs: nnx.Rngs,
                 param_dtype=jnp.float32):
        self.layer1 = CategorySpecificLinear(num_categories, in_dim, hidden, rngs=rngs, param_dtype=param_dtype)
        self.layer2 = CategorySpecificLinear(num_categories, hidden, out_dim, rngs=rngs, param_dtype=param_dtype)

    def __call__(self, x: jax.Array, cat_ids: jax.Array) -> jax.Array:
        return self.layer2(jax.nn.relu(self.layer1(x, cat_ids)), cat_ids)


class MultiEmbodimentActionEncoder(nnx.Module):
    """W1(action) ++ sin/cos(t) -> W2 -> swish -> W3, per embodiment."""

    def __init__(self, action_dim: int, dim: int, num_categories: int, *, rngs: nnx.Rngs, param_dtype=jnp.float32):
        self.dim = dim
        kw = dict(rngs=rngs, param_dtype=param_dtype)
        self.W1 = CategorySpecificLinear(num_categories, action_dim, dim, **kw)
        self.W2 = CategorySpecificLinear(num_categories, 2 * dim, dim, **kw)
        self.W3 = CategorySpecificLinear(num_categories, dim, dim, **kw)

    def __call__(self, actions: jax.Array, timesteps: jax.Array, cat_ids: jax.Array) -> jax.Array:
        """actions (B, T, action_dim), timesteps (B, T) -> (B, T, dim)."""
        a = self.W1(actions, cat_ids)
        tau = sin_cos_encoding(timesteps, self.dim).astype(a.dtype)
        x = self.W2(jnp.concatenate([a, tau], axis=-1), cat_ids)
        return self.W3(jax.nn.silu(x), cat_ids)


def check_embodiment_ids(cat_ids: jax.Array, batch: int, num_categories: int) -> None:
    """Host-side check (concrete ids only): an out-of-range id would silently clamp inside a gather."""
    if cat_ids.shape != (batch,):
        raise ValueError(f"embodiment_id must have shape ({batch},), got {cat_ids.shape}")
    if not isinstance(cat_ids, jax.core.Tracer):
        ids = np.asarray(cat_ids)  # host-side: jnp ops here would be staged inside an enclosing trace
        lo, hi = int(ids.min()), int(ids.max())
        if lo < 0 or hi >= num_categories:
            raise ValueError(f"embodiment_id must be in [0, {num_categories}), got range [{lo}, {hi}]")
