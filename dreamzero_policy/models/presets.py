"""Named model presets. Every preset uses the same code path; only sizes differ.

``tiny``      unit tests (seconds on CPU)
``small``     the CPU demo (trains on a simple sim task in minutes on 2 cores)
``wan22_5b``  DreamZero on Wan2.2-TI2V-5B (z48 VAE, no first-frame latent concat)
``wan21_14b`` DreamZero-DROID / AgiBot on Wan2.1-I2V-14B
"""

from __future__ import annotations

from dataclasses import dataclass, replace

import jax.numpy as jnp

from dreamzero_policy.models.dit import DiTConfig
from dreamzero_policy.models.image_encoder import ImageEncoderConfig
from dreamzero_policy.models.text_encoder import TextEncoderConfig
from dreamzero_policy.models.vae import VAEConfig

DTYPES = ("float32", "bfloat16")


@dataclass(frozen=True)
class ModelConfig:
    name: str
    dit: DiTConfig
    vae: VAEConfig
    text: TextEncoderConfig
    image: ImageEncoderConfig
    tokenizer: str = "byte"  # "byte" (no files) or a local tokenizer directory for real checkpoints

    @property
    def cond_channels(self) -> int:
        """Channels of the first-frame conditioning y (4-channel mask + VAE latent) when concatenated."""
        return 4 + self.vae.z_dim if self.dit.concat_first_frame_latent else 0

    def with_dtype(self, dtype: str, *, master_weights: bool = False) -> ModelConfig:
        """Store and compute the DiT, umT5 and CLIP in ``dtype``; the VAE stays float32 (as Wan keeps it).
        ``master_weights``: the DiT's weights stay float32 and only its compute is ``dtype`` (training)."""
        if dtype not in DTYPES:
            raise ValueError(f"dtype must be one of {DTYPES}, got {dtype!r}")
        jdt = jnp.dtype(dtype)
        dit = replace(self.dit, dtype=dtype, param_dtype="float32" if master_weights else dtype)
        return replace(self, dit=dit, text=replace(self.text, dtype=jdt, param_dtype=jdt),
                       image=replace(self.image, dtype=jdt, param_dtype=jdt))

    def validate(self) -> None:
        d = self.dit
        if d.text_dim != self.text.dim:
            raise ValueError(f"dit.text_dim={d.text_dim} != text encoder dim {self.text.dim}")
        if d.has_image and d.image_dim != self.image.dim:
            raise ValueError(f"dit.image_dim={d.image_dim} != image encoder dim {self.image.dim}")
        if d.in_dim != self.vae.z_dim + self.cond_channels:
            raise ValueError(f"dit.in_dim={d.in_dim} != z_dim {self.vae.z_dim} + conditioning {self.cond_channels}")
        if d.out_dim != self.vae.z_dim:
            raise ValueError(f"dit.out_dim={d.out_dim} != VAE z_dim {self.vae.z_dim}")


def _unit_stats(z: int) -> dict:
    return {"latents_mean": (0.0,) * z, "latents_std": (1.0,) * z}


def _tiny() -> ModelConfig:
    z = 4
    return ModelConfig(
        name="tiny",
        dit=DiTConfig(dim=32, ffn_dim=64, num_heads=2, num_layers=2, in_dim=2 * z + 4, out_dim=z, freq_dim=32,
                      text_dim=32, image_dim=32, action_dim=8, state_dim=8, register_hidden=32,
                      num_embodiments=2, frames_per_block=2, actions_per_block=4, states_per_block=1),
        vae=VAEConfig(z_dim=z, base_dim=8, dim_mult=(1, 2, 2, 2), num_res_blocks=1, **_unit_stats(z)),
        text=TextEncoderConfig(vocab_size=384, dim=32, dim_attn=32, dim_ffn=64, num_heads=2, num_layers=2,
                               text_len=16),
        image=ImageEncoderConfig(image_size=28, patch_size=14, dim=32, num_heads=2, num_layers=2),
    )


def _small() -> ModelConfig:
    # The CPU demo. Like Wan2.2-5B it feeds the first frame through CLIP only (no y concatenation), which
    # halves the VAE work per training sample on 2 cores.
    z = 8
    return ModelConfig(
        name="small",
        dit=DiTConfig(dim=128, ffn_dim=384, num_heads=2, num_layers=4, in_dim=z, out_dim=z, freq_dim=64,
                      text_dim=64, image_dim=64, concat_first_frame_latent=False, action_dim=8, state_dim=8,
                      register_hidden=128, num_embodiments=2, frames_per_block=2, actions_per_block=8,
                      states_per_block=1),
        vae=VAEConfig(z_dim=z, base_dim=8, dim_mult=(1, 2, 2, 2), num_res_blocks=1, **_unit_stats(z)),
        text=TextEncoderConfig(vocab_size=384, dim=64, dim_attn=64, dim_ffn=128, num_heads=2, num_layers=2,
                               text_len=24),
        image=ImageEncoderConfig(image_size=56, patch_size=14, dim=64, num_heads=2, num_layers=3),
    )


def _small_wm() -> ModelConfig:
    # `small` with a VAE sized to be fitted (dreamzero-fit-vae), for runs that show the world model. Like the
    # Wan2.2 VAE it folds 2x2 pixels into channels before the encoder (here into 8x spatial, 4x temporal,
    # z=16 as Wan2.1): at the same conv cost as `small`'s it has twice the channels at every resolution.
    # Measured on MetaWorld 64-px frames, same fit recipe: 24.3 dB held-out at 350 steps (small: 22.3) at
    # ~0.5 s per step (small: ~0.9), 27.5 dB at 1,400 steps, 28.5 dB at 2,800. `small` keeps its VAE: the random-VAE main
    # job was measured with it.
    z = 16
    cfg = _small()
    vae = VAEConfig(z_dim=z, base_dim=16, dim_mult=(1, 2, 2), temporal_downsample=(True, True), patch_size=2,
                    num_res_blocks=1, **_unit_stats(z))
    return replace(cfg, name="small_wm", vae=vae, dit=replace(cfg.dit, in_dim=z, out_dim=z))


def _wan21_14b() -> ModelConfig:
    return ModelConfig(name="wan21_14b", dit=DiTConfig(), vae=VAEConfig.wan21(), text=TextEncoderConfig(),
                       image=ImageEncoderConfig(), tokenizer="google/umt5-xxl")


def _wan22_5b() -> ModelConfig:
    dit = DiTConfig(dim=3072, ffn_dim=14336, num_heads=24, num_layers=30, in_dim=48, out_dim=48,
                    concat_first_frame_latent=False)
    return ModelConfig(name="wan22_5b", dit=dit, vae=VAEConfig.wan22(), text=TextEncoderConfig(),
                       image=ImageEncoderConfig(), tokenizer="google/umt5-xxl")


PRESETS = {"tiny": _tiny, "small": _small, "small_wm": _small_wm, "wan22_5b": _wan22_5b, "wan21_14b": _wan21_14b}


def get_preset(name: str, **dit_overrides) -> ModelConfig:
    try:
        cfg = PRESETS[name]()
    except KeyError:
        raise ValueError(f"unknown preset {name!r}; choose from {sorted(PRESETS)}") from None
    if dit_overrides:
        cfg = replace(cfg, dit=replace(cfg.dit, **dit_overrides))
    cfg.validate()
    return cfg
