"""Embodiment 2: a planar 3-link arm mounted at the bottom edge of the table, joint-delta control.

state  = joint angles (q0, q1, q2): q0 is the absolute angle of the first link, q1 and q2 are relative;
action = joint deltas in [-1, 1]^3, scaled by MAX_JOINT_STEP radians per step; the end-effector is the
tip of the last link. Same scene, instruction and success rule as the point embodiment, with a different
state/action dimension, for the fine-tuning path.
"""

from __future__ import annotations

import numpy as np

from dreamzero_envs.reach_base import ReachEnv
from dreamzero_envs.render import ARENA_HALF, Canvas

BASE = np.array([0.0, -0.9])
LINKS = np.array([0.7, 0.55, 0.4])
JOINT_LOW = np.array([-0.6, -2.6, -2.6])
JOINT_HIGH = np.array([np.pi + 0.6, 2.6, 2.6])
MAX_JOINT_STEP = 0.12
# The expert moves the tip at most this far per step (in world units) along the straight line to the goal.
MAX_TIP_STEP = 0.08
EXPERT_GAIN = 0.8
DAMPING = 0.05
SLOT_RADIUS = 1.1  # from the base, inside the reachable annulus used by the "random" layout
SLOT_ANGLES = (np.deg2rad(35.0), np.deg2rad(145.0))
LINK_COLOR = np.array([165, 165, 170], dtype=np.uint8)
JOINT_COLOR = np.array([110, 110, 120], dtype=np.uint8)
TIP_COLOR = np.array([245, 245, 245], dtype=np.uint8)


def joint_positions(q: np.ndarray) -> np.ndarray:
    """(4, 2) base, elbow, wrist and tip positions for joint angles q (3,)."""
    angles = np.cumsum(q)
    steps = LINKS[:, None] * np.stack([np.cos(angles), np.sin(angles)], axis=1)
    return np.concatenate([BASE[None], BASE + np.cumsum(steps, axis=0)])


def tip_jacobian(q: np.ndarray) -> np.ndarray:
    """(2, 3) d tip / d q: joint i rotates every link from i on."""
    angles = np.cumsum(q)
    link_vecs = LINKS[:, None] * np.stack([-np.sin(angles), np.cos(angles)], axis=1)  # (3, 2)
    return np.cumsum(link_vecs[::-1], axis=0)[::-1].T


class ArmReachEnv(ReachEnv):
    state_names = ("q0", "q1", "q2")
    action_names = ("dq0", "dq1", "dq2")
    robot_type = "dz_arm3"

    def __init__(self, **kwargs) -> None:
        self.q = np.array([np.pi / 2, 0.0, 0.0])
        super().__init__(**kwargs)

    def state_bounds(self) -> tuple[np.ndarray, np.ndarray]:
        return JOINT_LOW.astype(np.float32), JOINT_HIGH.astype(np.float32)

    def sample_targets(self, rng: np.random.Generator) -> np.ndarray:
        reach = float(LINKS.sum())

        def reachable(p: np.ndarray) -> bool:
            return 0.75 <= float(np.linalg.norm(p - BASE)) <= reach - 0.2

        return self.sample_separated(rng, np.array([-0.8, -0.3]), np.array([0.8, 0.8]), reachable)

    def target_slots(self) -> np.ndarray:
        angles = np.linspace(*SLOT_ANGLES, self.n_targets)
        return BASE + SLOT_RADIUS * np.stack([np.cos(angles), np.sin(angles)], axis=1)

    def sample_start(self, rng: np.random.Generator) -> None:
        for _ in range(10_000):
            q = rng.uniform([np.pi / 2 - 0.7, -1.5, -1.5], [np.pi / 2 + 0.7, 1.5, 1.5])
            tip = joint_positions(q)[-1]
            if np.all(np.abs(tip) <= 0.95 * ARENA_HALF) and self.far_from_targets(tip):
                self.q = q
                return
        raise RuntimeError("could not place the arm away from the targets")

    def end_effector(self) -> np.ndarray:
        return joint_positions(self.q)[-1]

    def get_state(self) -> np.ndarray:
        return self.q.astype(np.float32)

    def apply_action(self, action: np.ndarray) -> None:
        self.q = np.clip(self.q + MAX_JOINT_STEP * action, JOINT_LOW, JOINT_HIGH)

    def draw_body(self, canvas: Canvas) -> None:
        points = joint_positions(self.q)
        for start, end in zip(points[:-1], points[1:], strict=True):
            canvas.segment(start, end, 0.03, LINK_COLOR)
        for p in points[:-1]:
            canvas.disc(p, 0.045, JOINT_COLOR)
        canvas.disc(points[-1], 0.06, TIP_COLOR)

    def expert_action(self, noise: np.ndarray) -> np.ndarray:
        # Damped least squares: the joint step that moves the tip along the line to the goal.
        tip_step = EXPERT_GAIN * (self.goal - self.end_effector())
        norm = float(np.linalg.norm(tip_step))
        if norm > MAX_TIP_STEP:
            tip_step *= MAX_TIP_STEP / norm
        jac = tip_jacobian(self.q)
        dq = jac.T @ np.linalg.solve(jac @ jac.T + DAMPING**2 * np.eye(2), tip_step)
        action = dq / MAX_JOINT_STEP
        peak = float(np.max(np.abs(action)))
        if peak > 1.0:
            action /= peak
        return np.clip(action + noise, -1.0, 1.0).astype(np.float32)
