"""Reach simulators: determinism, language conditioning, experts, spaces, and the LeRobot env path."""

from __future__ import annotations

from dataclasses import dataclass

import draccus
import gymnasium as gym
import numpy as np
import pytest
import torch
from gymnasium.utils.env_checker import check_env
from lerobot.envs.configs import EnvConfig
from lerobot.envs.factory import make_env, make_env_config
from lerobot.envs.utils import env_to_policy_features, preprocess_observation
from lerobot.processor import (
    PolicyProcessorPipeline,
    policy_action_to_transition,
    transition_to_policy_action,
)
from lerobot.scripts.lerobot_eval import rollout

import dreamzero_envs as envs
import dreamzero_envs.lerobot_config as lerobot_config
from dreamzero_envs.experts import ScriptedExpert

EMBODIMENTS = {"reach": (2, 2), "reach_arm": (3, 3)}  # name -> (state_dim, action_dim)


def run_expert(env: gym.Env, seed: int, options: dict | None = None) -> tuple[list[np.ndarray], dict, int]:
    """Roll the expert to the end of the episode; returns (actions, last info, steps)."""
    expert = ScriptedExpert(env, noise_std=0.1, seed=seed)
    env.reset(seed=seed, options=options)
    actions: list[np.ndarray] = []
    while True:
        actions.append(expert())
        _, _, terminated, truncated, info = env.step(actions[-1])
        if terminated or truncated:
            return actions, info, len(actions)


def assert_obs_equal(a: dict, b: dict) -> None:
    np.testing.assert_array_equal(a["agent_pos"], b["agent_pos"])
    assert a["pixels"].keys() == b["pixels"].keys()
    for cam in a["pixels"]:
        np.testing.assert_array_equal(a["pixels"][cam], b["pixels"][cam])


@pytest.mark.parametrize("name", sorted(EMBODIMENTS))
def test_seeded_reset_and_steps_are_deterministic(name: str) -> None:
    env_a, env_b = envs.make(name, cameras="top,wrist"), envs.make(name, cameras="top,wrist")
    obs_a, _ = env_a.reset(seed=7)
    obs_b, _ = env_b.reset(seed=7)
    assert_obs_equal(obs_a, obs_b)
    assert env_a.unwrapped.task_description == env_b.unwrapped.task_description
    rng = np.random.default_rng(0)
    for _ in range(5):
        action = rng.uniform(-1, 1, env_a.action_space.shape).astype(np.float32)
        step_a, step_b = env_a.step(action), env_b.step(action)
        assert_obs_equal(step_a[0], step_b[0])
        assert step_a[1:4] == step_b[1:4]
    # Re-seeding the same env reproduces the first observation; another seed draws another scene.
    again, _ = env_a.reset(seed=7)
    assert_obs_equal(obs_a, again)
    other, _ = env_a.reset(seed=8)
    assert not np.array_equal(other["pixels"]["top"], obs_a["pixels"]["top"])


@pytest.mark.parametrize("name", sorted(EMBODIMENTS))
def test_instruction_decides_the_goal(name: str) -> None:
    env = envs.make(name)
    colors = env.unwrapped.target_colors
    obs_red, _ = env.reset(seed=3, options={"target": colors[0]})
    task_red, goal_red = env.unwrapped.task_description, env.unwrapped.goal.copy()
    obs_green, _ = env.reset(seed=3, options={"target": colors[1]})
    task_green, goal_green = env.unwrapped.task_description, env.unwrapped.goal.copy()
    # Same scene and start, different words, different goal.
    assert_obs_equal(obs_red, obs_green)
    assert task_red == f"move to the {colors[0]} target" and task_green == f"move to the {colors[1]} target"
    assert np.linalg.norm(goal_red - goal_green) > 0.4

    # Replaying the actions that solve "red" under the "green" instruction reaches red, which is no success.
    actions, info, _ = run_expert(env, seed=3, options={"target": colors[0]})
    assert info["is_success"]
    env.reset(seed=3, options={"target": colors[1]})
    for action in actions:
        _, reward, terminated, _, info = env.step(action)
        assert not terminated and reward == 0.0
    assert not info["is_success"]
    assert np.linalg.norm(env.unwrapped.end_effector() - goal_red) <= env.unwrapped.success_radius

    with pytest.raises(ValueError, match="options\\['target'\\]"):
        env.reset(seed=3, options={"target": "purple"})


