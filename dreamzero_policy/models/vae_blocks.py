"""Building blocks of the Wan causal 3D VAE (channels-last video, (B, T, H, W, C)).

Streaming: every temporal convolution sees, besides the frames of the current chunk, the last frames
of its input from the previous chunk. Those frames travel in a flat tuple ("the cache"); modules read
their entries from a :class:`CacheStream` in call order and push the new ones in the same order, so a
cache made by one chunk is the exact input of the next. The first chunk of a clip (``stream.start``)
has no previous frames: convolutions pad with zeros, the temporal down/up samplers are skipped, as in
the reference.
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import jax
import jax.numpy as jnp
from flax import nnx

from dreamzero_policy.nn.attention import attention

# Frames of history a temporal kernel of size 3 needs (the reference's CACHE_T).
CACHE_T = 2

VAECache = tuple[jax.Array, ...]


class CacheStream:
    """Reads the previous chunk's cache entries in call order and collects the new ones."""

    def __init__(self, previous: VAECache | None):
        self.start = previous is None
        self._previous = () if previous is None else tuple(previous)
        self._read = 0
        self._new: list[jax.Array] = []

    def take(self) -> jax.Array:
        if self.start:
            raise RuntimeError("a starting chunk has no cached frames to read")
        if self._read >= len(self._previous):
            raise ValueError(f"cache has {len(self._previous)} entries; this model reads more (wrong cache?)")
        entry = self._previous[self._read]
        self._read += 1
        return entry

    def put(self, entry: jax.Array) -> None:
        self._new.append(entry)

    def result(self) -> VAECache:
        if not self.start and self._read != len(self._previous):
            raise ValueError(
                f"cache has {len(self._previous)} entries, the model read {self._read} (wrong cache?)"
            )
        return tuple(self._new)


def _triple(v: int | Sequence[int]) -> tuple[int, int, int]:
    return (v, v, v) if isinstance(v, int) else tuple(v)  # type: ignore[return-value]


def _uniform_init(key: jax.Array, shape: Sequence[int], dtype=jnp.float32) -> jax.Array:
    """PyTorch's default conv/linear init, U(+-1/sqrt(fan_in)), fan_in = prod(shape[:-1]).

    Drawn flat and reshaped: on CPU, partitionable threefry over an N-d shape takes seconds to compile
    per shape, a 1-D draw a fraction of that.
    """
    shape = tuple(shape)
    size = math.prod(shape)
    bound = math.prod(shape[:-1]) ** -0.5 if len(shape) > 1 else 1.0
    return jax.random.uniform(key, (size,), dtype, -bound, bound).reshape(shape)


def _uniform(rngs: nnx.Rngs, shape: tuple[int, ...], fan_in: int, dtype) -> jax.Array:
    """U(+-1/sqrt(fan_in)) for weights and biases alike (the bias shares its layer's fan_in)."""
    bound = fan_in**-0.5
    return jax.random.uniform(rngs.params(), (math.prod(shape),), dtype, -bound, bound).reshape(shape)


