"""Linear layers with separate storage and compute dtypes and float32 accumulation.

The reference runs its bf16 matmuls with fp32 accumulation (cuBLAS / autocast). ``Dense`` asks XLA for a
float32 result of the ``dtype`` x ``dtype`` product, adds the bias in float32 and rounds once to
``dtype``; with ``dtype=float32`` it is exactly ``nnx.Linear``. Parameter names (kernel, bias) are
``nnx.Linear``'s, so checkpoints and sharding rules do not see the difference.
"""

from __future__ import annotations

from typing import Any

import jax
import jax.numpy as jnp
from flax import nnx


class Dense(nnx.Linear):
    def __init__(self, in_features: int, out_features: int, *, rngs: nnx.Rngs, dtype: Any = jnp.float32,
                 param_dtype: Any = jnp.float32, **kwargs: Any):
        super().__init__(in_features, out_features, dtype=dtype, param_dtype=param_dtype,
                         preferred_element_type=jnp.float32, rngs=rngs, **kwargs)

    def __call__(self, x: jax.Array) -> jax.Array:
        return super().__call__(x).astype(self.dtype)
