"""``PolicyPlanner``: a ``DreamZeroJaxPolicy`` as the plan / record / reset functions of the executor
and the server, with LeRobot's pre/post-processors around it.

The policy's KV-cached context needs the frames seen while the previous chunk executed. They are
recorded from the control thread (``record``) into a list that ``plan`` hands to the runner in one
swap under a lock, so frames arriving while a plan runs in the background go to the next plan.
"""

from __future__ import annotations

import threading
from collections.abc import Callable
from typing import Any

import numpy as np
import torch

from dreamzero_policy.modeling_dreamzero import DreamZeroJaxPolicy

Processor = Callable[[Any], Any]


class PolicyPlanner:
    def __init__(
        self,
        policy: DreamZeroJaxPolicy,
        preprocessor: Processor | None = None,
        postprocessor: Processor | None = None,
    ) -> None:
        self.policy = policy
        self.pre = preprocessor or (lambda x: x)
        self.post = postprocessor or (lambda x: x)
        self._frames: list[np.ndarray] = []
        self._lock = threading.Lock()
        self._plan_lock = threading.Lock()  # one rollout at a time (the runner is not re-entrant)

    @property
    def action_dim(self) -> int:
        return int(self.policy.config.action_feature.shape[0])

    def record(self, batch: dict[str, Any]) -> None:
        """Keep the tiled frame of an observation that did not start a plan (batch of one)."""
        frame = self.policy._observe(self.pre(dict(batch)))
        with self._lock:
            self._frames.append(frame)

    @torch.no_grad()
    def plan(self, batch: dict[str, Any]) -> np.ndarray:
        """One chunk (n, action_dim) in robot units for a batch of one observation."""
        with self._plan_lock:
            with self._lock:
                frames, self._frames = self._frames, []
            self.policy.runner.history = frames
            obs = self.pre(dict(batch))
            chunk = self.policy.predict_action_chunk(obs)  # (1, n, A) normalised
            actions = torch.stack([self.post(chunk[:, i]) for i in range(chunk.shape[1])], dim=1)
            return actions[0].detach().to("cpu", torch.float32).numpy()

    def reset(self) -> None:
        with self._plan_lock, self._lock:
            self._frames = []
            self.policy.reset()
