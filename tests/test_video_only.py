"""Learning from video without actions: a video-only sample trains the video loss only (zero gradient
through the action decoder, nothing learned from placeholder actions), mixing ratios are honoured exactly,
statistics come from the labelled data only, and bad input is a clear error."""

from __future__ import annotations

import json
from fractions import Fraction
from pathlib import Path
from types import SimpleNamespace

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx
from lerobot.configs.default import DatasetConfig
from lerobot.utils.constants import ACTION, OBS_STATE

from dreamzero_envs.record import record
from dreamzero_policy.configuration_dreamzero import DreamZeroJaxConfig
from dreamzero_policy.modeling_dreamzero import DreamZeroJaxPolicy
from dreamzero_policy.models.dit import CausalWanDiT
from dreamzero_policy.models.presets import get_preset
from dreamzero_policy.schedulers.flow_matching import FlowMatchSchedule
from dreamzero_policy.training import run
from dreamzero_policy.training.config import PrecomputeConfig, TrainConfig, VideoOnlyConfig, WindowConfig
from dreamzero_policy.training.data import EpisodeTable, PositionSampler, dataset_stats
from dreamzero_policy.training.loss import TrainBatch, teacher_forcing_loss
from dreamzero_policy.training.mixing import MixedDataset, RatioSchedule
from eval.heldout_loss import heldout_losses
from eval.video_only_job import (
    Recording,
    VideoOnlyJobConfig,
    _record,
    format_table,
    loss_summary,
    policy_start,
    recordings,
)

B, F, H, W = 2, 5, 4, 4  # frame 0 + 2 blocks of 2 latent frames


# ------------------------------------------------------------------------------------------- the loss
@pytest.fixture(scope="module")
def dit() -> CausalWanDiT:
    return CausalWanDiT(get_preset("tiny").dit, rngs=nnx.Rngs(0))


def _batch(dit: CausalWanDiT, labelled: list[bool], seed: int = 0, **kw) -> TrainBatch:
    c, r = dit.cfg, np.random.default_rng(seed)
    arr = lambda *s: jnp.asarray(r.standard_normal(s), jnp.float32)
    na = 2 * c.actions_per_block
    mask = jnp.asarray(np.array(labelled, np.float32)[:, None, None] * np.ones((1, na, c.action_dim), np.float32))
    base = dict(latents=arr(B, F, H, W, c.out_dim), text=arr(B, 6, c.text_dim),
                actions=jnp.clip(arr(B, na, c.action_dim), -1, 1), action_mask=mask,
                state=arr(B, 2, c.state_dim), embodiment=jnp.array([0, 0]),
                clip=arr(B, 3, c.image_dim), y=arr(B, F, H, W, c.in_dim - c.out_dim))
    return TrainBatch(**(base | kw))


@pytest.fixture(scope="module")
def grads_of(dit):
    """batch -> (LossOutput, gradient of the total loss w.r.t. the action decoder); one jitted executable
    for every call (differentiating only the decoder keeps the backward pass, and the compile, small)."""
    graphdef, params, rest = nnx.split(dit, nnx.All(nnx.Param, nnx.PathContains("action_decoder")), ...)
    key, sched = jax.random.key(3), FlowMatchSchedule()

    @jax.jit
    def f(params, batch):
        def total(p):
            out = teacher_forcing_loss(nnx.merge(graphdef, p, rest), batch, key, sched)
            return out.loss, out

        (_, out), g = jax.value_and_grad(total, has_aux=True)(params)
        return out, g

    return lambda batch: (lambda out, g: (out, nnx.to_pure_dict(g)))(*f(params, batch))


def test_a_video_only_sample_trains_the_video_loss_only(dit, grads_of) -> None:
    out, g = grads_of(_batch(dit, [False, False]))
    assert float(out.action_loss) == 0.0 and np.isfinite(float(out.loss))  # no 0/0
    assert float(out.video_loss) > 0.0
    dec = jax.tree.leaves(g["action_decoder"])
    assert dec and all(np.abs(np.asarray(x)).max() == 0.0 for x in dec)  # exactly zero, not small
    # Its placeholder actions never reach the model (the action tokens are pure noise at t = 1000): other
    # values give the same loss and the same gradients, so there is nothing to imitate.
    c = dit.cfg
    other, g2 = grads_of(_batch(dit, [False, False], actions=jnp.full((B, 2 * c.actions_per_block, c.action_dim), 0.7)))
    assert float(other.loss) == float(out.loss)
    jax.tree.map(lambda a, b: np.testing.assert_array_equal(np.asarray(a), np.asarray(b)), g, g2)


