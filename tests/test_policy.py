"""DreamZeroJaxPolicy behaviour: queue and re-planning, context resets, compile-once, persistence, bad input."""

import math

import jax
import numpy as np
import pytest
import torch
from lerobot.configs.types import FeatureType, PolicyFeature

from dreamzero_policy.configuration_dreamzero import DreamZeroJaxConfig
from dreamzero_policy.modeling_dreamzero import DreamZeroJaxPolicy

B, IMG = 2, (3, 32, 32)


def make_config(**kw) -> DreamZeroJaxConfig:
    return DreamZeroJaxConfig(
        input_features={"observation.state": PolicyFeature(FeatureType.STATE, (2,)),
                        "observation.images.top": PolicyFeature(FeatureType.VISUAL, IMG)},
        output_features={"action": PolicyFeature(FeatureType.ACTION, (2,))},
        num_inference_steps=2, cfg_scale=2.0, n_action_steps=2, device="cpu", **kw,
    )


def obs(seed: int = 0, task: str = "move to the red target", b: int = B) -> dict:
    g = torch.Generator().manual_seed(seed)
    return {"observation.state": torch.rand(b, 2, generator=g) * 2 - 1,
            "observation.images.top": torch.rand(b, *IMG, generator=g), "task": [task] * b}


class _Compiles:
    def __init__(self):
        self.n = 0
        jax.monitoring.register_event_duration_secs_listener(self._cb)

    def _cb(self, name, _d, **_kw):
        if name.endswith("backend_compile_duration"):
            self.n += 1


COMPILES = _Compiles()


@pytest.fixture(scope="module")
def policy():
    return DreamZeroJaxPolicy(make_config())


@pytest.fixture()
def planned(policy, monkeypatch):
    """Count rollout steps and report the context start frame after each."""
    calls = []
    real = policy.runner.step

    def spy(*a, **k):
        out = real(*a, **k)
        calls.append(int(policy.runner.state.start_frame))
        return out

    monkeypatch.setattr(policy.runner, "step", spy)
    policy.reset()
    return calls


def test_queue_serves_n_action_steps_then_replans(policy, planned):
    for i in range(5):
        a = policy.select_action(obs(i))
        assert a.shape == (B, 2) and a.dtype == torch.float32
    assert len(planned) == math.ceil(5 / policy.config.n_action_steps)


def test_no_recompilation_after_first_chunk(policy, planned):
    policy.select_action(obs(0))  # first chunk: compiles (ahead of time) everything the rollout uses
    before = COMPILES.n
    for i in range(1, 12):  # several re-plans, one context reset after 4 chunks, select_action calls
        policy.select_action(obs(i))
    assert COMPILES.n == before, f"{COMPILES.n - before} compilations after the first chunk"


def test_context_grows_then_resets_after_max_chunks(policy, planned):
    fpb = policy.model.cfg.dit.frames_per_block
    for i in range(2 * (policy.config.max_chunks_before_reset + 1)):
        policy.select_action(obs(i))
    starts = planned
    expected = [1 + fpb * (k + 1) for k in range(policy.config.max_chunks_before_reset)]
    assert starts[: len(expected)] == expected and starts[len(expected)] == 1 + fpb


def test_reset_and_task_change_restart_the_context(policy, planned):
    fpb = policy.model.cfg.dit.frames_per_block
    for i in range(3):
        policy.select_action(obs(i))
    assert planned == [1 + fpb, 1 + 2 * fpb]
    policy.reset()
    assert len(policy._action_queue) == 0
    policy.select_action(obs(5))
    assert planned[-1] == 1 + fpb
    policy.select_action(obs(6))
    policy.select_action(obs(7, task="move to the blue target"))  # queue empty -> new plan, new task
    assert planned[-1] == 1 + fpb


