"""Gymnasium simulators for DreamZero experiments (numpy-rendered, CPU only) and their scripted experts.

Importing this package registers the gymnasium ids below; `dreamzero_envs.lerobot_config` registers the matching
LeRobot `EnvConfig`s (`--env.type=dz_reach`, `--env.type=dz_reach_arm`), and `--env.type=dz_metaworld`
(MetaWorld through LeRobot's env, `metaworld_env.py`; needs the `metaworld` extra).
"""

from __future__ import annotations

import gymnasium as gym

GYM_NAMESPACE = "dreamzero"
# short name -> (gymnasium id, entry point, default episode length)
ENV_SPECS: dict[str, tuple[str, str, int]] = {
    "reach": (f"{GYM_NAMESPACE}/PointReach-v0", f"{__name__}.reach_point:PointReachEnv", 60),
    "reach_arm": (f"{GYM_NAMESPACE}/ArmReach-v0", f"{__name__}.reach_arm:ArmReachEnv", 80),
}

for _gym_id, _entry_point, _steps in ENV_SPECS.values():
    if _gym_id not in gym.registry:
        gym.register(id=_gym_id, entry_point=_entry_point, max_episode_steps=_steps)


def make(name: str, **kwargs) -> gym.Env:
    """`gym.make` by short name ('reach' or 'reach_arm'); kwargs go to the env (and `max_episode_steps`)."""
    if name not in ENV_SPECS:
        raise ValueError(f"unknown env {name!r}; choose from {sorted(ENV_SPECS)}")
    return gym.make(ENV_SPECS[name][0], disable_env_checker=True, **kwargs)
