"""A model-free stand-in for ``PolicyPlanner`` (shared by the serving tests): it checks every batch the
backend hands it, so malformed input that slips past validation fails loudly, and returns a fixed chunk."""

from __future__ import annotations

from types import SimpleNamespace

import numpy as np
import torch
from lerobot.configs.types import FeatureType, PolicyFeature

from dreamzero_policy.configuration_dreamzero import DreamZeroJaxConfig

DROID_CAMERAS = ("exterior_image_1_left", "exterior_image_2_left", "wrist_image_left")
CHUNK = np.linspace(-0.5, 0.5, 4 * 8, dtype=np.float32).reshape(4, 8)


def policy_config(cameras=DROID_CAMERAS, size=(24, 32), state_dim: int = 8) -> DreamZeroJaxConfig:
    feats = {"observation.state": PolicyFeature(FeatureType.STATE, (state_dim,))}
    feats |= {f"observation.images.{c}": PolicyFeature(FeatureType.VISUAL, (3, *size)) for c in cameras}
    return DreamZeroJaxConfig(
        input_features=feats,
        output_features={"action": PolicyFeature(FeatureType.ACTION, (state_dim,))},
        device="cpu",
    )


class StubPlanner:
    def __init__(self, cameras=DROID_CAMERAS, size=(24, 32)) -> None:
        self.policy = SimpleNamespace(config=policy_config(cameras, size))
        self.action_dim = 8
        self.size = size
        self.recorded: list[dict] = []
        self.planned: list[dict] = []
        self.resets = 0

    def _check(self, batch: dict) -> None:
        s = batch["observation.state"]
        assert s.shape == (1, 8) and s.dtype == torch.float32 and torch.isfinite(s).all(), s
        task = batch["task"]
        assert isinstance(task, list) and len(task) == 1 and isinstance(task[0], str) and task[0].strip()
        for key in self.policy.config.camera_keys:
            x = batch[key]
            assert x.shape == (1, 3, *self.size) and x.dtype == torch.float32, (key, x.shape, x.dtype)
            assert torch.isfinite(x).all() and 0.0 <= x.min() and x.max() <= 1.0, key

    def record(self, batch: dict) -> None:
        self._check(batch)
        self.recorded.append(batch)

    def plan(self, batch: dict) -> np.ndarray:
        self._check(batch)
        self.planned.append(batch)
        return CHUNK.copy()

    def reset(self) -> None:
        self.resets += 1