class CausalConv3d(nnx.Module):
    """Conv3d that pads time only on the left (2 * padding_t frames), then a VALID convolution.

    ``padding`` follows torch (t, h, w): spatial padding is symmetric. Kernel layout (t, h, w, in, out).
    """

    def __init__(
        self,
        in_dim: int,
        out_dim: int,
        kernel_size: int | Sequence[int],
        *,
        stride: int | Sequence[int] = 1,
        padding: int | Sequence[int] = 0,
        rngs: nnx.Rngs,
        param_dtype=jnp.float32,
    ):
        k = _triple(kernel_size)
        self.stride = _triple(stride)
        pt, ph, pw = _triple(padding)
        self.time_pad = 2 * pt
        self.spatial_pad = ((ph, ph), (pw, pw))
        fan_in = in_dim * k[0] * k[1] * k[2]
        self.kernel = nnx.Param(_uniform(rngs, (*k, in_dim, out_dim), fan_in, param_dtype))
        self.bias = nnx.Param(_uniform(rngs, (out_dim,), fan_in, param_dtype))

    def conv(self, x: jax.Array) -> jax.Array:
        """The convolution with only spatial padding (time already padded or cached by the caller).

        Computed as one 2D convolution per temporal tap (frames folded into the batch), summed: the same
        result as a 3D convolution, and 5-9x faster forward + backward on CPU, where XLA's 3D convolution
        of few channels is slow (measured fitting the small preset's VAE)."""
        kernel = self.kernel[...].astype(x.dtype)
        kt, st = kernel.shape[0], self.stride[0]
        b, t = x.shape[:2]
        t_out = (t - kt) // st + 1
        if t_out < 1:
            raise ValueError(f"{t} frames are fewer than the temporal kernel {kt}")
        y = None
        for i in range(kt):
            xi = x[:, i : i + st * (t_out - 1) + 1 : st]
            yi = jax.lax.conv_general_dilated(
                xi.reshape(b * t_out, *xi.shape[2:]),
                kernel[i],
                window_strides=self.stride[1:],
                padding=self.spatial_pad,
                dimension_numbers=("NHWC", "HWIO", "NHWC"),
            )
            y = yi if y is None else y + yi
        return y.reshape(b, t_out, *y.shape[1:]) + self.bias[...].astype(x.dtype)

    def __call__(self, x: jax.Array) -> jax.Array:
        if self.time_pad:
            x = jnp.pad(x, ((0, 0), (self.time_pad, 0), (0, 0), (0, 0), (0, 0)))
        return self.conv(x)

    def cached(self, x: jax.Array, stream: CacheStream) -> jax.Array:
        """Causal conv whose left context is the cached input frames of the previous chunk."""
        if self.time_pad != CACHE_T:
            raise ValueError(f"cached conv expects a temporal padding of {CACHE_T}, got {self.time_pad}")
        if stream.start:
            prev = jnp.zeros((x.shape[0], CACHE_T, *x.shape[2:]), x.dtype)
        else:
            prev = stream.take()
        x = jnp.concatenate([prev, x], axis=1)
        stream.put(x[:, -CACHE_T:])
        return self.conv(x)


class Conv2d(nnx.Module):
    """Per-frame 2D convolution, kernel (h, w, in, out); frames are folded into the batch."""

    def __init__(
        self,
        in_dim: int,
        out_dim: int,
        *,
        stride: int = 1,
        padding: int = 0,
        rngs: nnx.Rngs,
        param_dtype=jnp.float32,
    ):
        self.stride = stride
        self.padding = padding
        self.kernel = nnx.Param(_uniform(rngs, (3, 3, in_dim, out_dim), in_dim * 9, param_dtype))
        self.bias = nnx.Param(_uniform(rngs, (out_dim,), in_dim * 9, param_dtype))

    def __call__(self, x: jax.Array) -> jax.Array:
        b, t = x.shape[:2]
        p = self.padding
        y = jax.lax.conv_general_dilated(
            x.reshape(b * t, *x.shape[2:]),
            self.kernel[...].astype(x.dtype),
            window_strides=(self.stride, self.stride),
            padding=((p, p), (p, p)),
            dimension_numbers=("NHWC", "HWIO", "NHWC"),
        )
        y = y + self.bias[...].astype(x.dtype)
        return y.reshape(b, t, *y.shape[1:])


class ChannelRMSNorm(nnx.Module):
    """The reference RMS_norm: F.normalize over channels (L2 norm floored at 1e-12) * sqrt(C) * gamma."""

    def __init__(self, dim: int, *, param_dtype=jnp.float32):
        self.gamma = nnx.Param(jnp.ones((dim,), param_dtype))

    def __call__(self, x: jax.Array) -> jax.Array:
        x32 = x.astype(jnp.float32)
        sq = jnp.sum(x32 * x32, axis=-1, keepdims=True)
        y = x32 * jax.lax.rsqrt(jnp.maximum(sq, 1e-24)) * (x.shape[-1] ** 0.5)
        return (y * self.gamma[...].astype(jnp.float32)).astype(x.dtype)


class ResidualBlock(nnx.Module):
    """RMS-SiLU-CausalConv x2 plus a 1x1x1 conv shortcut when the width changes."""

    def __init__(self, in_dim: int, out_dim: int, *, rngs: nnx.Rngs, param_dtype=jnp.float32):
        kw = dict(rngs=rngs, param_dtype=param_dtype)
        self.norm1 = ChannelRMSNorm(in_dim, param_dtype=param_dtype)
        self.conv1 = CausalConv3d(in_dim, out_dim, 3, padding=1, **kw)
        self.norm2 = ChannelRMSNorm(out_dim, param_dtype=param_dtype)
        self.conv2 = CausalConv3d(out_dim, out_dim, 3, padding=1, **kw)
        self.has_shortcut = in_dim != out_dim
        if self.has_shortcut:
            self.shortcut = CausalConv3d(in_dim, out_dim, 1, **kw)

    def __call__(self, x: jax.Array, stream: CacheStream) -> jax.Array:
        h = self.shortcut(x) if self.has_shortcut else x
        x = self.conv1.cached(jax.nn.silu(self.norm1(x)), stream)
        x = self.conv2.cached(jax.nn.silu(self.norm2(x)), stream)
        return x + h


