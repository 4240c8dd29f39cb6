"""``--robot.type=dz_sim``: a LeRobot ``Robot`` backed by one of our gymnasium sims, so LeRobot's
robot-side tools (``lerobot-record --policy.path``, ``lerobot-rollout``, the async robot client) can
drive the policy without hardware.

Features follow LeRobot's robot convention, which ``lerobot-rollout`` filters by suffix: one float per
state name ``<name>.pos`` (-> ``observation.state``), one (H, W, 3) uint8 image per camera, and one float
per action ``<name>.vel`` (the sims' actions are per-step displacements, i.e. velocity commands). The episode is
restarted when the sim reports success or its time limit (LeRobot's loops do not reset robots).
"""

from __future__ import annotations

from dataclasses import dataclass
from functools import cached_property
from typing import Any

import numpy as np
from lerobot.robots.config import RobotConfig
from lerobot.robots.robot import Robot

import dreamzero_envs as envs


@RobotConfig.register_subclass("dz_sim")
@dataclass
class DzSimRobotConfig(RobotConfig):
    env: str = "reach"  # short name in envs.ENV_SPECS
    image_size: int = 32
    sim_cameras: str = "top"  # not `cameras`: RobotConfig treats that as a dict of camera configs
    seed: int = 0


class DzSimRobot(Robot):
    config_class = DzSimRobotConfig
    name = "dz_sim"

    def __init__(self, config: DzSimRobotConfig) -> None:
        super().__init__(config)
        self.config = config
        self.env = envs.make(config.env, image_size=config.image_size, cameras=config.sim_cameras)
        self._obs: dict[str, Any] | None = None
        self._seed = config.seed
        self.episodes = 0

    @cached_property
    def _sim(self) -> Any:
        return self.env.unwrapped

    @property
    def cameras_list(self) -> list[str]:
        return [c.strip() for c in self.config.sim_cameras.split(",") if c.strip()]

    @property
    def state_keys(self) -> list[str]:
        return [f"{n}.pos" for n in self._sim.state_names]

    @property
    def action_keys(self) -> list[str]:
        return [f"{n.removeprefix('d')}.vel" for n in self._sim.action_names]

    @property
    def observation_features(self) -> dict:
        s = self.config.image_size
        return {**dict.fromkeys(self.state_keys, float), **{c: (s, s, 3) for c in self.cameras_list}}

    @property
    def action_features(self) -> dict:
        return dict.fromkeys(self.action_keys, float)

    @property
    def is_connected(self) -> bool:
        return self._obs is not None

    def connect(self, calibrate: bool = True) -> None:
        self._reset_episode()

    @property
    def is_calibrated(self) -> bool:
        return True

    def calibrate(self) -> None:
        return None

    def configure(self) -> None:
        return None

    @property
    def task(self) -> str:
        return self._sim.task_description

    def _reset_episode(self) -> None:
        self._obs, _ = self.env.reset(seed=self._seed)
        self._seed += 1
        self.episodes += 1

    def get_observation(self) -> dict[str, Any]:
        if self._obs is None:
            raise ConnectionError("dz_sim robot is not connected")
        state = self._obs["agent_pos"]
        out: dict[str, Any] = {n: float(state[i]) for i, n in enumerate(self.state_keys)}
        out.update({c: self._obs["pixels"][c].copy() for c in self.cameras_list})
        return out

    def send_action(self, action: dict[str, Any]) -> dict[str, Any]:
        if self._obs is None:
            raise ConnectionError("dz_sim robot is not connected")
        names = self.action_keys
        missing = [n for n in names if n not in action]
        if missing:
            raise ValueError(f"action lacks {missing}; expected {list(names)}")
        a = np.array([float(action[n]) for n in names], np.float32)
        if not np.isfinite(a).all():
            raise ValueError(f"non-finite action {a.tolist()} refused by the robot")
        self._obs, _, term, trunc, _ = self.env.step(a)
        if term or trunc:
            self._reset_episode()
        return {n: float(v) for n, v in zip(names, a, strict=True)}

    def disconnect(self) -> None:
        self._obs = None
