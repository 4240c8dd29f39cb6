"""TPU splash attention (JAX's Pallas kernel) for the ``"splash"`` entry of the attention registry.

Our masks become splash's sparse descriptions:
- a concrete (numpy / non-traced) (Lq, Lk) mask, e.g. the teacher-forcing block mask, becomes a static
  ``NumpyMask``: fully masked blocks are skipped and the block structure is fixed at trace time;
- a per-key validity row (..., 1, Lk), e.g. the KV-cache mask of cached inference, traced or not,
  becomes segment ids (queries 1, valid keys 1, invalid keys 0), so no (Lq, Lk) mask is built;
- a traced (Lq, Lk) mask (``jnp.asarray(numpy_mask)`` under ``jit`` is a tracer) becomes splash's
  dynamic mask: same result, block sparsity found at run time from the materialised mask.
The kernel has no batch axis and one mask for all heads, so it runs as one head, vmapped over
batch x heads. Off TPU it runs in Pallas interpret mode (slow, for tests).
"""

from __future__ import annotations

import hashlib
from collections import OrderedDict
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np

_LANES = 128  # splash needs block_kv, and with segment ids the backward block_q, to be multiples of 128
_BLOCKS = (512, 256, 128)
_KERNEL_CACHE: OrderedDict[tuple, Any] = OrderedDict()
_KERNEL_CACHE_SIZE = 32

SUPPORTED_MASKS = (
    "None; a key-validity row broadcastable to (B, H, 1, Lk) (any batch/head dims, traced or not); "
    "or one (Lq, Lk) mask shared by the whole batch and all heads (shape (Lq, Lk), (1, Lq, Lk) or (1, 1, Lq, Lk))"
)


def _sa() -> Any:
    # The Pallas TPU import costs ~0.4 s; only pay it when the kernel is used.
    from jax.experimental.pallas.ops.tpu import splash_attention

    return splash_attention


