"""The Wan causal 3D VAE: Wan2.1 (z=16, 8x spatial) and Wan2.2 (z=48, 16x spatial, patchified, residual).

Video is channels-last in [-1, 1], (B, T, H, W, 3) with T = 1 + 4k. Encoding runs the first frame
alone, then 4-frame chunks (a ``lax.scan``) carrying the causal cache, so memory does not grow with the
clip. ``encode`` returns the posterior mean normalised as the reference does, (mu - mean) * (1 / std);
``decode`` undoes it, decodes the first latent frame alone, then one latent frame (4 video frames) at a
time, and clamps to [-1, 1]. ``encode_chunk`` / ``decode_chunk`` expose the same streaming to a rollout
that observes frames incrementally. Jit with the module as an argument (``nnx.jit(lambda m, v:
m.encode(v))(vae, video)``, or graphdef/state) so the weights are inputs, not compile-time constants.
"""

from __future__ import annotations

from dataclasses import dataclass, replace

import jax
import jax.numpy as jnp
from flax import nnx

from dreamzero_policy.models.vae_blocks import (
    AttentionBlock,
    CacheStream,
    CausalConv3d,
    ChannelRMSNorm,
    DownBlock,
    Resample,
    ResidualBlock,
    UpBlock,
    VAECache,
)

# Per-channel latent statistics of the released VAEs (reference: WanVideoVAE / WanVideoVAE38).
WAN21_LATENTS_MEAN = (
    -0.7571, -0.7089, -0.9113, 0.1075, -0.1745, 0.9653, -0.1517, 1.5508,
    0.4134, -0.0715, 0.5517, -0.3632, -0.1922, -0.9497, 0.2503, -0.2921,
)  # fmt: skip
WAN21_LATENTS_STD = (
    2.8184, 1.4541, 2.3275, 2.6558, 1.2196, 1.7708, 2.6052, 2.0743,
    3.2687, 2.1526, 2.8652, 1.5579, 1.6382, 1.1253, 2.8251, 1.9160,
)  # fmt: skip
WAN22_LATENTS_MEAN = (
    -0.2289, -0.0052, -0.1323, -0.2339, -0.2799, 0.0174, 0.1838, 0.1557,
    -0.1382, 0.0542, 0.2813, 0.0891, 0.1570, -0.0098, 0.0375, -0.1825,
    -0.2246, -0.1207, -0.0698, 0.5109, 0.2665, -0.2108, -0.2158, 0.2502,
    -0.2055, -0.0322, 0.1109, 0.1567, -0.0729, 0.0899, -0.2799, -0.1230,
    -0.0313, -0.1649, 0.0117, 0.0723, -0.2839, -0.2083, -0.0520, 0.3748,
    0.0152, 0.1957, 0.1433, -0.2944, 0.3573, -0.0548, -0.1681, -0.0667,
)  # fmt: skip
WAN22_LATENTS_STD = (
    0.4765, 1.0364, 0.4514, 1.1677, 0.5313, 0.4990, 0.4818, 0.5013,
    0.8158, 1.0344, 0.5894, 1.0901, 0.6885, 0.6165, 0.8454, 0.4978,
    0.5759, 0.3523, 0.7135, 0.6804, 0.5833, 1.4146, 0.8986, 0.5659,
    0.7069, 0.5338, 0.4889, 0.4917, 0.4069, 0.4999, 0.6866, 0.4093,
    0.5709, 0.6065, 0.6415, 0.4944, 0.5726, 1.2042, 0.5458, 1.6887,
    0.3971, 1.0600, 0.3943, 0.5537, 0.5444, 0.4089, 0.7468, 0.7744,
)  # fmt: skip


