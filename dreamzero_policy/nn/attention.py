"""Scaled dot-product attention behind a small kernel registry.

Layout is (batch, tokens, heads, head_dim) everywhere. The ``"xla"`` entry is the dense reference
(fp32 softmax, explicit boolean mask and additive bias); every fast path is tested against it.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Literal

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


def _to_bnts(x: jax.Array | None, q: jax.Array, k: jax.Array) -> jax.Array | None:
    """Our mask/bias (any shape broadcastable to (B, H, Tq, Tk), e.g. (Tq, Tk) or a key row (1, Tk)) as the
    4-D (B|1, H|1, Tq, Tk) array jax.nn.dot_product_attention takes: it wants rank 4, and cuDNN turns the
    mask into a bias whose last two dims must be exactly (Tq, Tk), so rows/columns are broadcast out."""
    if x is None:
        return None
    x = jnp.asarray(x)
    if x.ndim > 4:
        raise ValueError(f"mask/bias must have at most 4 dims (B, H, Tq, Tk), got shape {x.shape}")
    x = x.reshape((1,) * (4 - x.ndim) + x.shape)
    full = (q.shape[0], q.shape[2], q.shape[1], k.shape[1])
    if any(m not in (1, n) for m, n in zip(x.shape, full, strict=True)):
        raise ValueError(f"mask/bias {x.shape} does not broadcast to (B, H, Tq, Tk) = {full}")
    return jnp.broadcast_to(x, x.shape[:2] + full[2:])


def sdpa_attention(
    q: jax.Array,
    k: jax.Array,
    v: jax.Array,
    *,
    mask: jax.Array | None = None,
    bias: jax.Array | None = None,
    scale: float | None = None,
    implementation: Literal["xla", "cudnn"] | None = None,
    compute_dtype: jnp.dtype | None = None,
) -> jax.Array:
    """jax.nn.dot_product_attention with our mask/bias conventions; output in q's dtype.

    ``compute_dtype`` casts q/k/v (and bias) first. The ``"cudnn"`` kernel is this with
    implementation="cudnn"; on CPU the same adapter runs with implementation="xla" (tested).
    """
    out_dtype = q.dtype
    if compute_dtype is not None:
        q, k, v = (x.astype(compute_dtype) for x in (q, k, v))
    mask = _to_bnts(None if mask is None else jnp.asarray(mask, bool), q, k)
    bias = _to_bnts(None if bias is None else jnp.asarray(bias, q.dtype), q, k)
    out = jax.nn.dot_product_attention(q, k, v, bias=bias, mask=mask, scale=scale, implementation=implementation)
    return out.astype(out_dtype)


@register_kernel("cudnn")
def cudnn_attention(
    q: jax.Array,
    k: jax.Array,
    v: jax.Array,
    *,
    mask: jax.Array | None = None,
    bias: jax.Array | None = None,
    scale: float | None = None,
) -> jax.Array:
    """cuDNN flash attention (GPU only). cuDNN takes only bf16/fp16: other dtypes (fp32) are cast to bf16
    for the kernel and the output is cast back, so an fp32 model loses precision inside attention."""
    dt = q.dtype if q.dtype in (jnp.bfloat16, jnp.float16) else jnp.bfloat16
    return sdpa_attention(q, k, v, mask=mask, bias=bias, scale=scale, implementation="cudnn", compute_dtype=dt)


@register_kernel("splash")
def splash_attention(
    q: jax.Array,
    k: jax.Array,
    v: jax.Array,
    *,
    mask: jax.Array | None = None,
    bias: jax.Array | None = None,
    scale: float | None = None,
) -> jax.Array:
    """TPU splash attention (Pallas; interpret mode off TPU). Masks: see dreamzero_policy.nn.splash; no bias."""
    from dreamzero_policy.nn import splash  # lazy: the Pallas TPU import is slow

    return splash.splash_attention(q, k, v, mask=mask, bias=bias, scale=scale)


def _register_chunked() -> None:
    from dreamzero_policy.nn import chunked  # noqa: F401 - registers "xla_chunked" (imports this module)


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


_register_chunked()
