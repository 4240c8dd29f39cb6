"""Dense attention one block of queries at a time: the ``"xla"`` math with Tq_block x Tk score temporaries.

The 14B model's teacher-forcing sequence is ~16k tokens (DROID: 9 latent frames x 880 tokens, twice, plus
the register); its dense score matrix is 40 heads x 16k x 16k x 4 bytes = 40 GB per layer, more than a
device holds. Splitting the queries into blocks (each block rematerialised, so the backward pass keeps only
its inputs) bounds the temporaries on any backend, CPU included; flash kernels (cuDNN, splash) do better
where they exist.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np

from dreamzero_policy.nn.attention import dense_attention, register_kernel

QUERY_BLOCK = 1024


def _rows(x: jax.Array | np.ndarray | None, lq: int, nb: int, block: int, fill: bool | float):
    """A mask/bias broadcastable to (B, H, Tq, Tk) -> per query block (nb, B|1, H|1, block, Tk), or
    itself when it does not vary along the queries (the same for every block)."""
    if x is None:
        return None, None
    x = x.reshape((1,) * (4 - x.ndim) + tuple(x.shape))
    if x.shape[2] == 1:
        return None, x
    pad = nb * block - lq
    xp = jnp.pad(jnp.asarray(x), ((0, 0), (0, 0), (0, pad), (0, 0)), constant_values=fill)
    return xp.reshape(x.shape[0], x.shape[1], nb, block, x.shape[3]).transpose(2, 0, 1, 3, 4), None


@register_kernel("xla_chunked")
def chunked_attention(
    q: jax.Array,
    k: jax.Array,
    v: jax.Array,
    *,
    mask: jax.Array | None = None,
    bias: jax.Array | None = None,
    scale: float | None = None,
    block: int = QUERY_BLOCK,
) -> jax.Array:
    """Same arguments and result as ``dense_attention``; queries in blocks of ``block``."""
    b, lq, h, d = q.shape
    if lq <= block:
        return dense_attention(q, k, v, mask=mask, bias=bias, scale=scale)
    nb = -(-lq // block)
    qb = jnp.pad(q, ((0, 0), (0, nb * block - lq), (0, 0), (0, 0)))
    qb = qb.reshape(b, nb, block, h, d).transpose(1, 0, 2, 3, 4)
    mask_rows, mask_all = _rows(mask, lq, nb, block, True)  # padded query rows attend to everything
    bias_rows, bias_all = _rows(bias, lq, nb, block, 0.0)

    @jax.checkpoint
    def one(xs):
        qi, mi, bi = xs
        mi = mask_all if mi is None else mi
        bi = bias_all if bi is None else bi
        return dense_attention(qi, k, v, mask=mi, bias=bi, scale=scale)

    out = jax.lax.map(one, (qb, mask_rows, bias_rows))  # (nb, B, block, H, D)
    return out.transpose(1, 0, 2, 3, 4).reshape(b, nb * block, h, d)[:, :lq]
