"""The whole DreamZero world-action model: DiT + frozen VAE, umT5 and CLIP encoders.

This is the one place that turns raw inputs (frames in [-1, 1], token ids) into what the DiT consumes
(normalised latents, text states, CLIP tokens, first-frame conditioning ``y``), shared by training, the
policy rollout and checkpoint conversion.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
from flax import nnx

from dreamzero_policy.models.dit import CausalWanDiT
from dreamzero_policy.models.image_encoder import CLIPVisionEncoder
from dreamzero_policy.models.presets import ModelConfig
from dreamzero_policy.models.text_encoder import UMT5Encoder
from dreamzero_policy.models.tokenizer import ByteTokenizer, HFTokenizer, Tokenizer
from dreamzero_policy.models.vae import WanVAE


class DreamZeroModel(nnx.Module):
    def __init__(self, cfg: ModelConfig, *, rngs: nnx.Rngs):
        cfg.validate()
        self.cfg = cfg
        self.dit = CausalWanDiT(cfg.dit, rngs=rngs)
        self.vae = WanVAE(cfg.vae, rngs=rngs)
        self.text_encoder = UMT5Encoder(cfg.text, rngs=rngs)
        self.image_encoder = CLIPVisionEncoder(cfg.image, rngs=rngs)

    def encode_text(self, ids: jax.Array, mask: jax.Array) -> jax.Array:
        """Token ids (B, L) -> umT5 states with every position past a prompt's length zeroed."""
        return self.text_encoder.encode_prompts(ids, mask)

    def encode_video(self, video: jax.Array) -> jax.Array:
        """(B, 1 + 4k, H, W, 3) in [-1, 1] -> normalised latents (B, 1 + k, h, w, z)."""
        return self.vae.encode(video)

    def encode_first_frame(self, frame: jax.Array, num_frames: int) -> tuple[jax.Array, jax.Array | None]:
        """First frame (B, H, W, 3) in [-1, 1] -> (CLIP tokens, y) for a clip of ``num_frames`` frames.

        y = [4-channel first-frame mask | VAE latent of (first frame, then black frames)] per latent frame,
        as the reference's ``encode_image``; None for models that do not concatenate it (Wan2.2 5B).
        """
        clip = self.image_encoder.encode_image(frame) if self.cfg.dit.has_image else None
        if not self.cfg.dit.concat_first_frame_latent:
            return clip, None
        b = frame.shape[0]
        video = jnp.concatenate([frame[:, None], jnp.zeros((b, num_frames - 1, *frame.shape[1:]), frame.dtype)], 1)
        lat = self.vae.encode(video)
        msk = jnp.zeros((*lat.shape[:-1], 4), lat.dtype).at[:, 0].set(1.0)
        return clip, jnp.concatenate([msk, lat], axis=-1)


def make_tokenizer(cfg: ModelConfig, tokenizer_dir: str | None = None) -> Tokenizer:
    """The byte tokenizer for presets without a vocabulary; a local HF tokenizer directory otherwise."""
    if tokenizer_dir:
        return HFTokenizer.from_directory(tokenizer_dir, length=cfg.text.text_len)
    if cfg.tokenizer != "byte":
        raise ValueError(
            f"preset {cfg.name!r} uses the {cfg.tokenizer} tokenizer: pass the local directory holding it "
            f"with --policy.tokenizer_dir=DIR (or dreamzero-convert --tokenizer_dir=DIR); nothing is "
            f"downloaded at run time (fetch it once: huggingface-cli download {cfg.tokenizer} --local-dir DIR)"
        )
    return ByteTokenizer(cfg.text.vocab_size, cfg.text.text_len)