def test_save_load_gives_identical_actions(policy, tmp_path):
    policy.reset()
    first = [policy.select_action(obs(i)) for i in range(4)]
    policy.save_pretrained(tmp_path)
    loaded = DreamZeroJaxPolicy.from_pretrained(tmp_path)
    assert loaded.config.preset == policy.config.preset
    policy.reset()
    again = [policy.select_action(obs(i)) for i in range(4)]
    from_disk = [loaded.select_action(obs(i)) for i in range(4)]
    for a, b, c in zip(first, again, from_disk, strict=True):
        torch.testing.assert_close(a, b, rtol=0, atol=0)
        torch.testing.assert_close(a, c, rtol=1e-6, atol=1e-6)


def test_strict_load_names_the_problem(policy, tmp_path):
    from safetensors.numpy import load_file, save_file

    policy.save_pretrained(tmp_path)
    w = load_file(str(tmp_path / "model.safetensors"))
    w.pop("dit/head/head/kernel")
    save_file(w, str(tmp_path / "model.safetensors"))
    with pytest.raises(ValueError, match="dit/head/head/kernel"):
        DreamZeroJaxPolicy.from_pretrained(tmp_path)


@pytest.mark.parametrize(
    "mutate, match",
    [
        (lambda o: o.pop("observation.images.top"), "observation.images.top"),
        (lambda o: o.pop("observation.state"), "observation.state"),
        (lambda o: o.__setitem__("observation.images.top", torch.rand(B, 1, 16, 16)), "channels-first RGB"),
        (lambda o: o.__setitem__("observation.state", torch.rand(0, 2)), "empty batch"),
        (lambda o: o.__setitem__("observation.images.top", torch.rand(B, 32, 32, 3)), "channels-first"),
        (lambda o: o.__setitem__("observation.images.top", torch.rand(B, *IMG) * 255), r"\[0, 1\]"),
        (lambda o: o["observation.state"].__setitem__((0, 0), float("nan")), "NaN"),
        (lambda o: o["observation.state"].__setitem__((1, 1), float("inf")), "NaN or inf"),
        (lambda o: o.__setitem__("observation.images.top", torch.rand(B + 1, *IMG)), "batch size"),
        (lambda o: o.__setitem__("task", ["", ""]), "non-empty"),
        (lambda o: o.pop("task"), "task"),
        (lambda o: o.__setitem__("task", ["a"]), "entries"),
        (lambda o: o.__setitem__("observation.state", torch.rand(B, 3)), r"\(B, 2\)"),
    ],
)
def test_bad_input_raises_value_error(policy, mutate, match):
    policy.reset()
    o = obs(0)
    mutate(o)
    with pytest.raises(ValueError, match=match):
        policy.select_action(o)


def test_config_validation_errors():
    with pytest.raises(ValueError, match="camera"):
        DreamZeroJaxConfig(input_features={"observation.state": PolicyFeature(FeatureType.STATE, (2,))},
                           output_features={"action": PolicyFeature(FeatureType.ACTION, (2,))}).validate_features()
    with pytest.raises(ValueError, match="action dim"):
        make_config().__class__(
            input_features=make_config().input_features,
            output_features={"action": PolicyFeature(FeatureType.ACTION, (99,))},
        ).validate_features()
    wide = {"observation.state": PolicyFeature(FeatureType.STATE, (14,)),
            "observation.images.top": PolicyFeature(FeatureType.VISUAL, IMG)}
    wide_out = {"action": PolicyFeature(FeatureType.ACTION, (14,))}
    with pytest.raises(ValueError, match=r"--policy\.action_dim=14"):
        DreamZeroJaxConfig(input_features=wide, output_features=wide_out).validate_features()
    ok = DreamZeroJaxConfig(input_features=wide, output_features=wide_out, action_dim=14, state_dim=16)
    ok.validate_features()
    assert (ok.model_config().dit.action_dim, ok.model_config().dit.state_dim) == (14, 16)
    with pytest.raises(ValueError, match="n_action_steps"):
        make_config(preset="tiny").__class__(n_action_steps=99)
    with pytest.raises(ValueError, match="unknown preset"):
        DreamZeroJaxConfig(preset="huge")
    assert make_config().chunk_size == 4  # the tiny preset's actions per block