@dataclass(frozen=True)
class VAEConfig:
    """Defaults are the Wan2.1 VAE (DreamZero 14B); :meth:`wan22` gives the Wan2.2-TI2V-5B VAE."""

    z_dim: int = 16
    base_dim: int = 96
    decoder_base_dim: int | None = None  # None: same as base_dim (Wan2.2 uses 256)
    dim_mult: tuple[int, ...] = (1, 2, 4, 4)
    num_res_blocks: int = 2
    temporal_downsample: tuple[bool, ...] = (False, True, True)
    is_residual: bool = False  # Wan2.2: residual down/up stages with parameter-free shortcuts
    patch_size: int = 1  # Wan2.2: 2x2 pixels folded into channels before the encoder
    latents_mean: tuple[float, ...] = WAN21_LATENTS_MEAN
    latents_std: tuple[float, ...] = WAN21_LATENTS_STD

    def __post_init__(self):
        if len(self.temporal_downsample) != len(self.dim_mult) - 1:
            raise ValueError(
                f"temporal_downsample needs len(dim_mult) - 1 = {len(self.dim_mult) - 1} entries, "
                f"got {len(self.temporal_downsample)}"
            )
        if len(self.latents_mean) != self.z_dim or len(self.latents_std) != self.z_dim:
            raise ValueError(
                f"latents_mean/std need z_dim={self.z_dim} entries, "
                f"got {len(self.latents_mean)}/{len(self.latents_std)}"
            )
        if self.patch_size < 1:
            raise ValueError(f"patch_size must be >= 1, got {self.patch_size}")

    @classmethod
    def wan21(cls, **overrides) -> VAEConfig:
        return replace(cls(), **overrides)

    @classmethod
    def wan22(cls, **overrides) -> VAEConfig:
        base = cls(
            z_dim=48,
            base_dim=160,
            decoder_base_dim=256,
            is_residual=True,
            patch_size=2,
            latents_mean=WAN22_LATENTS_MEAN,
            latents_std=WAN22_LATENTS_STD,
        )
        return replace(base, **overrides)

    @property
    def dec_dim(self) -> int:
        return self.base_dim if self.decoder_base_dim is None else self.decoder_base_dim

    @property
    def io_channels(self) -> int:
        """Channels the encoder reads and the decoder writes (RGB times the pixel patch)."""
        return 3 * self.patch_size**2

    @property
    def spatial_factor(self) -> int:
        return self.patch_size * 2 ** (len(self.dim_mult) - 1)

    @property
    def temporal_factor(self) -> int:
        return 2 ** sum(self.temporal_downsample)