class AttentionBlock(nnx.Module):
    """Single-head self-attention over the pixels of each frame (no attention across time)."""

    def __init__(self, dim: int, *, rngs: nnx.Rngs, param_dtype=jnp.float32):
        self.norm = ChannelRMSNorm(dim, param_dtype=param_dtype)
        kw = dict(kernel_init=_uniform_init, rngs=rngs, param_dtype=param_dtype)
        self.to_qkv = nnx.Linear(dim, 3 * dim, **kw)
        self.proj = nnx.Linear(dim, dim, **kw)

    def __call__(self, x: jax.Array, stream: CacheStream | None = None) -> jax.Array:
        b, t, h, w, c = x.shape
        qkv = self.to_qkv(self.norm(x).reshape(b * t, h * w, c))
        q, k, v = (a[:, :, None, :] for a in jnp.split(qkv, 3, axis=-1))
        y = attention(q, k, v)[:, :, 0, :]
        return x + self.proj(y).reshape(b, t, h, w, c)


class Resample(nnx.Module):
    """Spatial 2x down/up sampling per frame, optionally with a causal 2x temporal down/up sampling.

    upsample: nearest 2x then 3x3 conv (to ``upsample_out_dim``); the 3d variant first doubles the
    frames with a (3,1,1) conv to 2*dim channels interleaved in time. downsample: zero pad right/bottom,
    3x3 stride-2 conv; the 3d variant then halves the frames with a (3,1,1) stride-2 conv whose left
    context is the previous chunk's last frame.
    """

    MODES = ("upsample2d", "upsample3d", "downsample2d", "downsample3d")

    def __init__(
        self,
        dim: int,
        mode: str,
        *,
        upsample_out_dim: int | None = None,
        rngs: nnx.Rngs,
        param_dtype=jnp.float32,
    ):
        if mode not in self.MODES:
            raise ValueError(f"resample mode must be one of {self.MODES}, got {mode!r}")
        kw = dict(rngs=rngs, param_dtype=param_dtype)
        self.mode = mode
        if mode.startswith("upsample"):
            out = dim // 2 if upsample_out_dim is None else upsample_out_dim
            self.resample = Conv2d(dim, out, padding=1, **kw)
        else:
            self.resample = Conv2d(dim, dim, stride=2, **kw)
        if mode == "upsample3d":
            self.time_conv = CausalConv3d(dim, 2 * dim, (3, 1, 1), padding=(1, 0, 0), **kw)
        elif mode == "downsample3d":
            self.time_conv = CausalConv3d(dim, dim, (3, 1, 1), stride=(2, 1, 1), **kw)

    def __call__(self, x: jax.Array, stream: CacheStream) -> jax.Array:
        if self.mode == "upsample3d":
            x = self._time_upsample(x, stream)
        if self.mode.startswith("upsample"):
            x = jnp.repeat(jnp.repeat(x, 2, axis=2), 2, axis=3)  # nearest-exact at an integer factor
            return self.resample(x)
        x = self.resample(jnp.pad(x, ((0, 0), (0, 0), (0, 1), (0, 1), (0, 0))))
        if self.mode == "downsample3d":
            x = self._time_downsample(x, stream)
        return x

    def _time_upsample(self, x: jax.Array, stream: CacheStream) -> jax.Array:
        if stream.start:
            # The first chunk keeps its frame count; the next chunk's left context starts as zeros.
            stream.put(jnp.zeros((x.shape[0], CACHE_T, *x.shape[2:]), x.dtype))
            return x
        x = jnp.concatenate([stream.take(), x], axis=1)
        stream.put(x[:, -CACHE_T:])
        y = self.time_conv.conv(x)  # (B, T, H, W, 2C): channel halves are frames 2t and 2t+1
        b, t, h, w, c2 = y.shape
        y = y.reshape(b, t, h, w, 2, c2 // 2).transpose(0, 1, 4, 2, 3, 5)
        return y.reshape(b, 2 * t, h, w, c2 // 2)

    def _time_downsample(self, x: jax.Array, stream: CacheStream) -> jax.Array:
        last = x[:, -1:]
        if stream.start:
            stream.put(last)
            return x
        y = self.time_conv.conv(jnp.concatenate([stream.take(), x], axis=1))
        stream.put(last)
        return y


def avg_down(x: jax.Array, out_dim: int, factor_t: int, factor_s: int) -> jax.Array:
    """Parameter-free shortcut of the Wan2.2 down block: space/time to channels, then group means.

    Time is zero-padded on the left to a multiple of ``factor_t`` (the single first frame).
    Channel order follows the reference: (c, t-offset, h-offset, w-offset), then ``out_dim`` groups.
    """
    pad_t = (-x.shape[1]) % factor_t
    x = jnp.pad(x, ((0, 0), (pad_t, 0), (0, 0), (0, 0), (0, 0)))
    b, t, h, w, c = x.shape
    x = x.reshape(b, t // factor_t, factor_t, h // factor_s, factor_s, w // factor_s, factor_s, c)
    x = x.transpose(0, 1, 3, 5, 7, 2, 4, 6)
    factor = factor_t * factor_s * factor_s
    x = x.reshape(b, t // factor_t, h // factor_s, w // factor_s, out_dim, c * factor // out_dim)
    return jnp.mean(x, axis=-1)


def dup_up(x: jax.Array, out_dim: int, factor_t: int, factor_s: int, first_chunk: bool) -> jax.Array:
    """Parameter-free shortcut of the Wan2.2 up block: repeat channels, then channels to space/time.

    On the first chunk the first ``factor_t - 1`` frames are dropped (one frame in, one frame out).
    """
    b, t, h, w, c = x.shape
    factor = factor_t * factor_s * factor_s
    x = jnp.repeat(x, out_dim * factor // c, axis=-1)
    x = x.reshape(b, t, h, w, out_dim, factor_t, factor_s, factor_s)
    x = x.transpose(0, 1, 5, 2, 6, 3, 7, 4).reshape(b, t * factor_t, h * factor_s, w * factor_s, out_dim)
    return x[:, factor_t - 1 :] if first_chunk else x


class DownBlock(nnx.Module):
    """Wan2.2 residual down stage: res blocks (+ resample), plus the :func:`avg_down` shortcut."""

    def __init__(
        self,
        in_dim: int,
        out_dim: int,
        num_res_blocks: int,
        *,
        temporal: bool,
        down: bool,
        rngs: nnx.Rngs,
        param_dtype=jnp.float32,
    ):
        kw = dict(rngs=rngs, param_dtype=param_dtype)
        layers: list[nnx.Module] = []
        for j in range(num_res_blocks):
            layers.append(ResidualBlock(in_dim if j == 0 else out_dim, out_dim, **kw))
        if down:
            layers.append(Resample(out_dim, "downsample3d" if temporal else "downsample2d", **kw))
        self.downsamples = nnx.List(layers)
        self.out_dim = out_dim
        self.factor_t = 2 if temporal else 1
        self.factor_s = 2 if down else 1
        if (in_dim * self.factor_t * self.factor_s**2) % out_dim:
            raise ValueError(f"avg-pool shortcut cannot map {in_dim} channels to {out_dim}")

    def __call__(self, x: jax.Array, stream: CacheStream) -> jax.Array:
        shortcut = avg_down(x, self.out_dim, self.factor_t, self.factor_s)
        for layer in self.downsamples:
            x = layer(x, stream)
        return x + shortcut


class UpBlock(nnx.Module):
    """Wan2.2 residual up stage: res blocks + resample, plus the :func:`dup_up` shortcut when upsampling."""

    def __init__(
        self,
        in_dim: int,
        out_dim: int,
        num_res_blocks: int,
        *,
        temporal: bool,
        up: bool,
        rngs: nnx.Rngs,
        param_dtype=jnp.float32,
    ):
        kw = dict(rngs=rngs, param_dtype=param_dtype)
        layers: list[nnx.Module] = []
        for j in range(num_res_blocks):
            layers.append(ResidualBlock(in_dim if j == 0 else out_dim, out_dim, **kw))
        if up:
            mode = "upsample3d" if temporal else "upsample2d"
            layers.append(Resample(out_dim, mode, upsample_out_dim=out_dim, **kw))
        self.upsamples = nnx.List(layers)
        self.up = up
        self.out_dim = out_dim
        self.factor_t = 2 if temporal else 1
        if up and (out_dim * self.factor_t * 4) % in_dim:
            raise ValueError(f"duplicate-up shortcut cannot map {in_dim} channels to {out_dim}")

    def __call__(self, x: jax.Array, stream: CacheStream) -> jax.Array:
        shortcut = dup_up(x, self.out_dim, self.factor_t, 2, stream.start) if self.up else None
        for layer in self.upsamples:
            x = layer(x, stream)
        return x if shortcut is None else x + shortcut
