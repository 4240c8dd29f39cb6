"""CLIP image encoder: the open-clip XLM-RoBERTa ViT-H/14 visual tower used by Wan2.1 I2V / DreamZero.

The reference (``modules/wan_video_image_encoder.py``, ``WanImageEncoder.encode_image``) takes frames in
[-1, 1], resizes them to 224x224 with PyTorch bicubic interpolation (a = -0.75, align_corners=False,
no antialiasing), maps them to [0, 1], applies the CLIP mean/std, and runs the visual transformer with
``use_31_block=True``: the output is that of the second-to-last block (257 x 1280 tokens), taken before
``post_norm`` and the projection head. The DiT's ``img_emb`` consumes it.

Tower: patch conv (no bias, because ``pre_norm`` is on), class token, learned positional embedding,
``pre_norm`` LayerNorm, then pre-norm blocks (fused qkv attention, GELU MLP), all LayerNorms eps 1e-5.
Only the first ``num_layers - 1`` blocks are built: the reference never runs the last one, so it would
be dead weight (~20M parameters at ViT-H size). The blocks are stacked on a leading layer axis and run
with ``nnx.scan``, so jit traces and compiles one block instead of 31.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx

from dreamzero_policy.nn.attention import attention
from dreamzero_policy.nn.norms import LayerNorm

CLIP_MEAN: tuple[float, float, float] = (0.48145466, 0.4578275, 0.40821073)
CLIP_STD: tuple[float, float, float] = (0.26862954, 0.26130258, 0.27577711)


@dataclass(frozen=True)
class ImageEncoderConfig:
    """Visual tower sizes; defaults are open-clip XLM-RoBERTa ViT-H/14 at 224 px."""

    image_size: int = 224
    patch_size: int = 14
    dim: int = 1280
    mlp_ratio: float = 4.0
    num_heads: int = 16
    # Blocks in the checkpoint architecture; the encoder runs (and builds) the first num_layers - 1.
    num_layers: int = 32
    norm_eps: float = 1e-5
    in_channels: int = 3
    mean: tuple[float, float, float] = CLIP_MEAN
    std: tuple[float, float, float] = CLIP_STD
    dtype: Any = jnp.float32  # activation / matmul dtype
    param_dtype: Any = jnp.float32
    attention_impl: str = "xla"

    def __post_init__(self) -> None:
        if self.image_size % self.patch_size:
            raise ValueError(f"image_size {self.image_size} is not divisible by patch_size {self.patch_size}")
        if self.dim % self.num_heads:
            raise ValueError(f"dim {self.dim} is not divisible by num_heads {self.num_heads}")
        if self.num_layers < 2:
            raise ValueError(
                f"num_layers must be >= 2 (the output is the second-to-last block), got {self.num_layers}"
            )
        if len(self.mean) != self.in_channels or len(self.std) != self.in_channels:
            raise ValueError("mean and std need one entry per input channel")

    @property
    def num_patches(self) -> int:
        return (self.image_size // self.patch_size) ** 2

    @property
    def num_tokens(self) -> int:
        """Class token + patches (257 for ViT-H/14 at 224 px)."""
        return 1 + self.num_patches

    @property
    def mlp_dim(self) -> int:
        return int(self.dim * self.mlp_ratio)

    @property
    def num_run_layers(self) -> int:
        """Blocks actually applied (the reference's ``use_31_block``: all but the last)."""
        return self.num_layers - 1


# ---------------------------------------------------------------------------------------------------
# Preprocessing (PyTorch-equivalent bicubic resize + CLIP normalisation)


def _torch_cubic_weights(t: np.ndarray) -> list[np.ndarray]:
    """Weights of taps -1, 0, 1, 2 at fraction t, PyTorch's Keys kernel (a = -0.75; jax.image.resize
    uses a = -0.5 and antialiases), evaluated in float32 as PyTorch does."""
    a = np.float32(-0.75)
    one = np.float32(1.0)

    def near(x: np.ndarray) -> np.ndarray:  # |x| <= 1
        return ((a + 2) * x - (a + 3)) * x * x + one

    def far(x: np.ndarray) -> np.ndarray:  # 1 < |x| < 2
        return ((a * x - 5 * a) * x + 8 * a) * x - 4 * a

    return [far(t + one), near(t), near(one - t), far((one - t) + one)]


def bicubic_resize_matrix(in_size: int, out_size: int) -> np.ndarray:
    """(out_size, in_size) float32 matrix equal to torch ``F.interpolate(mode='bicubic',
    align_corners=False)`` along one axis: half-pixel source coordinates (not clamped at 0), 4 taps with
    edge indices clamped, no antialiasing.

    Source coordinates are rounded to float32 as in PyTorch's kernel (product and offset rounded once):
    at 640 -> 224 one float32 ulp of the coordinate is ~3e-5 of a tap weight, which is visible at the
    1e-4 parity level, so an exact float64 coordinate would not match the reference."""
    if in_size < 1 or out_size < 1:
        raise ValueError(f"resize sizes must be positive, got {in_size} -> {out_size}")
    dst = np.arange(out_size)
    scale = np.float64(np.float32(in_size) / np.float32(out_size))
    src = (scale * (dst + 0.5) - 0.5).astype(np.float32)
    base = np.minimum(np.floor(src).astype(np.int64), in_size - 1)
    frac = np.clip(src - base.astype(np.float32), np.float32(0), np.float32(1)).astype(np.float32)
    mat = np.zeros((out_size, in_size), np.float32)
    for offset, weight in zip((-1, 0, 1, 2), _torch_cubic_weights(frac), strict=True):
        np.add.at(mat, (dst, np.clip(base + offset, 0, in_size - 1)), weight)
    return mat


def _check_images(images: jax.Array, channels: int, what: str) -> None:
    if images.ndim != 4:
        raise ValueError(f"{what} must be (B, H, W, C) channels-last, got shape {tuple(images.shape)}")
    if images.shape[-1] != channels:
        raise ValueError(
            f"{what} must have {channels} channels in the last axis (channels-last RGB), "
            f"got shape {tuple(images.shape)}"
        )


def preprocess(images: jax.Array, cfg: ImageEncoderConfig) -> jax.Array:
    """Frames in [-1, 1] (the reference's video range), (B, H, W, 3) -> normalised CLIP pixels
    (B, S, S, 3), S = cfg.image_size, float32.

    Same order as the reference: bicubic resize of the [-1, 1] frames (any aspect ratio is stretched to
    a square, with bicubic overshoot left unclamped), then x * 0.5 + 0.5, then (x - mean) / std."""
    _check_images(images, cfg.in_channels, "images")
    _, h, w, _ = images.shape
    x = images.astype(jnp.float32)
    rows = jnp.asarray(bicubic_resize_matrix(h, cfg.image_size))
    cols = jnp.asarray(bicubic_resize_matrix(w, cfg.image_size))
    # Separable resize as two matmuls; HIGHEST keeps GPUs from dropping to TF32/bf16 passes.
    x = jnp.einsum("oh,bhwc->bowc", rows, x, precision=jax.lax.Precision.HIGHEST)
    x = jnp.einsum("pw,bowc->bopc", cols, x, precision=jax.lax.Precision.HIGHEST)
    x = x * 0.5 + 0.5
    mean = jnp.asarray(cfg.mean, jnp.float32)
    std = jnp.asarray(cfg.std, jnp.float32)
    return (x - mean) / std


# ---------------------------------------------------------------------------------------------------
# Transformer


class SelfAttention(nnx.Module):
    """Fused qkv projection (q | k | v along the output axis), softmax(q k^T / sqrt(d)) v, output proj."""

    def __init__(self, cfg: ImageEncoderConfig, *, rngs: nnx.Rngs):
        self.num_heads = cfg.num_heads
        self.attention_impl = cfg.attention_impl
        kw = dict(dtype=cfg.dtype, param_dtype=cfg.param_dtype, rngs=rngs)
        self.to_qkv = nnx.Linear(cfg.dim, 3 * cfg.dim, **kw)
        self.proj = nnx.Linear(cfg.dim, cfg.dim, **kw)

    def __call__(self, x: jax.Array) -> jax.Array:
        b, s, c = x.shape
        q, k, v = jnp.split(self.to_qkv(x), 3, axis=-1)
        split = lambda t: t.reshape(b, s, self.num_heads, c // self.num_heads)  # noqa: E731
        out = attention(split(q), split(k), split(v), implementation=self.attention_impl)
        return self.proj(out.reshape(b, s, c))


class AttentionBlock(nnx.Module):
    """Pre-norm ViT block: x + attn(norm1(x)), then x + mlp(norm2(x)); mlp = Linear, GELU(erf), Linear.

    ``mlp`` is an ``nnx.Dict`` keyed "0" and "2" so that parameter paths equal the reference's
    ``nn.Sequential`` indices (``mlp.0``, ``mlp.2``)."""

    def __init__(self, cfg: ImageEncoderConfig, *, rngs: nnx.Rngs):
        kw = dict(dtype=cfg.dtype, param_dtype=cfg.param_dtype, rngs=rngs)
        self.norm1 = LayerNorm(cfg.dim, eps=cfg.norm_eps, param_dtype=cfg.param_dtype)
        self.attn = SelfAttention(cfg, rngs=rngs)
        self.norm2 = LayerNorm(cfg.dim, eps=cfg.norm_eps, param_dtype=cfg.param_dtype)
        self.mlp = nnx.Dict(
            {"0": nnx.Linear(cfg.dim, cfg.mlp_dim, **kw), "2": nnx.Linear(cfg.mlp_dim, cfg.dim, **kw)}
        )

    def __call__(self, x: jax.Array) -> jax.Array:
        x = x + self.attn(self.norm1(x))
        h = jax.nn.gelu(self.mlp["0"](self.norm2(x)), approximate=False)
        return x + self.mlp["2"](h)


class CLIPVisionEncoder(nnx.Module):
    """ViT visual tower returning the second-to-last block's tokens, (B, 1 + (S/patch)^2, dim).

    Parameter paths mirror the reference's ``visual.*`` names: ``patch_embedding``, ``cls_embedding``,
    ``pos_embedding``, ``pre_norm``, ``transformer/{norm1, attn/{to_qkv, proj}, norm2, mlp/{0, 2}}``
    (stacked, leading axis = block index)."""

    def __init__(self, cfg: ImageEncoderConfig, *, rngs: nnx.Rngs):
        self.config = cfg
        p = cfg.patch_size
        self.patch_embedding = nnx.Conv(
            cfg.in_channels,
            cfg.dim,
            kernel_size=(p, p),
            strides=(p, p),
            padding="VALID",
            use_bias=False,
            dtype=cfg.dtype,
            param_dtype=cfg.param_dtype,
            rngs=rngs,
        )
        gain = cfg.dim**-0.5
        self.cls_embedding = nnx.Param(
            gain * jax.random.normal(rngs.params(), (1, 1, cfg.dim), cfg.param_dtype)
        )
        self.pos_embedding = nnx.Param(
            gain * jax.random.normal(rngs.params(), (1, cfg.num_tokens, cfg.dim), cfg.param_dtype)
        )
        self.pre_norm = LayerNorm(cfg.dim, eps=cfg.norm_eps, param_dtype=cfg.param_dtype)

        @nnx.split_rngs(splits=cfg.num_run_layers)
        @nnx.vmap(in_axes=(0,), out_axes=0)
        def make_blocks(block_rngs: nnx.Rngs) -> AttentionBlock:
            return AttentionBlock(cfg, rngs=block_rngs)

        self.transformer = make_blocks(rngs)

    def __call__(self, pixels: jax.Array) -> jax.Array:
        """pixels: CLIP-normalised (B, S, S, 3) with S = image_size (see :func:`preprocess`)."""
        cfg = self.config
        _check_images(pixels, cfg.in_channels, "pixels")
        if pixels.shape[1:3] != (cfg.image_size, cfg.image_size):
            raise ValueError(
                f"pixels must be {cfg.image_size}x{cfg.image_size} (run preprocess first), got shape "
                f"{tuple(pixels.shape)}"
            )
        x = self.patch_embedding(pixels.astype(cfg.dtype))
        b = x.shape[0]
        x = x.reshape(b, -1, cfg.dim)  # row-major over the patch grid, as torch's flatten(2)
        cls = jnp.broadcast_to(self.cls_embedding[...].astype(x.dtype), (b, 1, cfg.dim))
        x = jnp.concatenate([cls, x], axis=1) + self.pos_embedding[...].astype(x.dtype)
        x = self.pre_norm(x)

        @nnx.scan(in_axes=(0, nnx.Carry), out_axes=nnx.Carry)
        def run_blocks(block: AttentionBlock, h: jax.Array) -> jax.Array:
            return block(h)

        return run_blocks(self.transformer, x)

    def encode_image(self, images: jax.Array) -> jax.Array:
        """Frames in [-1, 1], (B, H, W, 3), any size -> CLIP context tokens (the reference's
        ``WanImageEncoder.encode_image``)."""
        return self(preprocess(images, self.config))