def _padded(n: int) -> int:
    return -(-n // _LANES) * _LANES


def _block(n_padded: int) -> int:
    return next(b for b in _BLOCKS if n_padded % b == 0)


def _make_kernel(mask: Any, lq_p: int, lk_p: int, interpret: bool) -> Any:
    sa = _sa()
    bq, bk = _block(lq_p), _block(lk_p)
    sizes = sa.BlockSizes(
        block_q=bq, block_kv=bk, block_kv_compute=bk,
        block_q_dkv=bq, block_kv_dkv=bk, block_kv_dkv_compute=bk,  # backward blocks: splash trains too
        block_q_dq=bq, block_kv_dq=bk,
    )
    return sa.make_splash_mha(mask, block_sizes=sizes, head_shards=1, q_seq_shards=1, interpret=interpret)


def _cached_kernel(key: tuple, build: Any) -> Any:
    if key in _KERNEL_CACHE:
        _KERNEL_CACHE.move_to_end(key)
        return _KERNEL_CACHE[key]
    # Concrete mask info even when called while tracing (jnp.array of numpy data is a tracer under jit), so
    # the cached kernel never holds a tracer of a finished trace.
    with jax.ensure_compile_time_eval():
        kernel = build()
    _KERNEL_CACHE[key] = kernel
    if len(_KERNEL_CACHE) > _KERNEL_CACHE_SIZE:
        _KERNEL_CACHE.popitem(last=False)
    return kernel


def _full_kernel(lq_p: int, lk_p: int, interpret: bool) -> Any:
    sa = _sa()
    return _cached_kernel(("full", lq_p, lk_p, interpret),
                          lambda: _make_kernel(sa.MultiHeadMask([sa.FullMask((lq_p, lk_p))]), lq_p, lk_p, interpret))


def _static_kernel(mask: np.ndarray, interpret: bool) -> Any:
    sa = _sa()
    digest = hashlib.sha1(np.packbits(mask).tobytes()).hexdigest()
    lq_p, lk_p = mask.shape
    return _cached_kernel(("numpy", digest, lq_p, lk_p, interpret),
                          lambda: _make_kernel(sa.MultiHeadMask([sa.NumpyMask(mask)]), lq_p, lk_p, interpret))


def _dynamic_kernel(mask: jax.Array, lq_p: int, lk_p: int, interpret: bool) -> Any:
    kernel = _make_kernel(mask[None], lq_p, lk_p, interpret)
    # make_splash_mha maps jnp.array over its MaskInfo, which turns the Python flag is_dynamic_mask into a
    # tracer under jit, and SplashAttentionKernel.__call__ branches on it: restore the bool.
    for name in ("fwd_mask_info", "dq_mask_info", "dkv_mask_info"):
        info = getattr(kernel, name)
        if info is not None:
            setattr(kernel, name, info._replace(is_dynamic_mask=True))
    return kernel


def _pad_full_mask(mask: Any, lq: int, lk: int, lq_p: int, lk_p: int, xp: Any) -> tuple[Any, Any]:
    """(Lq, Lk) mask -> (Lq_p, Lk_p) splash mask and the (Lq,) rows that had a key to attend to.

    Splash divides by zero on a row whose blocks are all skipped, and a row with no key inside a computed
    block gets the mean of v over that block only. The dense reference gives such a row the mean of v
    over all keys; we get the same by letting the row see every real key with q zeroed (uniform softmax).
    Padded query rows need nothing: padding is < 128 rows, so each q block holds a real row with a key
    and is computed, which leaves padded rows finite (outputs dropped, zero gradients).
    """
    has_key = mask.any(axis=1)
    mask = xp.where(has_key[:, None], mask, True)
    return xp.pad(mask, ((0, lq_p - lq), (0, lk_p - lk))), has_key


def splash_attention(
    q: jax.Array,
    k: jax.Array,
    v: jax.Array,
    *,
    mask: jax.Array | np.ndarray | None = None,
    bias: jax.Array | None = None,
    scale: float | None = None,
    interpret: bool | None = None,
) -> jax.Array:
    """q (B, Lq, H, D), k/v (B, Lk, H, D) -> (B, Lq, H, D); mask: bool, True = attend (see SUPPORTED_MASKS).

    ``interpret`` None: Pallas interpret mode on every backend but TPU.
    """
    if bias is not None:
        raise ValueError("splash attention does not take an additive bias; use implementation='xla' or 'cudnn'")
    if k.shape[2] != q.shape[2]:
        raise ValueError(f"splash attention here is multi-head with as many kv heads as q heads: {q.shape} {k.shape}")
    b, lq, h, d = q.shape
    lk = k.shape[1]
    lq_p, lk_p = _padded(lq), _padded(lk)
    interpret = jax.default_backend() != "tpu" if interpret is None else interpret
    scale = d**-0.5 if scale is None else scale
    q = (q.astype(jnp.float32) * scale).astype(q.dtype)  # splash does not scale the logits

    q_keep = None  # (B, H, Lq) or (Lq,) bool: rows whose q stays (False: row had no key, see _pad_full_mask)
    kv_ids = None  # (B, H, Lk_p) int32 key segment ids, queries are all segment 1
    if mask is None:
        kernel = _full_kernel(lq_p, lk_p, interpret)
        if lk_p != lk:
            kv_ids = jnp.broadcast_to((jnp.arange(lk_p) < lk).astype(jnp.int32), (b, h, lk_p))
    else:
        if mask.ndim > 4:
            raise ValueError(f"mask must have at most 4 dims (B, H, Lq, Lk), got shape {mask.shape}")
        shape4 = (1,) * (4 - mask.ndim) + tuple(mask.shape)
        if any(m not in (1, n) for m, n in zip(shape4, (b, h, lq, lk), strict=True)):
            raise ValueError(f"mask {tuple(mask.shape)} does not broadcast to (B, H, Lq, Lk) = {(b, h, lq, lk)}")
        concrete = not isinstance(mask, jax.core.Tracer)
        xp = np if concrete else jnp
        mask4 = xp.asarray(mask).astype(bool).reshape(shape4)
        if shape4[2] == 1:  # key-validity row -> segment ids
            valid = jnp.broadcast_to(jnp.asarray(mask4[:, :, 0, :]), (b, h, lk))
            any_valid = valid.any(axis=-1)
            valid = jnp.where(any_valid[..., None], valid, True)
            q_keep = jnp.broadcast_to(any_valid[..., None], (b, h, lq))
            kv_ids = jnp.pad(valid, ((0, 0), (0, 0), (0, lk_p - lk))).astype(jnp.int32)
            kernel = _full_kernel(lq_p, lk_p, interpret)
        elif shape4[0] == 1 and shape4[1] == 1:
            full, q_keep = _pad_full_mask(xp.broadcast_to(mask4[0, 0], (lq, lk)), lq, lk, lq_p, lk_p, xp)
            if concrete:
                kernel = _static_kernel(np.ascontiguousarray(full), interpret)
            else:
                kernel = _dynamic_kernel(full, lq_p, lk_p, interpret)
        else:
            raise ValueError(
                f"splash attention cannot take a mask of shape {tuple(mask.shape)} that varies per batch element "
                f"or head over (Lq, Lk); supported: {SUPPORTED_MASKS}"
            )
    if q_keep is not None:
        q = jnp.where(jnp.moveaxis(jnp.broadcast_to(q_keep, (b, h, lq)), 1, 2)[..., None], q, 0)

    def heads_first(x: jax.Array, n_p: int) -> jax.Array:  # (B, L, H, D) -> (B*H, 1, L_p, D)
        x = jnp.pad(x, ((0, 0), (0, n_p - x.shape[1]), (0, 0), (0, 0)))
        return jnp.swapaxes(x, 1, 2).reshape(b * h, 1, n_p, x.shape[-1])

    qs, ks, vs = heads_first(q, lq_p), heads_first(k, lk_p), heads_first(v, lk_p)
    if kv_ids is None:
        out = jax.vmap(lambda q1, k1, v1: kernel(q1, k1, v1))(qs, ks, vs)
    else:
        q_ids = jnp.ones(lq_p, jnp.int32)
        segs = _sa().SegmentIds
        out = jax.vmap(lambda q1, k1, v1, ids: kernel(q1, k1, v1, segment_ids=segs(q_ids, ids)))(
            qs, ks, vs, kv_ids.reshape(b * h, lk_p))
    out = out.reshape(b, h, lq_p, v.shape[-1])[:, :, :lq]
    return jnp.swapaxes(out, 1, 2).astype(q.dtype)
