"""The training dataset adapter on a recorded reach dataset: statistics, normalisation, window layout."""

from __future__ import annotations

import json

import numpy as np
import pytest
from lerobot.datasets.lerobot_dataset import LeRobotDataset
from lerobot.utils.constants import ACTION, OBS_STATE

from dreamzero_envs.record import record
from dreamzero_policy.configuration_dreamzero import DreamZeroJaxConfig
from dreamzero_policy.models.world_model import make_tokenizer
from dreamzero_policy.training.data import WindowDataset, quantile_normalize


@pytest.fixture(scope="module")
def windows(tmp_path_factory) -> WindowDataset:
    root = record("reach", 6, tmp_path_factory.mktemp("d") / "reach", image_size=32).root
    ds = LeRobotDataset("local/dz_reach", root=root)
    policy = DreamZeroJaxConfig(preset="tiny", view_height=32, view_width=32)
    mc = policy.model_config()
    return WindowDataset(ds, policy, mc, make_tokenizer(mc), num_chunks=2, train=False)


def _quantile_by_hand(x: np.ndarray, p: float) -> np.ndarray:
    """Linear-interpolated quantile per column from the sorted data (independent of np.quantile)."""
    xs = np.sort(x.astype(np.float64), axis=0)
    pos = p * (len(xs) - 1)
    lo = int(np.floor(pos))
    hi = min(lo + 1, len(xs) - 1)
    return xs[lo] + (xs[hi] - xs[lo]) * (pos - lo)


def test_stats_are_quantiles_of_the_whole_dataset(windows: WindowDataset) -> None:
    t = windows.table
    for key, values in ((OBS_STATE, t.state), (ACTION, t.action)):
        np.testing.assert_allclose(windows.stats[key]["q01"], _quantile_by_hand(values, 0.01), rtol=1e-6, atol=1e-7)
        np.testing.assert_allclose(windows.stats[key]["q99"], _quantile_by_hand(values, 0.99), rtol=1e-6, atol=1e-7)
    # and on a known distribution: 0..100 has q01 = 1 and q99 = 99 exactly
    known = np.arange(101, dtype=np.float64)[:, None]
    np.testing.assert_allclose([_quantile_by_hand(known, 0.01)[0], _quantile_by_hand(known, 0.99)[0]], [1.0, 99.0])
    # LeRobot's meta stats average per-episode quantiles; with them most actions would clamp to +-1.
    meta = json.loads((windows.ds.root / "meta" / "stats.json").read_text())[ACTION]
    assert np.all(np.asarray(meta["q99"]) < windows.stats[ACTION]["q99"])
    normed = quantile_normalize(t.action, windows.stats[ACTION])
    at_limit = np.mean(np.abs(t.action) >= 0.999)  # the expert's clipped actions
    assert np.mean(np.abs(normed) >= 1.0) <= at_limit + 0.02


def test_window_layout_and_padding_mask(windows: WindowDataset) -> None:
    t = windows.table
    apb = windows.spec.actions_per_block
    last = len(t) - 1  # the final step of the final episode: every later action is padding
    w = windows.window(last, None)
    assert w["video"].shape == (windows.spec.num_frames, 32, 32, 3)
    assert w["video"].min() >= -1.0 and w["video"].max() <= 1.0
    assert w["actions"].shape == (2 * apb, windows.action_dim)
    np.testing.assert_array_equal(w["action_mask"][:, :2], np.r_[1.0, np.zeros(2 * apb - 1)][:, None] * [1, 1])
    assert not w["action_mask"][:, 2:].any() and not w["actions"][:, 2:].any()  # padded dims stay zero
    np.testing.assert_allclose(w["actions"][0, :2], quantile_normalize(t.action[last], windows.stats[ACTION]))
    np.testing.assert_allclose(w["state"][0, :2], quantile_normalize(t.state[last], windows.stats[OBS_STATE]))
    first = windows.window(0, None)
    np.testing.assert_allclose(first["actions"][:apb, :2], quantile_normalize(t.action[:apb], windows.stats[ACTION]))
    np.testing.assert_allclose(first["state"][1, :2], quantile_normalize(t.state[apb], windows.stats[OBS_STATE]))


def test_latent_stats_standardise_the_training_latents(windows: WindowDataset) -> None:
    import jax.numpy as jnp
    from flax import nnx

    from dreamzero_policy.models.world_model import DreamZeroModel
    from dreamzero_policy.training.latent_stats import apply_latent_stats, estimate_latent_stats

    model = DreamZeroModel(windows.policy.model_config(), rngs=nnx.Rngs(0))
    n = 20
    anchors = np.unique(np.linspace(0, windows.num_anchors - 1, n).round().astype(int))  # the clips it uses
    video = jnp.asarray(np.stack([windows.window(int(a), None)["video"] for a in anchors]))
    raw = np.asarray(model.encode_video(video))
    assert np.abs(raw.std(axis=(0, 1, 2, 3)) - 1.0).max() > 0.3  # a random VAE's latents are far from unit scale
    cfg = DreamZeroJaxConfig(preset="tiny", view_height=32, view_width=32)
    mean, std = estimate_latent_stats(model, windows, n)
    apply_latent_stats(model, cfg, mean, std)
    z = np.asarray(model.encode_video(video), np.float64)
    # On the very clips they were estimated from, every channel is standardised exactly (a wrong axis or
    # a mean over the wrong frames would be off by far more than float32 rounding).
    np.testing.assert_allclose(z.mean(axis=(0, 1, 2, 3)), 0.0, atol=1e-5)
    np.testing.assert_allclose(z.std(axis=(0, 1, 2, 3)), 1.0, atol=1e-5)
    # The run's config carries them into the exported policy config.
    assert cfg.model_config().vae.latents_mean == tuple(mean)
    with pytest.raises(ValueError, match="differs"):
        apply_latent_stats(model, cfg, [m + 1.0 for m in mean], std)


def test_precompute_anchor_stride_writes_every_nth_window(windows: WindowDataset, tmp_path) -> None:
    from flax import nnx

    from dreamzero_policy.models.world_model import DreamZeroModel
    from dreamzero_policy.training.precompute import PrecomputedDataset, precompute

    model = DreamZeroModel(DreamZeroJaxConfig(preset="tiny").model_config(), rngs=nnx.Rngs(0))
    full = PrecomputedDataset(precompute(windows, model, tmp_path / "all", batch_size=8))
    strided = PrecomputedDataset(precompute(windows, model, tmp_path / "s3", batch_size=8, anchor_stride=3))
    assert len(full) == len(windows) and len(strided) == len(range(0, len(windows), 3))
    # the strided set holds exactly windows 0, 3, 6, ... of the full one (same encoders, eval transform)
    assert strided.arrays.keys() == full.arrays.keys()
    for key, value in strided.arrays.items():
        np.testing.assert_allclose(value, full.arrays[key][::3], rtol=1e-5, atol=1e-6, err_msg=key)
    with pytest.raises(ValueError, match="anchor_stride"):
        precompute(windows, model, tmp_path / "bad", anchor_stride=0)
