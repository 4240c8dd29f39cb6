"""Per-channel VAE latent statistics estimated from the training data.

Wan VAEs ship ``latents_mean`` / ``latents_std`` measured on video so that the DiT sees unit-scale latents.
A randomly initialised VAE (the tiny / small presets) has none: its raw latents are dominated by a
constant (on the reach demos the content varies by under 1% of the latent energy), which leaves the DiT
an almost constant input. ``dreamzero-train --windows.latent_stats_frames=N`` measures them on N training clips
instead; they then travel in the policy config (``latents_mean`` / ``latents_std``).
"""

from __future__ import annotations

from dataclasses import replace

import jax.numpy as jnp
import numpy as np
from flax import nnx

from dreamzero_policy.configuration_dreamzero import DreamZeroJaxConfig
from dreamzero_policy.models.world_model import DreamZeroModel
from dreamzero_policy.training.data import WindowDataset


def estimate_latent_stats(
    model: DreamZeroModel, windows: WindowDataset, n: int, batch_size: int = 8
) -> tuple[list[float], list[float]]:
    """Raw-latent per-channel (mean, std) over ``n`` evenly spaced windows, without augmentation."""
    if n < 1:
        raise ValueError(f"need at least one window, got n={n}")
    anchors = np.unique(np.linspace(0, windows.num_anchors - 1, n).round().astype(int))
    encode = nnx.jit(lambda m, v: m.encode_video(v))
    total = total_sq = None
    count = 0
    for start in range(0, len(anchors), batch_size):
        video = np.stack([windows.window(int(a), None)["video"] for a in anchors[start : start + batch_size]])
        lat = np.asarray(encode(model, jnp.asarray(video)), np.float64)
        flat = lat.reshape(-1, lat.shape[-1])
        total = flat.sum(0) if total is None else total + flat.sum(0)
        total_sq = (flat**2).sum(0) if total_sq is None else total_sq + (flat**2).sum(0)
        count += flat.shape[0]
    mean_n = total / count
    std_n = np.sqrt(np.maximum(total_sq / count - mean_n**2, 0.0))
    # encode_video normalises with the current stats: undo that to report raw-latent statistics.
    mean0 = np.asarray(model.vae.cfg.latents_mean, np.float64)
    std0 = np.asarray(model.vae.cfg.latents_std, np.float64)
    std = np.maximum(std_n * std0, 1e-6)
    return (mean_n * std0 + mean0).tolist(), std.tolist()


def apply_latent_stats(model: DreamZeroModel, cfg: DreamZeroJaxConfig, mean: list[float], std: list[float]) -> None:
    """Use (mean, std) in the model's VAE and record them in the run's policy config (hence the export)."""
    if cfg.latents_mean is not None and not np.allclose(cfg.latents_mean, mean, rtol=1e-5):
        raise ValueError(
            f"latents_mean {cfg.latents_mean} of the run differs from the data's {mean} "
            "(precomputed with other statistics?)"
        )
    cfg.latents_mean, cfg.latents_std = [float(x) for x in mean], [float(x) for x in std]
    vae = replace(model.vae.cfg, latents_mean=tuple(cfg.latents_mean), latents_std=tuple(cfg.latents_std))
    model.vae.cfg = vae
    model.cfg = replace(model.cfg, vae=vae)
