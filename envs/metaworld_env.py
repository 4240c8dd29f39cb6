"""MetaWorld (v3, Sawyer arm) through LeRobot's own gym env, made usable for small-image policies.

LeRobot 0.6.1's `lerobot.envs.metaworld.MetaworldEnv` wraps one MetaWorld MT1 task (`pixels` from the
flipped `corner2` camera, `agent_pos` = hand xyz + gripper, `task_description`, `info["is_success"]`,
`reset(seed=)` places the objects from that seed). `DzMetaworldEnv` keeps all of that and changes three
things it gets wrong for us:
  - the renderer is built at 480x480 whatever `observation_width/height` say: we size it to the request;
  - rendering uses the scene's 4096-texel shadow maps, a reflective floor and 4x MSAA (~165 ms/step):
    by default the light casts no shadow and no material reflects (~6 ms/step at 64 px; ~21 ms with
    `shadows=True, reflections=True` at `shadow_size` 512; physics is ~0.15 ms), and multisampling is
    `multisamples` (0). At 64 px the pictures differ only by the faint shadow under the gripper;
  - episodes always run MetaWorld's 500 steps: `episode_length` sets both `_max_episode_steps` (what
    `lerobot-eval` reads) and the MetaWorld env's `max_path_length` (where it truncates).
It also keeps the last raw 39-d MetaWorld observation, which the scripted experts (`metaworld.policies`)
need, and offers `expert_action()`.

Importing this module imports `metaworld` (the `metaworld` extra).
"""

from __future__ import annotations

import warnings
from collections.abc import Callable

import gymnasium as gym
import numpy as np
from lerobot.envs.metaworld import DIFFICULTY_TO_TASKS, TASK_DESCRIPTIONS, TASK_POLICY_MAPPING, MetaworldEnv
from lerobot.envs.utils import _LazyAsyncVectorEnv

MAX_PATH_LENGTH = 500  # MetaWorld's own (and the benchmark's) episode length
STATE_NAMES = ("hand_x", "hand_y", "hand_z", "gripper")
ACTION_NAMES = ("dx", "dy", "dz", "grip")
# Tasks LeRobot's env can build: it needs both a description and an expert for the name.
TASKS: tuple[str, ...] = tuple(sorted(set(TASK_DESCRIPTIONS) & set(TASK_POLICY_MAPPING)))


def parse_tasks(task: str) -> dict[str, list[str]]:
    """`--env.task` -> {group: [task, ...]}: a comma list of task names (a `metaworld-` prefix is
    allowed) or difficulty groups (`easy`, `medium`, `hard`, `very_hard`, as in LeRobot). Raises
    ValueError listing the valid names for anything else."""
    groups: dict[str, list[str]] = {}
    bad: list[str] = []
    for item in (t.strip() for t in task.split(",")):
        if not item:
            continue
        if item in DIFFICULTY_TO_TASKS:
            groups[item] = list(DIFFICULTY_TO_TASKS[item])
        elif item.removeprefix("metaworld-") in TASKS:
            groups[item] = [item.removeprefix("metaworld-")]
        else:
            bad.append(item)
    if bad or not groups:
        raise ValueError(
            f"unknown MetaWorld task(s) {bad or [task]}; give a comma list of task names "
            f"{list(TASKS)} or difficulty groups {list(DIFFICULTY_TO_TASKS)}"
        )
    return groups


class DzMetaworldEnv(MetaworldEnv):
    """LeRobot's MetaWorld env with the requested image size, cheap rendering and `episode_length`."""

    def __init__(
        self,
        task: str,
        episode_length: int = MAX_PATH_LENGTH,
        image_size: int = 64,
        shadow_size: int = 512,
        multisamples: int = 0,
        shadows: bool = False,
        reflections: bool = False,
        obs_type: str = "pixels_agent_pos",
        camera_name: str = "corner2",
    ) -> None:
        tasks = [name for group in parse_tasks(task).values() for name in group]  # raises on a bad name
        if len(tasks) != 1:
            raise ValueError(f"DzMetaworldEnv builds one task, got {task!r} = {tasks}")
        if episode_length < 1:
            raise ValueError(f"episode_length must be >= 1, got {episode_length}")
        if image_size < 1:
            raise ValueError(f"image_size must be >= 1, got {image_size}")
        super().__init__(
            task=tasks[0],
            camera_name=camera_name,
            obs_type=obs_type,
            observation_width=image_size,
            observation_height=image_size,
        )
        self.episode_length = episode_length
        self._max_episode_steps = episode_length  # LeRobot hard-codes 500; lerobot-eval reads this
        self.shadow_size = shadow_size
        self.multisamples = multisamples
        self.shadows, self.reflections = shadows, reflections
        self.raw_obs: np.ndarray | None = None  # last full 39-d MetaWorld observation

    def _ensure_env(self) -> None:
        fresh = self._env is None
        super()._ensure_env()
        if not fresh:
            return
        env = self._env
        # The renderer (and its GL context) is created lazily on the first render, which has not
        # happened yet: size and quality set here are the ones it is built with.
        env.width, env.height = self.observation_width, self.observation_height
        env.mujoco_renderer.width, env.mujoco_renderer.height = self.observation_width, self.observation_height
        env.model.vis.quality.shadowsize = self.shadow_size
        env.model.vis.quality.offsamples = self.multisamples
        # Model-level switches, so they hold for whichever renderer is built later: a shadow pass per light
        # and a mirrored scene per reflective surface are most of the render cost at small sizes.
        if not self.shadows:
            env.model.light_castshadow[:] = 0
        if not self.reflections:
            env.model.mat_reflectance[:] = 0
        # MetaWorld truncates (and refuses further steps) at max_path_length, a class attribute.
        env.max_path_length = self._max_episode_steps

    def _format_raw_obs(self, raw_obs: np.ndarray):
        self.raw_obs = np.array(raw_obs, dtype=np.float64)
        return super()._format_raw_obs(raw_obs)

    def expert_action(self) -> np.ndarray:
        """MetaWorld's scripted expert for this task, acting on the last observation's full state."""
        if self.raw_obs is None:
            raise RuntimeError("call reset() before expert_action()")
        with warnings.catch_warnings():  # "Constant(s) may be too high": it asks us to clip, as we do
            warnings.simplefilter("ignore", UserWarning)
            action = self.expert_policy.get_action(self.raw_obs)
        return np.clip(action, -1.0, 1.0).astype(np.float32)


def make_vector_envs(
    task: str, n_envs: int, env_kwargs: dict, use_async_envs: bool = False
) -> dict[str, dict[int, gym.vector.VectorEnv]]:
    """{group: {task_id: VectorEnv of n_envs DzMetaworldEnv}}, the shape LeRobot's
    `create_metaworld_envs` returns (one entry per comma item of `task`)."""
    if n_envs < 1:
        raise ValueError(f"n_envs must be >= 1, got {n_envs}")
    out: dict[str, dict[int, gym.vector.VectorEnv]] = {}
    for group, tasks in parse_tasks(task).items():
        out[group] = {}
        for task_id, name in enumerate(tasks):
            fns: list[Callable[[], DzMetaworldEnv]] = [
                lambda name=name: DzMetaworldEnv(task=name, **env_kwargs) for _ in range(n_envs)
            ]
            if use_async_envs and n_envs > 1:
                # As LeRobot does: workers (and their GL contexts) start only when the task is evaluated.
                out[group][task_id] = _LazyAsyncVectorEnv(fns)
            else:
                out[group][task_id] = gym.vector.SyncVectorEnv(fns)
    return out
