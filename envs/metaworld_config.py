"""LeRobot registration of MetaWorld: `--env.type=dz_metaworld --env.task=push-v3[,button-press-v3,...]`.

LeRobot's own `--env.type=metaworld` renders 480x480 whatever the policy wants, at ~165 ms/step, ignores
`episode_length` and defaults to a task name that does not exist; this config builds
`dreamzero_envs.metaworld_env.DzMetaworldEnv` (LeRobot's env with those fixed) in the same
{group: {task_id: VectorEnv}} layout, so `lerobot-eval` and `lerobot.envs.factory.make_env` use it as
they use LeRobot's. The `metaworld` package (our `metaworld` extra) is imported only when a config is built.

Env observation keys -> policy keys, as LeRobot's MetaWorld config maps them:
  pixels -> observation.image (H, W, 3), agent_pos -> observation.state (hand xyz + gripper), action (4).
"""

from __future__ import annotations

from dataclasses import dataclass, field

import gymnasium as gym
from lerobot.configs import FeatureType, PolicyFeature
from lerobot.envs.configs import EnvConfig
from lerobot.utils.constants import ACTION, OBS_IMAGE, OBS_STATE

OBS_TYPES = ("pixels", "pixels_agent_pos")


def _metaworld_env():
    """The env module, with a clear message when the optional extra is missing."""
    try:
        from dreamzero_envs import metaworld_env
    except ImportError as e:
        raise ImportError(
            f"--env.type=dz_metaworld needs the `metaworld` extra (uv sync --extra metaworld): {e}"
        ) from e
    return metaworld_env


@EnvConfig.register_subclass("dz_metaworld")
@dataclass
class DzMetaworldEnvConfig(EnvConfig):
    """`task`: comma list of MetaWorld v3 task names or difficulty groups (easy, medium, hard, very_hard)."""

    task: str | None = "push-v3"
    fps: int = 80  # MetaWorld's control rate (LeRobot's env metadata)
    episode_length: int = 500  # MetaWorld's max_path_length: success rates compare with the benchmark
    image_size: int = 64  # square render size, passed to the renderer
    shadow_size: int = 512  # the scene asks 4096: most of the render cost at small sizes
    multisamples: int = 0  # the scene asks 4x MSAA
    shadows: bool = False  # the light's shadow pass: ~3.5x the render time at 64 px for a faint shadow
    reflections: bool = False  # the floor's mirrored pass
    obs_type: str = "pixels_agent_pos"  # or "pixels"
    features: dict[str, PolicyFeature] = field(default_factory=dict)
    features_map: dict[str, str] = field(default_factory=dict)

    def __post_init__(self) -> None:
        if self.task is None:
            raise ValueError(f"--env.task is required; choose from {list(_metaworld_env().TASKS)}")
        _metaworld_env().parse_tasks(self.task)  # fail at parse time, listing the valid names
        if self.episode_length < 1:
            raise ValueError(f"episode_length must be >= 1, got {self.episode_length}")
        if self.image_size < 1:
            raise ValueError(f"image_size must be >= 1, got {self.image_size}")
        if self.obs_type not in OBS_TYPES:
            raise ValueError(f"obs_type must be one of {OBS_TYPES}, got {self.obs_type!r}")
        self.features[ACTION] = PolicyFeature(type=FeatureType.ACTION, shape=(4,))
        self.features["pixels/top"] = PolicyFeature(
            type=FeatureType.VISUAL, shape=(self.image_size, self.image_size, 3)
        )
        self.features_map[ACTION] = ACTION
        self.features_map["pixels/top"] = OBS_IMAGE
        if self.obs_type == "pixels_agent_pos":
            self.features["agent_pos"] = PolicyFeature(type=FeatureType.STATE, shape=(4,))
            self.features_map["agent_pos"] = OBS_STATE

    @property
    def package_name(self) -> str:
        return "dreamzero_envs"

    @property
    def gym_kwargs(self) -> dict:
        return {
            "episode_length": self.episode_length,
            "image_size": self.image_size,
            "shadow_size": self.shadow_size,
            "multisamples": self.multisamples,
            "shadows": self.shadows,
            "reflections": self.reflections,
            "obs_type": self.obs_type,
        }

    def create_envs(
        self, n_envs: int, use_async_envs: bool = False
    ) -> dict[str, dict[int, gym.vector.VectorEnv]]:
        return _metaworld_env().make_vector_envs(self.task, n_envs, self.gym_kwargs, use_async_envs)