@pytest.mark.parametrize("name", sorted(EMBODIMENTS))
def test_layouts(name: str) -> None:
    from dreamzero_envs.reach_base import SLOT_JITTER

    def scenes(layout: str) -> list[np.ndarray]:
        env = envs.make(name, layout=layout)
        out = []
        for seed in range(12):
            env.reset(seed=seed)
            out.append(env.unwrapped.targets.copy())
        return out

    slots = envs.make(name).unwrapped.target_slots()
    for t in scenes("fixed"):  # each colour near its own slot
        assert np.abs(t - slots).max() <= SLOT_JITTER
    orders = set()
    for t in scenes("slots"):  # the same slots, colours shuffled
        order = np.argmin(np.linalg.norm(t[:, None] - slots[None], axis=-1), axis=1)
        assert sorted(order) == list(range(len(slots))) and np.abs(t - slots[order]).max() <= SLOT_JITTER
        orders.add(tuple(order))
    assert len(orders) > 1
    assert any(np.abs(t - slots).max() > 0.2 for t in scenes("random"))
    with pytest.raises(ValueError, match="layout"):
        envs.make(name, layout="grid")


@pytest.mark.parametrize("name", sorted(EMBODIMENTS))
def test_expert_success_rate(name: str) -> None:
    env = envs.make(name)  # with the registered TimeLimit
    limit = env.spec.max_episode_steps
    results = [run_expert(env, seed=100 + s) for s in range(20)]
    successes = sum(bool(info["is_success"]) for _, info, _ in results)
    assert successes >= 19, f"{name}: expert succeeded on {successes}/20"
    assert all(steps <= limit for _, _, steps in results)


@pytest.mark.parametrize("name", sorted(EMBODIMENTS))
def test_observation_spaces_shapes_and_dtypes(name: str) -> None:
    state_dim, action_dim = EMBODIMENTS[name]
    env = envs.make(name, cameras="top,wrist", image_size=32)
    obs, info = env.reset(seed=0)
    assert set(obs) == {"agent_pos", "pixels"} and set(obs["pixels"]) == {"top", "wrist"}
    assert obs["agent_pos"].shape == (state_dim,) and obs["agent_pos"].dtype == np.float32
    for img in obs["pixels"].values():
        assert img.shape == (32, 32, 3) and img.dtype == np.uint8
    assert env.action_space.shape == (action_dim,) and env.action_space.dtype == np.float32
    assert env.observation_space.contains(obs)
    assert info["is_success"] is False
    assert env.render().shape == (128, 128, 3)
    # Gymnasium's own API checks (spaces, seeding determinism, render).
    check_env(env.unwrapped)


@pytest.mark.parametrize("name", sorted(EMBODIMENTS))
def test_invalid_actions_raise_clear_errors(name: str) -> None:
    _, action_dim = EMBODIMENTS[name]
    env = envs.make(name)
    env.reset(seed=0)
    with pytest.raises(ValueError, match=rf"expects an action of shape \({action_dim},\)"):
        env.step(np.zeros(action_dim + 1, dtype=np.float32))
    with pytest.raises(ValueError, match="expects an action of shape"):
        env.step(np.zeros((1, action_dim), dtype=np.float32))
    with pytest.raises(ValueError, match="finite"):
        env.step(np.full(action_dim, np.nan, dtype=np.float32))
    with pytest.raises(ValueError, match="unknown env"):
        envs.make("pusht")
    with pytest.raises(ValueError, match="cameras"):
        envs.make(name, cameras="top,side")