def test_in_a_mixed_batch_the_action_decoder_learns_from_the_labelled_sample_alone(dit, grads_of) -> None:
    mixed = _batch(dit, [True, False])
    out, g = grads_of(mixed)
    assert float(out.action_loss) > 0.0 and max(np.abs(np.asarray(x)).max() for x in jax.tree.leaves(g)) > 0.0
    # Change everything about the video-only sample: the action decoder's gradient does not move.
    r = np.random.default_rng(9)
    alt = mixed._replace(latents=mixed.latents.at[1].set(jnp.asarray(r.standard_normal(mixed.latents.shape[1:]))),
                         actions=mixed.actions.at[1].set(-mixed.actions[1]), state=mixed.state.at[1].add(1.0))
    out2, g2 = grads_of(alt)
    assert float(out2.video_loss) != float(out.video_loss)
    jax.tree.map(lambda a, b: np.testing.assert_allclose(np.asarray(a), np.asarray(b), rtol=1e-5, atol=1e-7),
                 g["action_decoder"], g2["action_decoder"])
    # The action mean runs over labelled samples: halving the labelled count does not halve the action loss.
    both, _ = grads_of(_batch(dit, [True, True]))
    assert float(out.action_loss) > 0.25 * float(both.action_loss)


def test_video_blind_actions_see_no_future_video(dit) -> None:
    """The held-out diagnostic: with ``video_blind`` the actions' loss no longer depends on the video of the
    blocks being predicted (the last block's latents are seen by nothing else), while it does without it."""
    key, sched = jax.random.key(5), FlowMatchSchedule()
    loss = jax.jit(lambda b, blind: teacher_forcing_loss(dit, b, key, sched, video_blind=blind).action_loss,
                   static_argnums=1)
    base = _batch(dit, [True, True])
    fpb = dit.cfg.frames_per_block
    moved = base._replace(latents=base.latents.at[:, -fpb:].multiply(-3.0))  # another future, same context
    assert float(loss(moved, True)) == float(loss(base, True))
    assert float(loss(moved, False)) != float(loss(base, False))


# ------------------------------------------------------------------------------------------- the data
@pytest.fixture(scope="module")
def data(tmp_path_factory) -> dict[str, Path]:
    root = tmp_path_factory.mktemp("vo")
    kw = dict(image_size=32, max_episode_steps=30)
    return {
        "labelled": record("reach", 2, root / "labelled", **kw).root,
        "video": record("reach", 2, root / "video", seed=100, actions=False, **kw).root,
        "flagged": record("reach", 3, root / "flagged", seed=200, **kw).root,  # has actions: flagged video-only
        "small": record("reach", 1, root / "small", image_size=24, max_episode_steps=30, actions=False).root,
        "tmp": root,
    }


def _cfg(data: dict, video: str | None = "video", ratio: float = 0.5, labelled: str = "labelled", **kw) -> TrainConfig:
    cfg = TrainConfig(dataset=DatasetConfig(repo_id="local/labelled", root=str(data[labelled])),
                      policy=DreamZeroJaxConfig(preset="tiny", view_height=32, view_width=32, device="cpu"),
                      output_dir=str(data["tmp"] / "out"), batch_size=4, windows=WindowConfig(augment=False),
                      video_only=VideoOnlyConfig(root=str(data[video]) if video else None, ratio=ratio), **kw)
    run.preflight(cfg)
    return cfg


def _model(cfg: TrainConfig) -> SimpleNamespace:  # what the windows need of a model: its config
    return SimpleNamespace(cfg=cfg.policy.model_config())


@pytest.mark.parametrize("ratio", [0.5, 0.25, 0.3, 1 / 3, 0.9, 0.01])
def test_the_mixing_ratio_is_honoured_exactly(ratio) -> None:
    sched, r = RatioSchedule(ratio), Fraction(ratio).limit_denominator(10_000)
    picks = [sched(k) for k in range(4000)]
    is_video = np.array([v for v, _ in picks])
    np.testing.assert_array_equal(np.cumsum(is_video), [int((n + 1) * r) for n in range(4000)])  # every prefix
    per_batch = is_video.reshape(-1, 16).sum(1)
    assert np.all(np.abs(per_batch - 16 * ratio) < 1)
    # each source is read in its own order 0, 1, 2, ... without gaps or repeats
    assert [i for v, i in picks if v] == list(range(is_video.sum()))
    assert [i for v, i in picks if not v] == list(range(len(picks) - is_video.sum()))


