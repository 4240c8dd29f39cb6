"""Fitting the preset's VAE to a dataset's frames: the loss falls, the result is a policy directory that
loads with the fitted VAE and its latent statistics, and round-trips through save/load."""

from __future__ import annotations

import json

import numpy as np
import pytest
from lerobot.configs.default import DatasetConfig

from dreamzero_envs.record import record
from dreamzero_policy.configuration_dreamzero import DreamZeroJaxConfig
from dreamzero_policy.training.vae_fit import EXPORT_DIR, METRICS, VAEFitConfig, fit_vae, main


@pytest.fixture(scope="module")
def fitted(tmp_path_factory):
    root = record("reach", 4, tmp_path_factory.mktemp("d") / "reach", image_size=32, max_episode_steps=20).root
    out = tmp_path_factory.mktemp("vae")
    cfg = VAEFitConfig(DatasetConfig(repo_id="local/dz_reach", root=str(root)),
                       policy=DreamZeroJaxConfig(preset="tiny", device="cpu"), output_dir=str(out), steps=60,
                       batch_size=2, frames_per_step=8, holdout_episodes=1, eval_clips=8, stats_clips=16, log_freq=5,
                       save_freq=30, progress=False)
    report = fit_vae(cfg)
    return root, out, report


def test_fitting_reduces_the_reconstruction_loss(fitted):
    _, out, report = fitted
    recs = [json.loads(line) for line in (out / METRICS).read_text().splitlines()]
    assert [r["step"] for r in recs] == list(range(5, 61, 5))
    first, last = np.mean([r["l1"] for r in recs[:2]]), np.mean([r["l1"] for r in recs[-2:]])
    assert last < 0.7 * first, (first, last)
    assert np.isfinite(report["held_out_psnr_db"]) and report["held_out_episodes"] == [3]


def test_the_fitted_policy_loads_with_its_vae_and_round_trips(fitted, tmp_path):
    from dreamzero_policy.modeling_dreamzero import DreamZeroJaxPolicy
    from dreamzero_policy.training.vae_fit import psnr
    from dreamzero_policy.weights_io import read_weights

    _, out, report = fitted
    policy = DreamZeroJaxPolicy.from_pretrained(out / EXPORT_DIR)
    assert policy.config.latents_mean is not None and len(policy.config.latents_std) == 4
    assert policy.model.vae.cfg.latents_mean == tuple(policy.config.latents_mean)
    saved = read_weights(out / EXPORT_DIR / "model.safetensors")
    got = {k: v for k, v in read_weights(out / EXPORT_DIR / "model.safetensors").items() if k.startswith("vae/")}
    assert got and all(np.array_equal(saved[k], v) for k, v in got.items())
    policy.save_pretrained(tmp_path / "again")
    again = read_weights(tmp_path / "again" / "model.safetensors")
    assert all(np.array_equal(saved[k], again[k]) for k in saved)
    assert DreamZeroJaxPolicy.from_pretrained(tmp_path / "again").config.latents_mean == policy.config.latents_mean
    assert psnr(np.zeros(4), np.zeros(4)) == float("inf") and abs(psnr(np.zeros(4), np.full(4, 0.2)) - 20.0) < 1e-9


def test_a_used_output_dir_needs_resume_and_resume_continues(fitted):
    root, out, _ = fitted
    args = ["--dataset.repo_id=local/dz_reach", f"--dataset.root={root}", "--policy.preset=tiny",
            f"--output_dir={out}", "--steps=60", "--batch_size=4", "--holdout_episodes=1", "--progress=false"]
    with pytest.raises(SystemExit, match="already holds a VAE fit"):
        main(args)
    main([*args, "--resume=true", "--eval_clips=4", "--stats_clips=4"])  # nothing left to train: re-exports
    recs = [json.loads(line) for line in (out / METRICS).read_text().splitlines()]
    assert recs[-1]["step"] == 60 and len(recs) == 12