def test_lerobot_cli_resolves_the_env_types() -> None:
    @dataclass
    class Cli:
        env: EnvConfig

    cli = draccus.parse(
        Cli, args=["--env.type=dz_reach_arm", "--env.cameras=top,wrist", "--env.image_size=32"]
    )
    assert isinstance(cli.env, lerobot_config.DzReachArmEnv)
    assert isinstance(make_env_config("dz_reach"), lerobot_config.DzReachEnv)
    assert env_to_policy_features(cli.env) == {
        "action": lerobot_config.PolicyFeature(type=lerobot_config.FeatureType.ACTION, shape=(3,)),
        "observation.state": lerobot_config.PolicyFeature(type=lerobot_config.FeatureType.STATE, shape=(3,)),
        "observation.images.top": lerobot_config.PolicyFeature(
            type=lerobot_config.FeatureType.VISUAL, shape=(3, 32, 32)
        ),
        "observation.images.wrist": lerobot_config.PolicyFeature(
            type=lerobot_config.FeatureType.VISUAL, shape=(3, 32, 32)
        ),
    }
    # The config round-trips through draccus (as saved train configs do).
    encoded = draccus.encode(cli.env)
    assert encoded["cameras"] == "top,wrist" and "env_cls" not in encoded


class ExpertPolicy(torch.nn.Module):
    """Drives each sub-env of a SyncVectorEnv with its scripted expert, the way a policy is called by
    `lerobot_eval.rollout`; it also records the `task` strings the rollout hands over."""

    def __init__(self, vec_env: gym.vector.SyncVectorEnv) -> None:
        super().__init__()
        self.experts = [ScriptedExpert(e, noise_std=0.05, seed=i) for i, e in enumerate(vec_env.envs)]
        self.vec_env = vec_env
        self.tasks_seen: list[list[str]] = []

    def reset(self) -> None:
        self.tasks_seen.clear()

    def select_action(self, observation: dict) -> torch.Tensor:
        expected = [e.unwrapped.task_description for e in self.vec_env.envs]
        assert observation["task"] == expected
        self.tasks_seen.append(list(observation["task"]))
        return torch.from_numpy(np.stack([expert() for expert in self.experts]))


@pytest.mark.parametrize("env_type", ["dz_reach", "dz_reach_arm"])
def test_make_env_builds_a_vector_env_that_lerobot_eval_can_roll_out(env_type: str) -> None:
    cfg = make_env_config(env_type, image_size=32, cameras="top,wrist")
    suites = make_env(cfg, n_envs=2)
    vec = suites[env_type][0]
    try:
        state_dim, action_dim = EMBODIMENTS["reach" if env_type == "dz_reach" else "reach_arm"]
        obs, _ = vec.reset(seed=[0, 1])
        batch = preprocess_observation(obs)
        assert batch["observation.images.top"].shape == (2, 3, 32, 32)
        assert batch["observation.images.wrist"].dtype == torch.float32
        assert float(batch["observation.images.top"].max()) <= 1.0
        assert batch["observation.state"].shape == (2, state_dim)
        assert all(t.startswith("move to the ") for t in vec.call("task_description"))
        assert vec.call("_max_episode_steps") == (cfg.episode_length, cfg.episode_length)
        obs, reward, terminated, truncated, info = vec.step(np.zeros((2, action_dim), np.float32))
        assert reward.shape == (2,) and terminated.shape == (2,)

        # The same rollout lerobot-eval runs: obs preprocessing, task strings, final_info success.
        policy = ExpertPolicy(vec)
        identity = PolicyProcessorPipeline(steps=[])
        action_identity = PolicyProcessorPipeline(
            steps=[], to_transition=policy_action_to_transition, to_output=transition_to_policy_action
        )
        data = rollout(vec, policy, identity, identity, identity, action_identity, seeds=[5, 6])
        assert data["action"].shape[0] == 2 and data["action"].shape[2] == action_dim
        assert data["success"].any(dim=1).all(), "both expert sub-envs should report is_success"
        assert policy.tasks_seen
    finally:
        vec.close()