def test_mixed_batches_through_the_loader(data) -> None:
    cfg = _cfg(data, ratio=0.25)
    ds = run.make_dataset(cfg, _model(cfg))
    assert isinstance(ds, MixedDataset)
    sampler = PositionSampler(cfg.batch_size, start_step=3, num_steps=4)  # a resumed run: same rule
    positions = list(sampler)
    for step in range(4):
        batch = [ds[p] for p in positions[step * 4:(step + 1) * 4]]
        video_only = [not s["action_mask"].any() for s in batch]
        assert sum(video_only) == 1  # a quarter of every batch of 4
    v = ds.video.window(0, None)
    assert not v["action_mask"].any() and not v["actions"].any()  # placeholders; the loss never reads them
    np.testing.assert_allclose(v["state"][:, :2], np.clip(
        (ds.video.table.state[[0, ds.video.spec.actions_per_block]] - ds.stats[OBS_STATE]["q01"])
        / (ds.stats[OBS_STATE]["q99"] - ds.stats[OBS_STATE]["q01"]) * 2 - 1, -1, 1), atol=1e-6)
    ds.video.table.state = None  # a dataset without observation.state: zeros, as the reference
    assert not ds.video.window(0, None)["state"].any()


def test_statistics_ignore_video_only_episodes(data, tmp_path) -> None:
    alone = run.make_windows(_cfg(data, video=None), _model(_cfg(data, video=None)))
    cfg = _cfg(data, video="flagged")  # a dataset WITH actions, flagged video-only on the command line
    mixed = run.make_dataset(cfg, _model(cfg))
    assert mixed.video.table.action is None  # its actions are not even read
    for key in (ACTION, OBS_STATE):
        for s in ("q01", "q99", "mean", "std"):
            np.testing.assert_array_equal(mixed.stats[key][s], alone.stats[key][s])
    flagged = dataset_stats(EpisodeTable(mixed.video.ds), [], alone.spec.actions_per_block)  # had they been used
    assert not np.allclose(flagged[ACTION]["q99"], alone.stats[ACTION]["q99"])
    assert not mixed.video[0]["action_mask"].any()


def _fake_precompute(ds, model, out_dir, batch_size: int = 8, anchor_stride: int = 1) -> Path:
    """precompute() without the encoders (tested in test_train_data): the raw windows' fields, same files."""
    assert not ds.train  # eval transform
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    items = [ds[a] for a in range(0, len(ds), anchor_stride)]
    np.savez(out / "part_000000.npz", latents=np.stack([w["video"] for w in items]),
             action_mask=np.stack([w["action_mask"] for w in items]))
    (out / "stats.json").write_text(json.dumps({"stats": run.stats_to_json(ds.stats), "num_samples": len(items)}))
    return out


def test_precomputed_mix_keeps_the_labelled_statistics(data, monkeypatch) -> None:
    monkeypatch.setattr(run, "build_model", _model)
    monkeypatch.setattr(run, "precompute", _fake_precompute)
    pre = data["tmp"] / "pre"
    cfg = _cfg(data, precompute=PrecomputeConfig(dir=str(pre), only=True, anchor_stride=8))
    run.precompute_only(cfg)
    mixed = run.make_dataset(cfg, None)
    alone = run.make_windows(_cfg(data, video=None), _model(cfg))
    video = run.make_video_windows(cfg, _model(cfg), alone, train=False)
    assert isinstance(mixed, MixedDataset) and len(mixed.video) == len(range(0, len(video), 8))
    assert not mixed.video.arrays["action_mask"].any() and mixed.labelled.arrays["action_mask"].any(axis=(1, 2)).all()
    for src in (mixed.labelled, mixed.video):
        for key in (ACTION, OBS_STATE):
            np.testing.assert_allclose(src.stats[key]["q99"], alone.stats[key]["q99"], rtol=1e-6)
    # the labelled-only arm reads the same directory without the video-only part
    assert not isinstance(run.make_dataset(_cfg(data, video=None, precompute=PrecomputeConfig(dir=str(pre))), None),
                          MixedDataset)
    labelled_only = data["tmp"] / "pre_labelled"
    run.precompute_only(_cfg(data, video=None, precompute=PrecomputeConfig(dir=str(labelled_only), only=True)))
    with pytest.raises(ValueError, match="no precomputed windows"):
        run.make_dataset(_cfg(data, precompute=PrecomputeConfig(dir=str(labelled_only))), None)


