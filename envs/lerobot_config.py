"""LeRobot registration of the reach sims: `--env.type=dz_reach` (2D point) and `dz_reach_arm` (3-link arm),
and (from `dreamzero_envs.metaworld_config`) `dz_metaworld`.

Importing this module registers both `EnvConfig` choices with draccus (LeRobot 0.6 resolves `--env.type`
through `EnvConfig.get_choice_class`) and, through `import dreamzero_envs`, the gymnasium ids they build. LeRobot's
default `EnvConfig.create_envs` then does `gym.make(cfg.gym_id, **cfg.gym_kwargs)` per sub-env, so no
override is needed; `package_name` points at `dreamzero_envs` so that a process that only unpickled the config
(AsyncVectorEnv workers) can still find the ids.

Env observation keys -> policy keys (via `features_map`, as gym-aloha does):
  agent_pos -> observation.state, pixels/<cam> -> observation.images.<cam>, action -> action.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import ClassVar

from lerobot.configs import FeatureType, PolicyFeature
from lerobot.envs.configs import EnvConfig
from lerobot.utils.constants import ACTION, OBS_IMAGES, OBS_STATE

import dreamzero_envs as envs
import dreamzero_envs.metaworld_config  # noqa: F401  (registers --env.type=dz_metaworld)
from dreamzero_envs.reach_arm import ArmReachEnv
from dreamzero_envs.reach_base import ReachEnv, parse_cameras
from dreamzero_envs.reach_point import PointReachEnv


@dataclass
class _DzReachBase(EnvConfig):
    """Fields shared by both embodiments; `cameras` is a comma-separated subset of 'top,wrist'."""

    fps: int = 10
    episode_length: int = 60
    image_size: int = 64
    cameras: str = "top"
    n_targets: int = 3
    success_radius: float = 0.1
    render_size: int = 128
    layout: str = "fixed"  # dreamzero_envs.reach_base.LAYOUTS: "fixed", "slots" (shuffled colours) or "random"
    features: dict[str, PolicyFeature] = field(default_factory=dict)
    features_map: dict[str, str] = field(default_factory=dict)

    # Class attributes, not CLI fields: the gymnasium env class built and its `envs.ENV_SPECS` name.
    env_cls: ClassVar[type[ReachEnv]] = ReachEnv
    short_name: ClassVar[str] = ""

    def __post_init__(self) -> None:
        if self.episode_length < 1:
            raise ValueError(f"episode_length must be >= 1, got {self.episode_length}")
        if self.fps != self.env_cls.metadata["render_fps"]:
            raise ValueError(f"{self.type} runs at {self.env_cls.metadata['render_fps']} fps, got {self.fps}")
        cams = parse_cameras(self.cameras)
        size = (self.image_size, self.image_size, 3)
        self.features[ACTION] = PolicyFeature(
            type=FeatureType.ACTION, shape=(len(self.env_cls.action_names),)
        )
        self.features["agent_pos"] = PolicyFeature(
            type=FeatureType.STATE, shape=(len(self.env_cls.state_names),)
        )
        self.features_map[ACTION] = ACTION
        self.features_map["agent_pos"] = OBS_STATE
        for cam in cams:
            self.features[f"pixels/{cam}"] = PolicyFeature(type=FeatureType.VISUAL, shape=size)
            self.features_map[f"pixels/{cam}"] = f"{OBS_IMAGES}.{cam}"

    @property
    def package_name(self) -> str:
        return "dreamzero_envs"

    @property
    def gym_id(self) -> str:
        return envs.ENV_SPECS[self.short_name][0]

    @property
    def gym_kwargs(self) -> dict:
        return {
            "max_episode_steps": self.episode_length,
            "image_size": self.image_size,
            "cameras": self.cameras,
            "n_targets": self.n_targets,
            "success_radius": self.success_radius,
            "render_size": self.render_size,
            "layout": self.layout,
        }


@EnvConfig.register_subclass("dz_reach")
@dataclass
class DzReachEnv(_DzReachBase):
    """2D point end-effector; state (x, y), action (dx, dy)."""

    task: str | None = "PointReach-v0"
    episode_length: int = envs.ENV_SPECS["reach"][2]
    env_cls: ClassVar[type[ReachEnv]] = PointReachEnv
    short_name: ClassVar[str] = "reach"


@EnvConfig.register_subclass("dz_reach_arm")
@dataclass
class DzReachArmEnv(_DzReachBase):
    """Planar 3-link arm; state (q0, q1, q2), action (dq0, dq1, dq2)."""

    task: str | None = "ArmReach-v0"
    episode_length: int = envs.ENV_SPECS["reach_arm"][2]
    env_cls: ClassVar[type[ReachEnv]] = ArmReachEnv
    short_name: ClassVar[str] = "reach_arm"
