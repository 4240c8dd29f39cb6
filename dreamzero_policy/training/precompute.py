"""Frozen-encoder outputs (VAE latents, umT5 states, CLIP tokens, y) written once to disk.

Windows are taken at every anchor with the eval transform (centre crop, no jitter), so training from
them trades augmentation for not re-encoding each step. One ``.npz`` per batch plus ``stats.json``.
"""

from __future__ import annotations

import json
from pathlib import Path

import jax
import numpy as np
import torch
from flax import nnx

from dreamzero_policy.models.world_model import DreamZeroModel
from dreamzero_policy.training.data import WindowDataset, collate_numpy
from dreamzero_policy.training.trainer import encode_raw


def precompute(
    dataset: WindowDataset, model: DreamZeroModel, out_dir: str | Path, batch_size: int = 8,
    anchor_stride: int = 1,
) -> Path:
    if dataset.train:
        raise ValueError(
            "precompute from an eval-mode WindowDataset (train=False): no augmentation is stored"
        )
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    if anchor_stride < 1:
        raise ValueError(f"--precompute.anchor_stride must be >= 1, got {anchor_stride}")
    encode = nnx.jit(encode_raw)
    anchors = range(0, len(dataset), anchor_stride)
    n = len(anchors)
    for i, start in enumerate(range(0, n, batch_size)):
        raw = collate_numpy([dataset[anchors[j]] for j in range(start, min(n, start + batch_size))])
        batch = jax.device_get(encode(model, {k: jax.numpy.asarray(v) for k, v in raw.items()}))
        np.savez(
            out / f"part_{i:06d}.npz",
            **{k: np.asarray(v) for k, v in batch._asdict().items() if v is not None},
        )
    stats = {k: {s: np.asarray(v).tolist() for s, v in d.items()} for k, d in dataset.stats.items()}
    vae = model.vae.cfg  # the latents above are normalised with these: training must use the same
    latents = {"mean": list(vae.latents_mean), "std": list(vae.latents_std)}
    (out / "stats.json").write_text(json.dumps({"stats": stats, "num_samples": n, "latents": latents}))
    return out


class PrecomputedDataset(torch.utils.data.Dataset):
    """Serves precomputed TrainBatch fields by global position, shuffled per epoch like WindowDataset."""

    def __init__(self, root: str | Path, seed: int = 0):
        root = Path(root)
        parts = sorted(root.glob("part_*.npz"))
        if not parts:
            raise ValueError(f"no precomputed parts under {root}")
        loaded = [dict(np.load(p)) for p in parts]
        self.arrays = {k: np.concatenate([d[k] for d in loaded]) for k in loaded[0]}
        meta = json.loads((root / "stats.json").read_text())
        self.stats = {
            k: {s: np.asarray(v, np.float32) for s, v in d.items()} for k, d in meta["stats"].items()
        }
        self.latent_stats: dict[str, list[float]] | None = meta.get("latents")
        self.n, self.seed = len(self.arrays["latents"]), seed

    def __len__(self) -> int:
        return self.n

    def __getitem__(self, position: int) -> dict[str, np.ndarray]:
        epoch, i = divmod(int(position), self.n)
        idx = int(np.random.default_rng([self.seed, epoch]).permutation(self.n)[i])
        return {k: v[idx] for k, v in self.arrays.items()}