def test_the_command_line_flags(data) -> None:
    from dreamzero_policy.training.cli import parse_train_config

    cfg = parse_train_config(["--dataset.repo_id=local/l", "--video_only.root=/v", "--video_only.ratio=0.25",
                              "--video_only.episodes=[0,2]"])
    assert cfg.video_only.enabled and cfg.video_only.ratio == 0.25 and cfg.video_only.episodes == [0, 2]
    assert not parse_train_config(["--dataset.repo_id=local/l"]).video_only.enabled
    with pytest.raises(Exception) as e:  # draccus wraps the config's ValueError in its ParsingError
        parse_train_config(["--dataset.repo_id=local/l", "--video_only.root=/v", "--video_only.ratio=1"])
    assert "--video_only.ratio must be in (0, 1), got 1.0" in str(e.value.__cause__ or e.value.__context__)


def test_bad_input_is_a_clear_error(data) -> None:
    for bad in (0.0, 1.0, 1.5, -0.2):
        with pytest.raises(ValueError, match="ratio"):
            _cfg(data, ratio=bad)
        with pytest.raises(ValueError, match="ratio"):
            RatioSchedule(bad)
    with pytest.raises(ValueError, match="no 'action' feature"):  # every dataset video-only
        _cfg(data, labelled="video", video="flagged")
    with pytest.raises(ValueError, match="no 'action' feature"):
        _cfg(data, labelled="video", video=None)
    with pytest.raises(ValueError, match="camera observation.images.top"):  # 24 px frames beside 32 px ones
        _cfg(data, video="small")
    with pytest.raises(FileNotFoundError):
        cfg = TrainConfig(dataset=DatasetConfig(repo_id="local/l", root=str(data["labelled"])),
                          output_dir=str(data["tmp"] / "o2"))
        cfg.video_only.root = str(data["tmp"] / "nope")
        run.preflight(cfg)
    with pytest.raises(ValueError, match="labelled data's statistics"):
        from dreamzero_policy.training.data import WindowDataset

        cfg = _cfg(data, video=None)
        WindowDataset(run.open_dataset("local/v", data["video"]), cfg.policy, cfg.policy.model_config(),
                      None, num_chunks=2, video_only=True)


# ------------------------------------------------------------------------------------------- the job
def test_video_only_job_table_and_seed_guard() -> None:
    metrics = [{"step": i + 1, "video_loss": 2.0 - i / 200, "action_loss": 1.0 - i / 400} for i in range(200)]
    s = loss_summary(metrics)
    assert s["first_video_loss"] > s["final_video_loss"] and s["final_action_loss"] == pytest.approx(0.62625)
    arm = lambda pct: {"per_task": {"a": pct, "b": 0.0}, "overall": pct / 2, "train_s": 10.0, **s,
                       "heldout_video_loss": 0.25, "heldout_action_loss": 0.5, "heldout_video_loss_no_actions": 0.3,
                       "heldout_action_loss_video_blind": 0.55, "action_loss_per_task": {"a": 0.4, "b": pct / 100}}
    summary = {"tasks": ["a", "b"], "success_pct": {"labelled": arm(20.0), "mixed": arm(40.0)},
               "budget": {"steps": 200, "batch_size": 16, "ratio": 0.5, "precompute_s": 5.0},
               "eval": {"episodes_per_task": 20, "seeds": [100000, 100019], "episode_length": 150},
               "data": {"labelled": {"episodes": {"a": 4, "b": 4}, "frames": 800},
                        "video_only": {"episodes": {"a": 25, "b": 25}, "frames": 5000},
                        "heldout": {"episodes": {"a": 3, "b": 3}, "frames": 600}}}
    table = format_table(summary)
    assert "| labelled only | 20 % | 0 % | **10 %** |" in table and "| labelled + video-only | 40 % |" in table
    assert "seeds 100000..100019" in table and "200 steps of batch 16" in table and "| 0.250 / 0.300 | 0.500 / 0.550 |" in table
    assert "3 unseen labelled episodes per task" in table and "VAE: the preset's randomly initialised" in table
    assert "| labelled only | 0.400 | 0.200 |" in table and "| labelled + video-only | 0.400 | 0.400 |" in table
    assert "4 labelled expert episodes per task (800 frames) and 25 video-only episodes per task (5000" in table
    # the second arm: task b seen only as video-only episodes
    split = summary | {"data": summary["data"] | {"labelled": {"episodes": {"a": 4}, "frames": 400},
                                                  "video_only": {"episodes": {"b": 25}, "frames": 2500}}}
    assert ("4 labelled expert episodes per task of a (400 frames) and 25 video-only episodes per task of b"
            in format_table(split))
    assert "VAE: fitted, from /v/pretrained_model" in format_table(summary | {"config": {"vae_policy":
                                                                                         "/v/pretrained_model"}})
    with pytest.raises(ValueError, match="overlap"):
        VideoOnlyJobConfig(video_only_seed=5)
    with pytest.raises(ValueError, match="ratio"):
        VideoOnlyJobConfig(ratio=1.0)
    second = recordings(VideoOnlyJobConfig(video_only_tasks="door-open-v3",
                                           labelled_tasks="button-press-v3,drawer-open-v3"))
    assert second["labelled"] == Recording(["button-press-v3", "drawer-open-v3"], 2, 0, True)
    assert second["video_only"] == Recording(["door-open-v3"], 25, 10_000, False)
    assert second["heldout"].tasks == ["button-press-v3", "drawer-open-v3", "door-open-v3"]
    assert recordings(VideoOnlyJobConfig())["video_only"].tasks == VideoOnlyJobConfig().task_list
    with pytest.raises(ValueError, match="--video_only_tasks must name some of --tasks"):
        VideoOnlyJobConfig(video_only_tasks="reach-v3")
    with pytest.raises(ValueError, match="--labelled_tasks must name some of --tasks"):
        VideoOnlyJobConfig(labelled_tasks=",")


