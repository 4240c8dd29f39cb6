"""One causal Wan attention block: AdaLN self-attention (qk RMSNorm, RoPE), I2V cross-attention, FFN.

Parameter names follow the reference (``norm3`` is the affine norm before cross-attention, ``norm2``
the non-affine one before the FFN), so checkpoint conversion is a rename.
"""

from __future__ import annotations

from typing import NamedTuple

import jax
import jax.numpy as jnp
from flax import nnx

from dreamzero_policy.nn.attention import attention
from dreamzero_policy.nn.linear import Dense
from dreamzero_policy.nn.norms import LayerNorm, RMSNorm
from dreamzero_policy.nn.rope import apply_rope


class CrossKV(NamedTuple):
    """Cross-attention keys/values of one layer (B, Lc, H, D); computed once per chunk in inference."""

    k: jax.Array
    v: jax.Array
    k_img: jax.Array | None
    v_img: jax.Array | None


def split_heads(x: jax.Array, num_heads: int) -> jax.Array:
    """(B, L, H*D) -> (B, L, H, D)."""
    return x.reshape(*x.shape[:2], num_heads, -1)


class SelfAttention(nnx.Module):
    def __init__(self, dim: int, num_heads: int, eps: float, *, rngs: nnx.Rngs, dtype=jnp.float32,
                 param_dtype=jnp.float32):
        self.num_heads = num_heads
        lin = lambda: Dense(dim, dim, dtype=dtype, param_dtype=param_dtype, rngs=rngs)
        self.q, self.k, self.v, self.o = lin(), lin(), lin(), lin()
        self.norm_q = RMSNorm(dim, eps=eps)
        self.norm_k = RMSNorm(dim, eps=eps)

    def qkv(self, x: jax.Array, cos: jax.Array, sin: jax.Array) -> tuple[jax.Array, jax.Array, jax.Array]:
        q = apply_rope(split_heads(self.norm_q(self.q(x)), self.num_heads), cos, sin)
        k = apply_rope(split_heads(self.norm_k(self.k(x)), self.num_heads), cos, sin)
        return q, k, split_heads(self.v(x), self.num_heads)


class CrossAttention(nnx.Module):
    """Text cross-attention, plus a separate image branch (k_img/v_img) whose output is summed (I2V)."""

    def __init__(self, dim: int, num_heads: int, eps: float, image: bool, *, rngs: nnx.Rngs, dtype=jnp.float32,
                 param_dtype=jnp.float32):
        self.num_heads = num_heads
        self.image = image
        lin = lambda: Dense(dim, dim, dtype=dtype, param_dtype=param_dtype, rngs=rngs)
        self.q, self.k, self.v, self.o = lin(), lin(), lin(), lin()
        self.norm_q = RMSNorm(dim, eps=eps)
        self.norm_k = RMSNorm(dim, eps=eps)
        if image:
            self.k_img, self.v_img = lin(), lin()
            self.norm_k_img = RMSNorm(dim, eps=eps)

    def kv(self, text: jax.Array, img: jax.Array | None) -> CrossKV:
        k = split_heads(self.norm_k(self.k(text)), self.num_heads)
        v = split_heads(self.v(text), self.num_heads)
        if not self.image:
            return CrossKV(k, v, None, None)
        if img is None:
            raise ValueError("this model has image cross-attention: CLIP image tokens are required")
        n = self.num_heads
        return CrossKV(k, v, split_heads(self.norm_k_img(self.k_img(img)), n), split_heads(self.v_img(img), n))

    def __call__(self, x: jax.Array, kv: CrossKV, implementation: str) -> jax.Array:
        # No key mask on the text: the reference attends zeroed padding positions too.
        q = split_heads(self.norm_q(self.q(x)), self.num_heads)
        out = attention(q, kv.k, kv.v, implementation=implementation)
        if self.image:
            out = out + attention(q, kv.k_img, kv.v_img, implementation=implementation)
        return self.o(out.reshape(*x.shape[:2], -1))


class AttentionBlock(nnx.Module):
    """Matmul weights are stored in ``param_dtype`` and multiply in ``dtype`` (fp32 accumulation); norms,
    modulation, RoPE and the residual/gate arithmetic stay float32 as in the reference."""

    def __init__(self, dim: int, ffn_dim: int, num_heads: int, eps: float, image: bool, *, rngs: nnx.Rngs,
                 dtype=jnp.float32, param_dtype=jnp.float32):
        kw = dict(rngs=rngs, dtype=dtype, param_dtype=param_dtype)
        self.dtype = jnp.dtype(dtype)
        self.norm1 = LayerNorm(dim, eps=eps, affine=False)
        self.self_attn = SelfAttention(dim, num_heads, eps, **kw)
        self.norm3 = LayerNorm(dim, eps=eps, affine=True)
        self.cross_attn = CrossAttention(dim, num_heads, eps, image, **kw)
        self.norm2 = LayerNorm(dim, eps=eps, affine=False)
        self.ffn_0 = Dense(dim, ffn_dim, **kw)
        self.ffn_2 = Dense(ffn_dim, dim, **kw)
        self.modulation = nnx.Param(jax.random.normal(rngs.params(), (1, 6, dim)) / dim**0.5)

    def __call__(
        self,
        x: jax.Array,
        e0: jax.Array,
        rope: tuple[jax.Array, jax.Array],
        cross_kv: CrossKV,
        *,
        mask: jax.Array | None = None,
        prefix_kv: tuple[jax.Array, jax.Array] | None = None,
        implementation: str = "xla",
    ) -> tuple[jax.Array, tuple[jax.Array, jax.Array]]:
        """x (B, L, dim) float32 residual stream; e0 (B, L, 6, dim) per-token modulation; rope cos/sin (L, head_dim/2).

        ``prefix_kv`` = cached (RoPE'd) keys/values (B, Lc, H, D) placed before this call's own keys;
        ``mask`` (Lq, Lc + L) then covers both. Returns the new x and this call's (RoPE'd k, v).
        """
        e = (self.modulation[...][:, None] + e0.astype(jnp.float32))  # (B, L, 6, dim)
        shift1, scale1, gate1, shift2, scale2, gate2 = (e[:, :, i] for i in range(6))
        dt = self.dtype
        x = x.astype(jnp.float32)  # the residual stream stays float32 (Wan adds under fp32 autocast)

        h = (self.norm1(x) * (1 + scale1) + shift1).astype(dt)
        q, k, v = self.self_attn.qkv(h, *rope)
        k_all, v_all = k, v
        if prefix_kv is not None:
            k_all = jnp.concatenate([prefix_kv[0].astype(k.dtype), k], axis=1)
            v_all = jnp.concatenate([prefix_kv[1].astype(v.dtype), v], axis=1)
        y = attention(q, k_all, v_all, mask=mask, implementation=implementation)
        y = self.self_attn.o(y.reshape(*x.shape[:2], -1))
        x = x + y.astype(jnp.float32) * gate1

        x = x + self.cross_attn(self.norm3(x).astype(dt), cross_kv, implementation).astype(jnp.float32)

        h = (self.norm2(x) * (1 + scale2) + shift2).astype(dt)
        y = self.ffn_2(jax.nn.gelu(self.ffn_0(h), approximate=True))
        x = x + y.astype(jnp.float32) * gate2
        return x, (k, v)