def test_default_task_fills_missing_instruction(policy):
    policy.reset()
    o = obs(0)
    o["task"] = ["", ""]
    policy.config.default_task = "move to the red target"
    try:
        assert policy.select_action(o).shape == (B, 2)
        o.pop("task")
        assert policy.select_action(o).shape == (B, 2)
    finally:
        policy.config.default_task = None


def test_relative_action_dims_add_back_the_anchor_state(monkeypatch):
    stats = {"action": {"q01": torch.tensor([-0.5, -1.0]), "q99": torch.tensor([0.5, 1.0])},
             "observation.state": {"q01": torch.tensor([-2.0, -2.0]), "q99": torch.tensor([2.0, 2.0])}}
    rel = DreamZeroJaxPolicy(make_config(relative_action_dims=[0]), dataset_stats=stats)
    fixed = np.zeros((B, 4, 8), np.float32)
    fixed[..., 0], fixed[..., 1] = 0.2, -0.4
    monkeypatch.setattr(rel.runner, "step", lambda *a, **k: (fixed, np.zeros((B, 3, 1, 1, 4))))  # the model's (normalised) output
    o = obs(3)
    out = rel.predict_action_chunk(o).numpy()
    s = (o["observation.state"].numpy() + 1) * 4 / 2 - 2  # un-normalised anchor state
    a0 = (0.2 + 1) * 1.0 / 2 - 0.5 + s[:, 0]  # un-normalised relative action + anchor
    np.testing.assert_allclose(out[..., 0], np.repeat((2 * (a0 + 0.5) / 1.0 - 1)[:, None], 2, 1), atol=1e-5)
    np.testing.assert_allclose(out[..., 1], -0.4, atol=1e-6)  # absolute dim untouched
    rel.relative = None
    with pytest.raises(ValueError, match="statistics"):
        rel.predict_action_chunk(o)


def test_queue_serves_the_planned_chunk_in_order(policy, monkeypatch):
    policy.reset()
    chunk = np.arange(B * 4 * 8, dtype=np.float32).reshape(B, 4, 8) / 100.0
    monkeypatch.setattr(policy.runner, "step", lambda *a, **k: (chunk, np.zeros((B, 3, 1, 1, 4))))
    served = [policy.select_action(obs(i)).numpy() for i in range(policy.config.n_action_steps)]
    for i, a in enumerate(served):
        np.testing.assert_array_equal(a, chunk[:, i, :2])


def test_observed_block_ends_with_the_frame_that_triggered_the_plan(policy, monkeypatch):
    policy.reset()
    blocks = []
    real = policy.runner._history_frames
    monkeypatch.setattr(policy.runner, "_history_frames", lambda latest: blocks.append(real(latest)) or blocks[-1])
    policy.select_action(obs(0))  # plans (fresh context)
    policy.select_action(obs(1))  # served from the queue: recorded
    policy.select_action(obs(2))  # plans: observes [frame 1, frame 2]
    assert len(blocks) == 1
    f1, f2 = policy._observe(obs(1)), policy._observe(obs(2))
    np.testing.assert_array_equal(blocks[0][:, -1], f2)
    np.testing.assert_array_equal(blocks[0][:, 0], f1)
    # unit: history [1, 2, 3] and latest 4 -> an evenly spread block that ends with 4
    r = policy.runner
    r.history = [np.full((1, 2, 2, 3), v, np.float32) for v in (1, 2, 3)]
    got = real(np.full((1, 2, 2, 3), 4, np.float32))[0, :, 0, 0, 0]
    assert got[-1] == 4 and set(got.tolist()) == {1, 2, 3, 4}, got
    r.reset()


def test_batch_size_change_while_queued_is_a_clear_error_and_never_sticks(policy):
    policy.reset()
    policy.select_action(obs(0))  # B=2 planned, one action left in the queue
    with pytest.raises(ValueError, match="batch size changed from 2 to 3"):
        policy.select_action(obs(1, b=3))
    assert all(f.shape[0] == B for f in policy.runner.history)  # the 3-row frame was not kept
    for i in range(2, 6):  # planning at B=2 keeps working
        assert policy.select_action(obs(i)).shape == (B, 2)
    policy.reset()
    assert policy.select_action(obs(0, b=3)).shape == (3, 2)
    policy.reset()


