"""`--env.type=dz_metaworld` (LeRobot's MetaWorld env, sized and cheap) and recording MetaWorld's experts.

Needs the `metaworld` extra (`uv sync --all-extras`); MuJoCo renders headless through EGL.
"""

from __future__ import annotations

import os

os.environ.setdefault("MUJOCO_GL", "egl")  # before mujoco is imported: no display here

from pathlib import Path

import numpy as np
import pytest
import torch
from lerobot.datasets.lerobot_dataset import LeRobotDataset
from lerobot.envs.factory import make_env, make_env_config
from lerobot.envs.utils import env_to_policy_features
from lerobot.scripts.lerobot_eval import rollout
from lerobot.utils.constants import ACTION, OBS_IMAGE, OBS_STATE

import lerobot_policy_dreamzero  # noqa: F401  (what plugin discovery imports: registers dz_metaworld)
from dreamzero_envs.metaworld_env import TASK_DESCRIPTIONS, DzMetaworldEnv
from dreamzero_envs.record import main as record_main
from dreamzero_envs.record_metaworld import record_metaworld

TASK = "button-press-v3"  # the quickest expert (~60 steps)


class _VecPolicy(torch.nn.Module):
    """Enough of a policy for LeRobot's `rollout`: MetaWorld's expert in each sub-env, or zeros."""

    def __init__(self, vec_env, expert: bool) -> None:
        super().__init__()
        self.vec_env, self.expert = vec_env, expert

    def reset(self) -> None:
        pass

    def select_action(self, observation: dict) -> torch.Tensor:
        if self.expert:
            return torch.from_numpy(np.stack(self.vec_env.call("expert_action")))
        return torch.zeros(self.vec_env.num_envs, 4)


def _rollout(cfg, vec_env, expert: bool, seeds: list[int]) -> dict:
    env_pre, env_post = cfg.get_env_processors()  # the env's own steps, as lerobot-eval applies them
    identity = lambda x: x  # the policy's pre/post-processors: our stand-in policy needs none
    return rollout(vec_env, _VecPolicy(vec_env, expert), env_pre, env_post, identity, identity, seeds=seeds)


def test_factory_env_succeeds_with_expert_in_lerobot_rollout() -> None:
    cfg = make_env_config("dz_metaworld", task=TASK, image_size=64, episode_length=150)
    features = env_to_policy_features(cfg)
    assert features[OBS_IMAGE].shape == (3, 64, 64) and features[OBS_STATE].shape == (4,)
    vec = make_env(cfg, n_envs=2)[TASK][0]
    try:
        assert vec.call("_max_episode_steps") == (150, 150)  # what lerobot-eval bounds a rollout by
        assert vec.call("task_description") == (TASK_DESCRIPTIONS[TASK],) * 2
        assert TASK_DESCRIPTIONS[TASK]
        out = _rollout(cfg, vec, expert=True, seeds=[0, 1])
        assert out["success"].any(dim=1).tolist() == [True, True]
        assert out["done"][:, -1].all() and out["done"].shape[1] < 150  # ended by success, not the limit
    finally:
        vec.close()


def test_episode_length_honoured_and_no_success_without_acting() -> None:
    cfg = make_env_config("dz_metaworld", task=TASK, image_size=32, episode_length=7)
    vec = make_env(cfg, n_envs=1)[TASK][0]
    try:
        out = _rollout(cfg, vec, expert=False, seeds=[0])
        assert out["done"].shape[1] == 7 and not out["success"].any()
    finally:
        vec.close()
    env = DzMetaworldEnv(TASK, episode_length=7, image_size=32)
    env.reset(seed=0)
    truncated = [env.step(np.zeros(4, np.float32))[3] for _ in range(7)]
    assert truncated == [False] * 6 + [True]  # MetaWorld itself truncates at episode_length, not 500
    env.close()


def test_rendered_image_has_requested_size() -> None:
    env = DzMetaworldEnv(TASK, image_size=48)
    obs, _ = env.reset(seed=0)
    assert obs["pixels"].shape == (48, 48, 3) and obs["pixels"].dtype == np.uint8
    assert env.observation_space["pixels"].shape == (48, 48, 3)
    assert env.render().shape == (48, 48, 3)
    assert obs["pixels"].std() > 10  # a scene, not a blank buffer
    assert obs["agent_pos"].shape == (4,) and env.raw_obs.shape == (39,)
    env.close()


