"""Scripted experts: the embodiment's privileged proportional controller plus seeded Gaussian noise."""

from __future__ import annotations

import gymnasium as gym
import numpy as np

from dreamzero_envs.reach_base import ReachEnv


class ScriptedExpert:
    """Acts on the (possibly wrapped) env it was built for; noise is in action units, per dimension."""

    def __init__(self, env: gym.Env, noise_std: float = 0.1, seed: int | None = None) -> None:
        base = env.unwrapped
        if not isinstance(base, ReachEnv):
            raise ValueError(f"ScriptedExpert needs a ReachEnv, got {type(base).__name__}")
        if noise_std < 0:
            raise ValueError(f"noise_std must be >= 0, got {noise_std}")
        self.env = base
        self.noise_std = float(noise_std)
        self.rng = np.random.default_rng(seed)

    def reseed(self, seed: int | None) -> None:
        self.rng = np.random.default_rng(seed)

    def __call__(self) -> np.ndarray:
        noise = self.noise_std * self.rng.standard_normal(self.env.action_dim)
        return self.env.expert_action(noise)