def test_video_only_job_refuses_a_recording_it_was_not_asked_for(tmp_path) -> None:
    """A rerun into an `out` recorded with other tasks, counts, seeds or actions stops, instead of training on
    it (or re-recording under the stages built from it)."""
    (tmp_path / "labelled" / "meta").mkdir(parents=True)
    (tmp_path / "labelled" / "meta" / "info.json").write_text("{}")
    marker = {"episodes": {"a": 2, "b": 2}, "seeds": {"a": [0, 1], "b": [0, 2]}, "actions": True, "frames": 400}
    (tmp_path / "labelled.json").write_text(json.dumps(marker))
    assert _record(VideoOnlyJobConfig(tasks="b,a"), tmp_path, "labelled")["frames"] == 400  # reused as it is
    for kw in (dict(tasks="a"), dict(tasks="a,b", labelled_tasks="a"), dict(tasks="a,b", labelled_per_task=3)):
        with pytest.raises(ValueError, match="pass --fresh=true or another --out"):
            _record(VideoOnlyJobConfig(**kw), tmp_path, "labelled")
    for change in ({"seeds": {"a": [40, 41], "b": [40, 41]}}, {"actions": False}):
        (tmp_path / "labelled.json").write_text(json.dumps(marker | change))
        with pytest.raises(ValueError, match="pass --fresh=true or another --out"):
            _record(VideoOnlyJobConfig(tasks="a,b"), tmp_path, "labelled")


def test_heldout_action_loss_per_instruction_adds_up_to_the_whole(data, tmp_path) -> None:
    """Each instruction's action loss is its windows' share of the whole: masking the other windows' actions
    changes none of its predictions or draws (the weighted mean equals the loss over every window)."""
    cfg = _cfg(data, video=None)
    DreamZeroJaxPolicy(cfg.policy).save_pretrained(tmp_path)
    out = heldout_losses(tmp_path, data["labelled"], data["flagged"], num_chunks=2, anchor_stride=1, batch_size=3)
    per, n = out["action_loss_per_instruction"], out["windows_per_instruction"]
    assert len(per) >= 2 and sum(n.values()) == out["windows"] and len(set(per.values())) == len(per)
    whole = sum(per[t] * n[t] for t in per) / out["windows"]
    assert whole == pytest.approx(out["heldout_action_loss"], rel=1e-5)


def test_video_only_job_starts_both_arms_from_a_fitted_vae_when_given(tmp_path) -> None:
    assert "--policy.preset=small" in policy_start(VideoOnlyJobConfig())
    with pytest.raises(ValueError, match="not a policy directory"):
        VideoOnlyJobConfig(vae_policy=str(tmp_path))
    (tmp_path / "config.json").write_text(json.dumps({"preset": "small_wm", "view_height": 64, "view_width": 64}))
    cfg = VideoOnlyJobConfig(vae_policy=str(tmp_path))
    assert policy_start(cfg) == [f"--policy.path={tmp_path}"] and cfg.preset == "small_wm"
    with pytest.raises(ValueError, match="drop --preset"):  # never silently another model than the one named
        VideoOnlyJobConfig(vae_policy=str(tmp_path), preset="small")
    with pytest.raises(ValueError, match="--image_size=64"):
        VideoOnlyJobConfig(vae_policy=str(tmp_path), image_size=32)
