"""Record MetaWorld's scripted experts (`metaworld.policies`) as a local LeRobotDataset (v3).

    python -m dreamzero_envs.record --env=metaworld --tasks=button-press-v3,drawer-open-v3 --episodes=20 \
        --root=data/dz_metaworld --image_size=64

Each episode runs `DzMetaworldEnv` (LeRobot's MetaWorld env, so the frames and state are exactly what
`lerobot-eval --env.type=dz_metaworld` gives a policy) with the expert acting on the full 39-d MetaWorld
state. Features: `observation.image` (H, W, 3) uint8 stored as `dtype: image` (no video codec needed),
`observation.state` (hand xyz + gripper), `action` (4, float32), and the task's sentence as `task`.
Per task, attempt k uses env seed `seed + k`; an episode that has not succeeded within
`episode_length` steps is dropped and counted, so every stored episode succeeds.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from lerobot.datasets.lerobot_dataset import LeRobotDataset
from lerobot.utils.constants import ACTION, OBS_IMAGE, OBS_STATE

from dreamzero_envs.metaworld_env import (
    ACTION_NAMES,
    MAX_PATH_LENGTH,
    STATE_NAMES,
    DzMetaworldEnv,
    parse_tasks,
)


@dataclass(frozen=True)
class MetaworldRecordSummary:
    root: Path
    repo_id: str
    episodes: dict[str, int]  # task -> episodes kept
    failed: dict[str, int]  # task -> expert failures dropped
    frames: int
    seeds: dict[str, tuple[int, ...]]  # task -> env seeds of the kept episodes


def dataset_features(image_size: int, actions: bool = True) -> dict[str, dict]:
    """LeRobotDataset feature spec, keyed as `lerobot-eval` names the env's observations (``actions=False``:
    no `action` feature, for video-only episodes)."""
    features = {
        OBS_IMAGE: {
            "dtype": "image",
            "shape": (image_size, image_size, 3),
            "names": ["height", "width", "channel"],
        },
        OBS_STATE: {"dtype": "float32", "shape": (len(STATE_NAMES),), "names": list(STATE_NAMES)},
        ACTION: {"dtype": "float32", "shape": (len(ACTION_NAMES),), "names": list(ACTION_NAMES)},
    }
    if not actions:
        del features[ACTION]
    return features


def _run_episode(
    env: DzMetaworldEnv, dataset: LeRobotDataset, seed: int, noise_std: float, actions: bool = True
) -> tuple[bool, int]:
    """Add one expert episode's frames to the dataset buffer; returns (succeeded, frames)."""
    rng = np.random.default_rng(seed)
    obs, info = env.reset(seed=seed)
    n_frames = 0
    terminated = truncated = False
    while not (terminated or truncated):
        action = env.expert_action()
        if noise_std > 0:
            action = np.clip(action + noise_std * rng.standard_normal(action.shape), -1.0, 1.0)
        frame = {OBS_IMAGE: obs["pixels"], OBS_STATE: obs["agent_pos"].astype(np.float32), "task": env.task_description}
        if actions:
            frame[ACTION] = action.astype(np.float32)
        dataset.add_frame(frame)
        n_frames += 1
        # On success LeRobot's env ends the episode (terminated) and resets itself.
        obs, _, terminated, truncated, info = env.step(action)
    return bool(info["is_success"]), n_frames


def _record_task(
    env: DzMetaworldEnv,
    dataset: LeRobotDataset,
    n_episodes: int,
    seed: int,
    noise_std: float,
    actions: bool = True,
) -> tuple[list[int], int, int]:
    """Record `n_episodes` successful episodes of `env`'s task; returns (their seeds, their frames,
    failed attempts)."""
    kept: list[int] = []
    frames = failed = attempt = 0
    while len(kept) < n_episodes:
        # Bounded retries: the experts solve most seeds, so this only stops a hopeless config.
        if attempt >= 2 * n_episodes + 10:
            raise RuntimeError(
                f"the {env.task} expert failed {failed} of {attempt} episodes within "
                f"{env.episode_length} steps; raise episode_length or lower noise_std"
            )
        episode_seed = seed + attempt
        attempt += 1
        success, n_frames = _run_episode(env, dataset, episode_seed, noise_std, actions)
        if success:
            dataset.save_episode()
            kept.append(episode_seed)
            frames += n_frames
        else:
            dataset.clear_episode_buffer()
            failed += 1
    return kept, frames, failed


def record_metaworld(
    tasks: str | Sequence[str],
    n_episodes: int,
    root: str | Path,
    seed: int = 0,
    repo_id: str | None = None,
    image_size: int = 64,
    episode_length: int = MAX_PATH_LENGTH,
    noise_std: float = 0.1,
    actions: bool = True,
) -> MetaworldRecordSummary:
    """Record `n_episodes` successful expert episodes of each task (comma list or sequence of task names
    or difficulty groups) under `root`, which must not exist yet. Deterministic given the arguments.
    ``actions=False`` drops the experts' actions (video-only episodes)."""
    groups = parse_tasks(tasks if isinstance(tasks, str) else ",".join(tasks))
    # A task named twice (e.g. also inside a difficulty group) is recorded once.
    names = list(dict.fromkeys(name for group in groups.values() for name in group))
    if n_episodes < 1:
        raise ValueError(f"n_episodes must be >= 1, got {n_episodes}")
    if noise_std < 0:
        raise ValueError(f"noise_std must be >= 0, got {noise_std}")
    root = Path(root)
    if root.exists():
        raise ValueError(f"dataset root {root} already exists; choose a new directory")
    repo_id = repo_id or "local/dz_metaworld"
    dataset = LeRobotDataset.create(
        repo_id=repo_id,
        fps=DzMetaworldEnv.metadata["render_fps"],
        features=dataset_features(image_size, actions),
        root=root,
        robot_type="sawyer",
        use_videos=False,
    )
    kept: dict[str, list[int]] = {}
    failed: dict[str, int] = {}
    frames = 0
    try:
        for name in names:
            env = DzMetaworldEnv(name, episode_length=episode_length, image_size=image_size)
            try:
                kept[name], task_frames, failed[name] = _record_task(env, dataset, n_episodes, seed, noise_std, actions)
            finally:
                env.close()
            frames += task_frames
    finally:
        dataset.finalize()
    return MetaworldRecordSummary(
        root,
        repo_id,
        {k: len(v) for k, v in kept.items()},
        failed,
        frames,
        {k: tuple(v) for k, v in kept.items()},
    )