def test_every_queued_call_is_validated_and_a_new_task_replans(policy, planned):
    policy.select_action(obs(0))
    bad = obs(1)
    bad["observation.state"][0, 0] = float("nan")
    with pytest.raises(ValueError, match="NaN"):
        policy.select_action(bad)  # served from the queue, still checked
    with pytest.raises(ValueError, match="entries"):
        policy.select_action({**obs(1), "task": ["only one"]})
    assert len(planned) == 1
    policy.select_action(obs(1, task="move to the blue target"))  # new instruction: queue dropped, re-plan
    assert len(planned) == 2 and planned[-1] == 1 + policy.model.cfg.dit.frames_per_block


def test_text_embedding_cache_is_bounded(policy):
    from dreamzero_policy.inference.runner import TEXT_CACHE_SIZE

    r = policy.runner
    fns = r._fns(1, np.zeros((1, 32, 32, 3), np.float32))
    for i in range(TEXT_CACHE_SIZE + 10):
        r._encoded_text(fns, (f"task {i}",))
    assert len(r._text_cache) == TEXT_CACHE_SIZE
    assert ("task 0",) not in r._text_cache and (f"task {TEXT_CACHE_SIZE + 9}",) in r._text_cache


def test_any_camera_resolution_is_resized_to_the_view_size(policy):
    policy.reset()
    o = obs(0)
    o["observation.images.top"] = torch.rand(B, 3, 96, 160)  # announced 32x32, rendered larger
    assert policy.select_action(o).shape == (B, 2)
    assert policy._observe(o).shape == (B, 32, 32, 3)
    policy.reset()


def test_resize_is_antialiased():
    from dreamzero_policy.inference.observation import resize_views

    stripes = np.zeros((1, 480, 480, 3), np.float32)
    stripes[:, :, ::2] = 1.0  # one-pixel stripes: their true average at 32 px is a flat 0.5
    small = resize_views(stripes, 32, 32)
    assert abs(small.mean() - 0.5) < 0.01 and small.std() < 0.02, (small.mean(), small.std())


def test_relative_actions_with_states_in_the_tails_round_trip_through_the_real_processors(monkeypatch):
    from dreamzero_policy.processor_dreamzero import make_dreamzero_jax_pre_post_processors

    stats = {"action": {"q01": torch.tensor([-0.5, -1.0]), "q99": torch.tensor([0.5, 1.0])},
             "observation.state": {"q01": torch.tensor([-2.0, -2.0]), "q99": torch.tensor([2.0, 2.0])}}
    cfg = make_config(relative_action_dims=[0])
    rel = DreamZeroJaxPolicy(cfg, dataset_stats=stats)
    pre, post = make_dreamzero_jax_pre_post_processors(cfg, stats)
    r_norm = np.zeros((B, 4, 8), np.float32)
    r_norm[..., 0], r_norm[..., 1] = 0.2, -0.4
    monkeypatch.setattr(rel.runner, "step", lambda *a, **k: (r_norm, np.zeros((B, 3, 1, 1, 4))))
    raw = obs(3)
    raw["observation.state"] = torch.tensor([[3.5, 0.0], [-5.0, 1.0]])  # outside q01/q99 = [-2, 2]
    chunk = rel.predict_action_chunk(pre(dict(raw)))
    absolute = torch.stack([post(chunk[:, i]) for i in range(chunk.shape[1])], dim=1).numpy()
    r_raw = (0.2 + 1.0) * 1.0 / 2.0 - 0.5  # the relative action in robot units
    want = np.repeat(r_raw + raw["observation.state"][:, :1].numpy(), absolute.shape[1], axis=1)
    np.testing.assert_allclose(absolute[..., 0], want, atol=1e-5)  # r + the true state, not the clamped one
    np.testing.assert_allclose(absolute[..., 1], (-0.4 + 1.0) * 2.0 / 2.0 - 1.0, atol=1e-5)