def test_cheap_rendering_drops_shadows_and_reflections_unless_asked() -> None:
    cfg = make_env_config("dz_metaworld", task=TASK, image_size=32, shadows=True, reflections=True)
    assert cfg.gym_kwargs["shadows"] and cfg.gym_kwargs["reflections"]
    cheap, shaded = DzMetaworldEnv(TASK, image_size=32), DzMetaworldEnv(TASK, image_size=32, **{
        k: cfg.gym_kwargs[k] for k in ("shadows", "reflections")})
    try:
        a, _ = cheap.reset(seed=0)
        b, _ = shaded.reset(seed=0)
        assert not cheap._env.model.light_castshadow.any() and not cheap._env.model.mat_reflectance.any()
        assert shaded._env.model.light_castshadow.any() and shaded._env.model.mat_reflectance.any()
        assert not np.array_equal(a["pixels"], b["pixels"])  # the same scene, drawn without the shadow
        assert np.abs(a["pixels"].astype(int) - b["pixels"]).mean() < 20
    finally:
        cheap.close()
        shaded.close()


def test_same_seed_reproduces_episode_other_seed_differs() -> None:
    def trace(seed: int) -> tuple[list[np.ndarray], list[np.ndarray]]:
        env = DzMetaworldEnv("push-v3", image_size=32)  # a fresh env each time: no state carried over
        obs, _ = env.reset(seed=seed)
        frames, states = [obs["pixels"]], [env.raw_obs.copy()]
        for _ in range(5):
            obs, *_ = env.step(env.expert_action())
            frames.append(obs["pixels"])
            states.append(env.raw_obs.copy())
        env.close()
        return frames, states

    frames_a, states_a = trace(3)
    frames_b, states_b = trace(3)
    frames_c, states_c = trace(4)
    assert all(np.array_equal(a, b) for a, b in zip(frames_a, frames_b, strict=True))
    assert all(np.array_equal(a, b) for a, b in zip(states_a, states_b, strict=True))
    assert not np.allclose(states_a[0], states_c[0])  # the puck and goal move with the seed
    assert not np.array_equal(frames_a[0], frames_c[0])


@pytest.mark.parametrize("task", ["push-v9", "push-v3,not-a-task", ""])
def test_bad_task_lists_valid_names(task: str) -> None:
    with pytest.raises(ValueError, match="unknown MetaWorld task") as err:
        make_env_config("dz_metaworld", task=task)
    assert "push-v3" in str(err.value) and "button-press-v3" in str(err.value) and "easy" in str(err.value)


def test_task_list_and_prefix_build_one_vector_env_per_task() -> None:
    cfg = make_env_config("dz_metaworld", task=f"metaworld-{TASK},push-v3", image_size=32)
    envs = cfg.create_envs(n_envs=1)
    try:
        assert list(envs) == [f"metaworld-{TASK}", "push-v3"]
        assert envs["push-v3"][0].call("task_description") == (TASK_DESCRIPTIONS["push-v3"],)
        assert envs[f"metaworld-{TASK}"][0].call("task") == (TASK,)
    finally:
        for group in envs.values():
            for vec in group.values():
                vec.close()


@pytest.fixture(scope="module")
def recorded(tmp_path_factory: pytest.TempPathFactory):
    root = tmp_path_factory.mktemp("mw") / "two_tasks"
    summary = record_metaworld([TASK, "push-v3"], n_episodes=2, root=root, seed=0, image_size=32,
                               episode_length=200, noise_std=0.1)
    return summary, LeRobotDataset("local/dz_metaworld", root=root)


def test_experts_succeed_and_dataset_reloads_offline_with_tasks(recorded) -> None:
    summary, ds = recorded
    assert summary.episodes == {TASK: 2, "push-v3": 2} and summary.failed == {TASK: 0, "push-v3": 0}
    assert summary.seeds == {TASK: (0, 1), "push-v3": (0, 1)}
    assert ds.num_episodes == 4 and ds.num_frames == summary.frames
    assert ds.meta.robot_type == "sawyer" and ds.fps == DzMetaworldEnv.metadata["render_fps"]
    assert set(ds.meta.tasks.index) == {TASK_DESCRIPTIONS[TASK], TASK_DESCRIPTIONS["push-v3"]}
    episodes = ds.meta.episodes
    for ep in range(4):
        start, end = episodes["dataset_from_index"][ep], episodes["dataset_to_index"][ep]
        first = ds[start]
        assert first["task"] == TASK_DESCRIPTIONS[TASK if ep < 2 else "push-v3"]
        assert first[OBS_IMAGE].shape == (3, 32, 32) and first[OBS_STATE].shape == (4,)
        assert first[ACTION].shape == (4,) and first[ACTION].abs().max() <= 1.0
        assert end - start < 200  # every kept episode ended by success
    # The stored first frame is what the env gives for that seed.
    env = DzMetaworldEnv(TASK, image_size=32)
    obs, _ = env.reset(seed=1)
    env.close()
    frame = ds[int(episodes["dataset_from_index"][1])]
    np.testing.assert_allclose(frame[OBS_STATE].numpy(), obs["agent_pos"], atol=1e-6)
    np.testing.assert_allclose(frame[OBS_IMAGE].numpy(), obs["pixels"].transpose(2, 0, 1) / 255.0, atol=1e-6)


