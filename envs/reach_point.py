"""Embodiment 1: a 2D point end-effector moved by bounded position deltas.

state  = (x, y) in the arena; action = (dx, dy) in [-1, 1]^2, scaled by MAX_STEP world units per step.
"""

from __future__ import annotations

import numpy as np

from dreamzero_envs.reach_base import ReachEnv
from dreamzero_envs.render import Canvas

MAX_STEP = 0.08
POSITION_LIMIT = 0.95
AGENT_RADIUS = 0.07
AGENT_COLOR = np.array([245, 245, 245], dtype=np.uint8)
EXPERT_GAIN = 0.8
SLOT_RADIUS = 0.6


class PointReachEnv(ReachEnv):
    state_names = ("x", "y")
    action_names = ("dx", "dy")
    robot_type = "dz_point2d"

    def __init__(self, **kwargs) -> None:
        self.position = np.zeros(2)
        super().__init__(**kwargs)

    def state_bounds(self) -> tuple[np.ndarray, np.ndarray]:
        bound = np.full(2, POSITION_LIMIT, dtype=np.float32)
        return -bound, bound

    def sample_targets(self, rng: np.random.Generator) -> np.ndarray:
        return self.sample_separated(rng, np.full(2, -0.8), np.full(2, 0.8))

    def target_slots(self) -> np.ndarray:
        # Evenly on a circle about the centre, the first one straight up.
        angles = np.pi / 2 + 2 * np.pi * np.arange(self.n_targets) / self.n_targets
        return SLOT_RADIUS * np.stack([np.cos(angles), np.sin(angles)], axis=1)

    def sample_start(self, rng: np.random.Generator) -> None:
        for _ in range(10_000):
            p = rng.uniform(-0.9, 0.9, size=2)
            if self.far_from_targets(p):
                self.position = p
                return
        raise RuntimeError("could not place the point away from the targets")

    def end_effector(self) -> np.ndarray:
        return self.position.copy()

    def get_state(self) -> np.ndarray:
        return self.position.astype(np.float32)

    def apply_action(self, action: np.ndarray) -> None:
        self.position = np.clip(self.position + MAX_STEP * action, -POSITION_LIMIT, POSITION_LIMIT)

    def draw_body(self, canvas: Canvas) -> None:
        canvas.disc(self.position, AGENT_RADIUS, AGENT_COLOR)

    def expert_action(self, noise: np.ndarray) -> np.ndarray:
        velocity = EXPERT_GAIN * (self.goal - self.position) / MAX_STEP
        norm = float(np.linalg.norm(velocity))
        if norm > 1.0:
            velocity /= norm
        return np.clip(velocity + noise, -1.0, 1.0).astype(np.float32)