def patchify(x: jax.Array, p: int) -> jax.Array:
    """(B, T, H, W, C) -> (B, T, H/p, W/p, C*p*p), channel order (c, w-offset, h-offset) as the reference."""
    if p == 1:
        return x
    b, t, h, w, c = x.shape
    x = x.reshape(b, t, h // p, p, w // p, p, c).transpose(0, 1, 2, 4, 6, 5, 3)
    return x.reshape(b, t, h // p, w // p, c * p * p)


def unpatchify(x: jax.Array, p: int) -> jax.Array:
    if p == 1:
        return x
    b, t, h, w, cpp = x.shape
    x = x.reshape(b, t, h, w, cpp // (p * p), p, p).transpose(0, 1, 2, 6, 3, 5, 4)
    return x.reshape(b, t, h * p, w * p, cpp // (p * p))


class Encoder3d(nnx.Module):
    def __init__(self, cfg: VAEConfig, *, rngs: nnx.Rngs, param_dtype=jnp.float32):
        kw = dict(rngs=rngs, param_dtype=param_dtype)
        dims = [cfg.base_dim * m for m in (1, *cfg.dim_mult)]
        last = len(cfg.dim_mult) - 1
        self.conv1 = CausalConv3d(cfg.io_channels, dims[0], 3, padding=1, **kw)
        layers: list[nnx.Module] = []
        for i, (in_dim, out_dim) in enumerate(zip(dims[:-1], dims[1:], strict=True)):
            temporal = i != last and cfg.temporal_downsample[i]
            if cfg.is_residual:
                layers.append(
                    DownBlock(in_dim, out_dim, cfg.num_res_blocks, temporal=temporal, down=i != last, **kw)
                )
                continue
            for j in range(cfg.num_res_blocks):
                layers.append(ResidualBlock(in_dim if j == 0 else out_dim, out_dim, **kw))
            if i != last:
                layers.append(Resample(out_dim, "downsample3d" if temporal else "downsample2d", **kw))
        self.downsamples = nnx.List(layers)
        top = dims[-1]
        self.middle = nnx.List(
            [ResidualBlock(top, top, **kw), AttentionBlock(top, **kw), ResidualBlock(top, top, **kw)]
        )
        self.head_norm = ChannelRMSNorm(top, param_dtype=param_dtype)
        self.head_conv = CausalConv3d(top, 2 * cfg.z_dim, 3, padding=1, **kw)

    def __call__(self, x: jax.Array, stream: CacheStream) -> jax.Array:
        x = self.conv1.cached(x, stream)
        for layer in (*self.downsamples, *self.middle):
            x = layer(x, stream)
        return self.head_conv.cached(jax.nn.silu(self.head_norm(x)), stream)


class Decoder3d(nnx.Module):
    def __init__(self, cfg: VAEConfig, *, rngs: nnx.Rngs, param_dtype=jnp.float32):
        kw = dict(rngs=rngs, param_dtype=param_dtype)
        dims = [cfg.dec_dim * m for m in (cfg.dim_mult[-1], *cfg.dim_mult[::-1])]
        temporal_upsample = cfg.temporal_downsample[::-1]
        last = len(cfg.dim_mult) - 1
        self.conv1 = CausalConv3d(cfg.z_dim, dims[0], 3, padding=1, **kw)
        top = dims[0]
        self.middle = nnx.List(
            [ResidualBlock(top, top, **kw), AttentionBlock(top, **kw), ResidualBlock(top, top, **kw)]
        )
        layers: list[nnx.Module] = []
        for i, (in_dim, out_dim) in enumerate(zip(dims[:-1], dims[1:], strict=True)):
            temporal = i != last and temporal_upsample[i]
            if cfg.is_residual:
                layers.append(
                    UpBlock(in_dim, out_dim, cfg.num_res_blocks + 1, temporal=temporal, up=i != last, **kw)
                )
                continue
            if i > 0:
                in_dim //= 2  # the Wan2.1 upsampler halves the width
            for j in range(cfg.num_res_blocks + 1):
                layers.append(ResidualBlock(in_dim if j == 0 else out_dim, out_dim, **kw))
            if i != last:
                layers.append(Resample(out_dim, "upsample3d" if temporal else "upsample2d", **kw))
        self.upsamples = nnx.List(layers)
        self.head_norm = ChannelRMSNorm(dims[-1], param_dtype=param_dtype)
        self.head_conv = CausalConv3d(dims[-1], cfg.io_channels, 3, padding=1, **kw)

    def __call__(self, x: jax.Array, stream: CacheStream) -> jax.Array:
        x = self.conv1.cached(x, stream)
        for layer in (*self.middle, *self.upsamples):
            x = layer(x, stream)
        return self.head_conv.cached(jax.nn.silu(self.head_norm(x)), stream)


class WanVAE(nnx.Module):
    """Encoder, quant conv (``conv1``), post-quant conv (``conv2``) and decoder, as the reference names them."""

    def __init__(self, cfg: VAEConfig, *, rngs: nnx.Rngs, param_dtype=jnp.float32):
        self.cfg = cfg
        kw = dict(rngs=rngs, param_dtype=param_dtype)
        self.encoder = Encoder3d(cfg, **kw)
        self.conv1 = CausalConv3d(2 * cfg.z_dim, 2 * cfg.z_dim, 1, **kw)
        self.conv2 = CausalConv3d(cfg.z_dim, cfg.z_dim, 1, **kw)
        self.decoder = Decoder3d(cfg, **kw)

    # ---- latent normalisation -------------------------------------------------------------
    def normalize_latents(self, mu: jax.Array) -> jax.Array:
        mean = jnp.asarray(self.cfg.latents_mean, jnp.float32)
        inv_std = 1.0 / jnp.asarray(self.cfg.latents_std, jnp.float32)
        return ((mu.astype(jnp.float32) - mean) * inv_std).astype(mu.dtype)

    def denormalize_latents(self, z: jax.Array) -> jax.Array:
        mean = jnp.asarray(self.cfg.latents_mean, jnp.float32)
        inv_std = 1.0 / jnp.asarray(self.cfg.latents_std, jnp.float32)
        return (z.astype(jnp.float32) / inv_std + mean).astype(z.dtype)

    # ---- encoding ---------------------------------------------------------------------------
    def encode(self, video: jax.Array) -> jax.Array:
        """(B, 1 + 4k, H, W, 3) in [-1, 1] -> normalised posterior mean (B, 1 + k, H/s, W/s, z_dim)."""
        latents, _ = self.encode_chunk(video, None)
        return latents

    def encode_chunk(self, frames: jax.Array, cache: VAECache | None) -> tuple[jax.Array, VAECache]:
        moments, cache = self._moments_chunk(frames, cache)
        return self.normalize_latents(moments[..., : self.cfg.z_dim]), cache

    def posterior(self, video: jax.Array) -> tuple[jax.Array, jax.Array]:
        """(B, 1 + 4k, H, W, 3) -> the diagonal Gaussian posterior (mean, log-variance), raw (not normalised)
        latents (B, 1 + k, h, w, z_dim) each: what fitting the VAE samples from."""
        moments, _ = self._moments_chunk(video, None)
        z = self.cfg.z_dim
        return moments[..., :z], jnp.clip(moments[..., z:], -30.0, 20.0)

    def _moments_chunk(self, frames: jax.Array, cache: VAECache | None) -> tuple[jax.Array, VAECache]:
        """Streaming encode. ``cache=None`` starts a clip: frames (B, 1 + 4k, ...), the first frame alone.

        With the cache returned by the previous call, frames (B, 4k, ...) continue the same clip and give
        k latent frames, identical to encoding the whole clip at once.
        """
        tf = self.cfg.temporal_factor
        self._check_video(frames)
        t = frames.shape[1]
        start = cache is None
        if start and t % tf != 1:
            raise ValueError(f"a clip must start with 1 + {tf}k frames (first frame alone), got {t}")
        if not start and (t == 0 or t % tf):
            raise ValueError(f"continuing a clip takes a positive multiple of {tf} frames, got {t}")
        x = patchify(frames, self.cfg.patch_size)
        outs = []
        if start:
            first, cache = self._encode_step(x[:, :1], None)
            outs.append(first)
            x = x[:, 1:]
        if x.shape[1]:
            b, n = x.shape[0], x.shape[1] // tf
            chunks = jnp.moveaxis(x.reshape(b, n, tf, *x.shape[2:]), 1, 0)

            def body(c: VAECache, chunk: jax.Array) -> tuple[VAECache, jax.Array]:
                lat, c = self._encode_step(chunk, c)
                return c, lat[:, 0]

            cache, lats = jax.lax.scan(body, cache, chunks, unroll=True)
            outs.append(jnp.moveaxis(lats, 0, 1))
        moments = outs[0] if len(outs) == 1 else jnp.concatenate(outs, axis=1)
        return moments, cache

    def init_encode_cache(self, batch: int, height: int, width: int, dtype=jnp.float32) -> VAECache:
        """A zero cache with the structure ``encode_chunk`` returns for frames of this size.

        It only pre-allocates rollout state of a fixed structure; it is not a state to continue from
        (clips start with ``cache=None``).
        """
        probe = jax.ShapeDtypeStruct((batch, 1, height, width, 3), dtype)
        shapes = jax.eval_shape(lambda f: self.encode_chunk(f, None)[1], probe)
        return jax.tree.map(lambda s: jnp.zeros(s.shape, s.dtype), shapes)

    def _encode_step(self, x: jax.Array, cache: VAECache | None) -> tuple[jax.Array, VAECache]:
        stream = CacheStream(cache)
        h = self.encoder(x, stream)
        return self.conv1(h), stream.result()

    # ---- decoding ---------------------------------------------------------------------------
    def decode(self, latents: jax.Array, *, clip: bool = True) -> jax.Array:
        """Normalised latents (B, 1 + k, h, w, z_dim) -> video (B, 1 + 4k, H, W, 3), clamped to [-1, 1]."""
        video, _ = self.decode_chunk(latents, None, clip=clip)
        return video

    def decode_chunk(
        self, latents: jax.Array, cache: VAECache | None, *, clip: bool = True
    ) -> tuple[jax.Array, VAECache]:
        """Streaming decode: ``cache=None`` starts a clip (first latent frame -> 1 video frame); with a
        previous call's cache, each latent frame continues the clip and gives 4 video frames."""
        if latents.ndim != 5 or latents.shape[-1] != self.cfg.z_dim or latents.shape[1] == 0:
            raise ValueError(
                f"latents must be (B, T>=1, h, w, {self.cfg.z_dim}) channels-last, got {tuple(latents.shape)}"
            )
        return self._decode_conv(self.conv2(self.denormalize_latents(latents)), cache, clip)

    def decode_raw(self, z: jax.Array, *, clip: bool = False) -> jax.Array:
        """Raw (not normalised) latents (B, 1 + k, h, w, z_dim) -> video; the fitting path."""
        return self._decode_conv(self.conv2(z), None, clip)[0]

    def _decode_conv(self, x: jax.Array, cache: VAECache | None, clip: bool) -> tuple[jax.Array, VAECache]:
        outs = []
        if cache is None:
            first, cache = self._decode_step(x[:, :1], None)
            outs.append(first)
            x = x[:, 1:]
        if x.shape[1]:

            def body(c: VAECache, frame: jax.Array) -> tuple[VAECache, jax.Array]:
                out, c = self._decode_step(frame[:, None], c)
                return c, out

            cache, frames = jax.lax.scan(body, cache, jnp.moveaxis(x, 1, 0), unroll=True)
            b, n, tf = frames.shape[1], frames.shape[0], frames.shape[2]
            outs.append(jnp.moveaxis(frames, 0, 1).reshape(b, n * tf, *frames.shape[3:]))
        video = outs[0] if len(outs) == 1 else jnp.concatenate(outs, axis=1)
        video = unpatchify(video, self.cfg.patch_size)
        return (jnp.clip(video, -1.0, 1.0) if clip else video), cache

    def _decode_step(self, x: jax.Array, cache: VAECache | None) -> tuple[jax.Array, VAECache]:
        stream = CacheStream(cache)
        out = self.decoder(x, stream)
        return out, stream.result()

    def _check_video(self, video: jax.Array) -> None:
        s = self.cfg.spatial_factor
        if video.ndim != 5 or video.shape[-1] != 3:
            raise ValueError(f"video must be (B, T, H, W, 3) channels-last, got {tuple(video.shape)}")
        if video.shape[2] % s or video.shape[3] % s:
            raise ValueError(
                f"height and width must be multiples of {s}, got {video.shape[2]}x{video.shape[3]}"
            )
