"""Scaled dot-product attention behind a small kernel registry.

Layout is (batch, tokens, heads, head_dim) everywhere. The ``"xla"`` entry is the dense reference
(fp32 softmax, explicit boolean mask and additive bias); every fast path is tested against it.
"""

from __future__ import annotations

from collections.abc import Callable

import jax
import jax.numpy as jnp

AttentionFn = Callable[..., jax.Array]
_KERNELS: dict[str, AttentionFn] = {}


def register_kernel(name: str) -> Callable[[AttentionFn], AttentionFn]:
    def wrap(fn: AttentionFn) -> AttentionFn:
        _KERNELS[name] = fn
        return fn

    return wrap


def available_kernels() -> tuple[str, ...]:
    return tuple(_KERNELS)


@register_kernel("xla")
def dense_attention(
    q: jax.Array,
    k: jax.Array,
    v: jax.Array,
    *,
    mask: jax.Array | None = None,
    bias: jax.Array | None = None,
    scale: float | None = None,
) -> jax.Array:
    """Reference path. mask: bool, broadcastable to (B, H, Tq, Tk), True = attend."""
    scale = q.shape[-1] ** -0.5 if scale is None else scale
    logits = jnp.einsum("bqhd,bkhd->bhqk", q, k, preferred_element_type=jnp.float32) * scale
    if bias is not None:
        logits = logits + bias.astype(jnp.float32)
    if mask is not None:
        logits = jnp.where(mask, logits, jnp.finfo(jnp.float32).min)
    probs = jax.nn.softmax(logits, axis=-1).astype(v.dtype)
    return jnp.einsum("bhqk,bkhd->bqhd", probs, v)


@register_kernel("cudnn")
def cudnn_attention(q, k, v, *, mask=None, bias=None, scale=None) -> jax.Array:
    """cuDNN flash attention (GPU only, bf16/fp16 inputs)."""
    return jax.nn.dot_product_attention(q, k, v, bias=bias, mask=mask, scale=scale, implementation="cudnn")


def attention(
    q: jax.Array,
    k: jax.Array,
    v: jax.Array,
    *,
    mask: jax.Array | None = None,
    bias: jax.Array | None = None,
    scale: float | None = None,
    implementation: str = "xla",
) -> jax.Array:
    try:
        fn = _KERNELS[implementation]
    except KeyError:
        raise ValueError(f"unknown attention implementation {implementation!r}; have {available_kernels()}") from None
    return fn(q, k, v, mask=mask, bias=bias, scale=scale)