def test_expert_failures_are_dropped_and_counted(recorded, tmp_path: Path) -> None:
    _, ds = recorded
    episodes = ds.meta.episodes
    lengths = [int(episodes["dataset_to_index"][i] - episodes["dataset_from_index"][i]) for i in range(2)]
    # Seed 0 needs lengths[0] steps, so one step fewer makes it fail; a later seed may still make it.
    limit = lengths[0] - 1
    summary = record_metaworld(TASK, n_episodes=1, root=tmp_path / "short", seed=0, image_size=32,
                               episode_length=limit, noise_std=0.1)
    (kept,) = summary.seeds[TASK]
    assert kept >= 1 and summary.failed == {TASK: kept}  # every attempt before the kept seed was dropped
    if lengths[1] <= limit:
        assert kept == 1
    short = LeRobotDataset("local/dz_metaworld", root=tmp_path / "short")
    assert short.num_episodes == 1 and short.num_frames == summary.frames <= limit


def test_hopeless_expert_config_raises(tmp_path: Path) -> None:
    with pytest.raises(RuntimeError, match="failed 12 of 12"):
        record_metaworld(TASK, n_episodes=1, root=tmp_path / "x", episode_length=1)


def test_record_cli_metaworld(tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    root = tmp_path / "cli"
    record_main(["--env=metaworld", f"--tasks={TASK}", "--episodes=1", f"--root={root}", "--image_size=24",
                 "--max_episode_steps=150", "--noise_std=0"])
    assert "failed attempts dropped per task: {'button-press-v3': 0}" in capsys.readouterr().out
    ds = LeRobotDataset("local/dz_metaworld", root=root)
    assert ds.num_episodes == 1 and ds[0][OBS_IMAGE].shape == (3, 24, 24)
    with pytest.raises(SystemExit, match="button-press-v3"):
        record_main(["--env=metaworld", "--tasks=press-the-button", "--episodes=1", f"--root={tmp_path / 'x'}"])
    with pytest.raises(SystemExit, match="needs --tasks"):
        record_main(["--env=metaworld", "--episodes=1", f"--root={tmp_path / 'y'}"])
    with pytest.raises(SystemExit, match="--tasks is for --env=metaworld"):
        record_main(["--env=reach", f"--tasks={TASK}", "--episodes=1", f"--root={tmp_path / 'z'}"])


def test_imagined_futures_are_paired_with_metaworld_frames() -> None:
    """The main job's imagination scoring on dz_metaworld (one `pixels` array, not named cameras): every plan
    keeps its decoded block, and each executed action adds the frame that really followed."""
    from lerobot.configs.types import FeatureType, PolicyFeature

    from dreamzero_policy.configuration_dreamzero import DreamZeroJaxConfig
    from dreamzero_policy.modeling_dreamzero import DreamZeroJaxPolicy
    from eval.imagination import run_episode, score

    cfg = DreamZeroJaxConfig(
        input_features={"observation.state": PolicyFeature(FeatureType.STATE, (4,)),
                        "observation.image": PolicyFeature(FeatureType.VISUAL, (3, 32, 32))},
        output_features={"action": PolicyFeature(FeatureType.ACTION, (4,))},
        view_height=32, view_width=32, num_inference_steps=2, cfg_scale=1.0, device="cpu")
    policy = DreamZeroJaxPolicy(cfg)
    plans = run_episode(policy, lambda: DzMetaworldEnv(TASK, episode_length=6, image_size=32), seed=0)
    assert [p.chunk for p in plans] == [1, 2]  # 6 steps = 1.5 chunks of the tiny preset's 4 actions; context kept
    assert plans[0].imagined.shape == (4 * 2, 32, 32, 3) and len(plans[0].real) == 4 and len(plans[1].real) == 2
    assert all(f.shape == (32, 32, 3) and f.min() >= -1 and f.max() <= 1 for p in plans for f in p.real)
    scored = score(plans)
    assert set(scored) == {"1", "2"} and all(np.isfinite(v["imagined_psnr_db"]) for v in scored.values())
