"""umT5-xxl text encoder (the Wan / DreamZero prompt encoder) in Flax NNX.

Mirrors ``groot/vla/model/dreamzero/modules/wan_video_text_encoder.py`` (``WanTextEncoder`` with
``shared_pos=False``): token embedding, N pre-norm blocks of [T5 RMS norm, self-attention with a
per-layer relative position bias, T5 RMS norm, gated tanh-GELU FFN], a final RMS norm. Attention has
no 1/sqrt(head_dim) scaling (T5 folds it into the weight init) and padding keys are masked.

Blocks are created stacked (leading layer axis) and run with ``nnx.scan``: one compiled block body
for all 24 layers. The per-layer relative bias stays simple under scan because each block owns its
(num_buckets, num_heads) table, and the (L, L) bucket index map depends only on the static sequence
length, so it is computed once in numpy at trace time and closed over by the scan body.

``UMT5Encoder.__call__`` returns the raw final hidden states (like the reference module's
``forward``); ``UMT5Encoder.encode_prompts`` additionally zeroes every position at or past a
prompt's real length, as the reference action head's ``encode_prompt`` does before the DiT.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx

from dreamzero_policy.nn.attention import attention
from dreamzero_policy.nn.norms import RMSNorm


@dataclass(frozen=True)
class TextEncoderConfig:
    """Sizes of the umT5 encoder; defaults are umT5-xxl as used by Wan2.1/2.2 and DreamZero."""

    vocab_size: int = 256384
    dim: int = 4096
    dim_attn: int = 4096  # num_heads * head_dim
    dim_ffn: int = 10240
    num_heads: int = 64
    num_layers: int = 24
    num_buckets: int = 32
    max_distance: int = 128
    eps: float = 1e-6
    text_len: int = 512  # prompts are padded / truncated to this many tokens
    dtype: Any = jnp.float32  # compute dtype
    param_dtype: Any = jnp.float32
    attention_impl: str = "xla"

    def __post_init__(self) -> None:
        for name in ("vocab_size", "dim", "dim_attn", "dim_ffn", "num_heads", "num_layers", "text_len"):
            if getattr(self, name) <= 0:
                raise ValueError(f"TextEncoderConfig.{name} must be positive, got {getattr(self, name)}")
        if self.dim_attn % self.num_heads:
            raise ValueError(f"dim_attn={self.dim_attn} is not divisible by num_heads={self.num_heads}")
        # Bidirectional bucketing gives half the buckets to each direction and half of those to exact
        # offsets; below 4 buckets there is no log-spaced range left.
        if self.num_buckets < 4 or self.num_buckets % 2:
            raise ValueError(f"num_buckets must be even and >= 4, got {self.num_buckets}")
        if self.max_distance <= self.num_buckets // 4:
            raise ValueError(f"max_distance={self.max_distance} must exceed num_buckets // 4")

    @property
    def head_dim(self) -> int:
        return self.dim_attn // self.num_heads


def relative_position_buckets(lq: int, lk: int, num_buckets: int, max_distance: int) -> np.ndarray:
    """Bidirectional T5 bucket index for every (query, key) pair, int32 (lq, lk).

    Offsets key - query; positive offsets use the upper half of the buckets. Within a half, offsets
    below half of it are exact, larger ones are log-spaced up to ``max_distance`` and clipped. The
    log is taken in float32 with the reference's operation order so boundary offsets land in the
    same bucket as in PyTorch (verified in tests against transformers for the umT5-xxl settings).
    """
    rel = np.arange(lk, dtype=np.int64)[None, :] - np.arange(lq, dtype=np.int64)[:, None]
    half = num_buckets // 2
    buckets = (rel > 0).astype(np.int64) * half
    dist = np.abs(rel)
    max_exact = half // 2
    # max(dist, 1) only avoids log(0); those entries take the exact branch below.
    scaled = np.maximum(dist, 1).astype(np.float32) / np.float32(max_exact)
    log_ratio = np.log(scaled) / np.float32(math.log(max_distance / max_exact))
    large = max_exact + (log_ratio * np.float32(half - max_exact)).astype(np.int64)
    large = np.minimum(large, half - 1)
    buckets = buckets + np.where(dist < max_exact, dist, large)
    return buckets.astype(np.int32)


def _normal(std: float) -> nnx.Initializer:
    return nnx.initializers.normal(stddev=std)


class T5RelativeEmbedding(nnx.Module):
    """Learned (num_buckets, num_heads) table -> additive attention bias (1, heads, Lq, Lk)."""

    def __init__(self, cfg: TextEncoderConfig, *, rngs: nnx.Rngs):
        std = (2 * cfg.num_buckets * cfg.num_heads) ** -0.5
        self.embedding = nnx.Param(
            _normal(std)(rngs.params(), (cfg.num_buckets, cfg.num_heads), cfg.param_dtype)
        )

    def __call__(self, buckets: jax.Array) -> jax.Array:
        bias = jnp.take(self.embedding[...], buckets, axis=0)  # (Lq, Lk, H)
        return jnp.transpose(bias, (2, 0, 1))[None].astype(jnp.float32)


class T5Attention(nnx.Module):
    def __init__(self, cfg: TextEncoderConfig, *, rngs: nnx.Rngs):
        self.num_heads = cfg.num_heads
        self.head_dim = cfg.head_dim
        self.impl = cfg.attention_impl

        def proj(din: int, dout: int, std: float) -> nnx.Linear:
            return nnx.Linear(
                din,
                dout,
                use_bias=False,
                kernel_init=_normal(std),
                dtype=cfg.dtype,
                param_dtype=cfg.param_dtype,
                rngs=rngs,
            )

        # Initial scales follow the reference init (q absorbs T5's missing 1/sqrt(d) scaling).
        self.q = proj(cfg.dim, cfg.dim_attn, (cfg.dim * cfg.dim_attn) ** -0.5)
        self.k = proj(cfg.dim, cfg.dim_attn, cfg.dim**-0.5)
        self.v = proj(cfg.dim, cfg.dim_attn, cfg.dim**-0.5)
        self.o = proj(cfg.dim_attn, cfg.dim, (cfg.num_heads * cfg.dim_attn) ** -0.5)

    def __call__(self, x: jax.Array, key_mask: jax.Array, pos_bias: jax.Array) -> jax.Array:
        b, n, _ = x.shape
        heads = (b, n, self.num_heads, self.head_dim)
        q = self.q(x).reshape(heads)
        k = self.k(x).reshape(heads)
        v = self.v(x).reshape(heads)
        out = attention(q, k, v, mask=key_mask, bias=pos_bias, scale=1.0, implementation=self.impl)
        return self.o(out.reshape(b, n, -1))


class T5FeedForward(nnx.Module):
    """fc2(fc1(x) * gelu_tanh(gate(x)))."""

    def __init__(self, cfg: TextEncoderConfig, *, rngs: nnx.Rngs):
        def proj(din: int, dout: int) -> nnx.Linear:
            return nnx.Linear(
                din,
                dout,
                use_bias=False,
                kernel_init=_normal(din**-0.5),
                dtype=cfg.dtype,
                param_dtype=cfg.param_dtype,
                rngs=rngs,
            )

        self.gate = proj(cfg.dim, cfg.dim_ffn)
        self.fc1 = proj(cfg.dim, cfg.dim_ffn)
        self.fc2 = proj(cfg.dim_ffn, cfg.dim)

    def __call__(self, x: jax.Array) -> jax.Array:
        return self.fc2(self.fc1(x) * jax.nn.gelu(self.gate(x), approximate=True))


class T5SelfAttention(nnx.Module):
    """One encoder block (the reference's ``T5SelfAttention`` with its own relative embedding)."""

    def __init__(self, cfg: TextEncoderConfig, *, rngs: nnx.Rngs):
        self.norm1 = RMSNorm(cfg.dim, eps=cfg.eps, param_dtype=cfg.param_dtype)
        self.attn = T5Attention(cfg, rngs=rngs)
        self.norm2 = RMSNorm(cfg.dim, eps=cfg.eps, param_dtype=cfg.param_dtype)
        self.ffn = T5FeedForward(cfg, rngs=rngs)
        self.pos_embedding = T5RelativeEmbedding(cfg, rngs=rngs)

    def __call__(self, x: jax.Array, key_mask: jax.Array, buckets: jax.Array) -> jax.Array:
        x = x + self.attn(self.norm1(x), key_mask, self.pos_embedding(buckets))
        return x + self.ffn(self.norm2(x))


class UMT5Encoder(nnx.Module):
    """Token ids (B, L) + attention mask (B, L) -> final hidden states (B, L, dim)."""

    def __init__(self, cfg: TextEncoderConfig, *, rngs: nnx.Rngs):
        self.cfg = cfg
        self.token_embedding = nnx.Embed(
            cfg.vocab_size,
            cfg.dim,
            dtype=cfg.dtype,
            param_dtype=cfg.param_dtype,
            embedding_init=_normal(1.0),  # torch nn.Embedding default
            rngs=rngs,
        )

        @nnx.split_rngs(splits=cfg.num_layers)
        @nnx.vmap(in_axes=(0,), out_axes=0)
        def make_blocks(rngs: nnx.Rngs) -> T5SelfAttention:
            return T5SelfAttention(cfg, rngs=rngs)

        self.blocks = make_blocks(rngs)
        self.norm = RMSNorm(cfg.dim, eps=cfg.eps, param_dtype=cfg.param_dtype)

    def __call__(self, ids: jax.Array, mask: jax.Array) -> jax.Array:
        if ids.ndim != 2:
            raise ValueError(f"ids must be (batch, length), got shape {ids.shape}")
        if mask.shape != ids.shape:
            raise ValueError(f"mask shape {mask.shape} must equal ids shape {ids.shape}")
        length = ids.shape[1]
        cfg = self.cfg
        buckets = jnp.asarray(relative_position_buckets(length, length, cfg.num_buckets, cfg.max_distance))
        key_mask = (mask > 0)[:, None, None, :]  # padding tokens are never attended to as keys

        @nnx.scan(in_axes=(nnx.Carry, 0), out_axes=nnx.Carry)
        def run_blocks(x: jax.Array, block: T5SelfAttention) -> jax.Array:
            return block(x, key_mask, buckets)

        x = run_blocks(self.token_embedding(ids), self.blocks)
        return self.norm(x)

    def encode_prompts(self, ids: jax.Array, mask: jax.Array) -> jax.Array:
        """Hidden states with every position >= the prompt's real length (sum of its mask) zeroed.

        This is what the DiT cross-attends to: it applies no key mask of its own, so the padding
        positions must be exact zero vectors.
        """
        hidden = self(ids, mask)
        lengths = jnp.sum(mask > 0, axis=1)
        keep = jnp.arange(ids.shape[1])[None, :] < lengths[:, None]
        return jnp.where(keep[..., None], hidden, jnp.zeros((), hidden.dtype))