def test_policy_device_places_the_model_and_an_unreachable_one_is_an_error(policy, monkeypatch):
    cpu = jax.devices("cpu")[0]
    assert policy.jax_device == cpu
    assert {d for leaf in jax.tree.leaves(policy.runner.params) for d in leaf.devices()} == {cpu}
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)  # LeRobot keeps "cuda" only if torch sees one
    cfg = make_config()
    cfg.device = "cuda"
    with pytest.raises(ValueError, match="no GPU backend"):
        DreamZeroJaxPolicy(cfg)


def test_lerobot_train_stops_with_the_dreamzero_train_command():
    from dreamzero_policy.configuration_dreamzero import TrainWithDreamZeroTrain

    with pytest.raises(TrainWithDreamZeroTrain, match="dreamzero-train"):
        make_config().get_optimizer_preset()


def test_every_config_field_is_read_by_the_code():
    """A policy field that no code reads is a flag that does nothing."""
    import dataclasses
    import re
    from pathlib import Path

    from lerobot.configs.policies import PreTrainedConfig

    root = Path(__file__).resolve().parents[1]
    code = "\n".join(p.read_text() for d in ("dreamzero_policy", "envs", "eval") for p in (root / d).rglob("*.py")
                     if p.name != "configuration_dreamzero.py")
    code += (root / "dreamzero_policy" / "configuration_dreamzero.py").read_text().split("# ---", 1)[1]
    # LeRobot reads normalization_mapping to build processors and save_predicted_video in lerobot-eval.
    import lerobot.processor.factory as lerobot_factory
    import lerobot.scripts.lerobot_eval as lerobot_eval

    code += Path(lerobot_factory.__file__).read_text() + Path(lerobot_eval.__file__).read_text()
    inherited = {f.name for f in dataclasses.fields(PreTrainedConfig)}
    ours = [f.name for f in dataclasses.fields(DreamZeroJaxConfig) if f.name not in inherited]
    unread = [n for n in ours if not re.search(rf"\.{n}\b|[\"']{n}[\"']", code)]
    assert not unread, unread


def test_a_kept_context_observes_blocks_without_recompiling():
    """Memory across chunks: with the context kept for 2 chunks, every second plan goes through the
    observed-block path (the frames seen meanwhile enter the cache), compiled once."""
    p = DreamZeroJaxPolicy(make_config(max_chunks_before_reset=2))
    p.select_action(obs(0))  # compiles everything, including observe_block
    fns = p.runner._compiled[B]
    calls = []
    real = fns.observe_block
    fns.observe_block = lambda *a: calls.append(1) or real(*a)
    before = COMPILES.n
    for i in range(1, 8):  # 4 plans: fresh, observed, fresh, observed
        p.select_action(obs(i))
    assert len(calls) == 2 and COMPILES.n == before


def test_the_policy_sees_the_frames_training_saw(tmp_path):
    """Inference applies the training windows' eval transform (centre crop, then resize) to each view."""
    from dreamzero_envs.record import record
    from dreamzero_policy.models.world_model import make_tokenizer
    from dreamzero_policy.training.data import WindowDataset
    from dreamzero_policy.training.dataset_source import open_dataset

    root = record("reach", 1, tmp_path / "d", image_size=48, max_episode_steps=8).root
    cfg = make_config()
    windows = WindowDataset(open_dataset("local/dz_reach", root), cfg, cfg.model_config(),
                            make_tokenizer(cfg.model_config()), num_chunks=1, train=False)
    want = windows.window(0, None)["video"][0]  # the anchor frame as training saw it
    img = np.asarray(windows._hf[0]["observation.images.top"].convert("RGB"), np.float32) / 255.0
    batch = {"observation.state": torch.zeros(1, 2),
             "observation.images.top": torch.from_numpy(img).permute(2, 0, 1)[None]}
    np.testing.assert_allclose(DreamZeroJaxPolicy(cfg)._observe(batch)[0], want, atol=1e-6)
