"""``RoboarenaBackend``: roboarena observations (three cameras, joint position 7, gripper 1, prompt,
session id) -> a LeRobot batch for ``PolicyPlanner`` -> the (N, 8) action chunk the protocol returns.

As the reference server, a request's camera entry may hold one frame (H, W, 3) or the frames seen
since the last request (T, H, W, 3, at most ``max_frames``); all but the last go to the policy's
context, the last is the frame the plan starts from. A new session id, or ``reset``, restarts the
policy's context. Cameras are matched to the policy's by name (``cameras``).

``prepare`` (validation, conversion, resizing) touches no shared state, so the server runs it outside
the lock every client waits on; ``run`` is the part that needs the policy.
"""

from __future__ import annotations

import threading
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch
from lerobot.utils.constants import OBS_STATE

from dreamzero_policy.inference.observation import resize_views
from dreamzero_policy.serving import protocol as P
from dreamzero_policy.serving.cameras import resolve_camera_map
from dreamzero_policy.serving.guards import ActionGuard
from dreamzero_policy.serving.planner import PolicyPlanner

ACTION_DIM = P.JOINT_DIM + P.GRIPPER_DIM


@dataclass(frozen=True)
class Request:
    """A validated ``infer`` request: one policy batch per frame (the last starts the plan)."""

    batches: list[dict[str, Any]]
    session: str | None


class RoboarenaBackend:
    def __init__(
        self,
        planner: PolicyPlanner,
        camera_map: Mapping[str, str] | None = None,
        guard: ActionGuard | None = None,
        max_frames: int = P.MAX_FRAMES_PER_REQUEST,
        max_frame_pixels: int = P.MAX_FRAME_PIXELS,
    ) -> None:
        cfg = planner.policy.config
        if cfg.robot_state_feature.shape[0] != ACTION_DIM or planner.action_dim != ACTION_DIM:
            raise ValueError(
                f"roboarena needs state and action dim {ACTION_DIM} (7 joints + gripper), policy has "
                f"state {cfg.robot_state_feature.shape[0]} and action {planner.action_dim}"
            )
        if max_frames < 1 or max_frame_pixels < 1:
            raise ValueError("max_frames and max_frame_pixels must be positive")
        self.camera_map = resolve_camera_map(camera_map, cfg.camera_keys)
        self.max_frames, self.max_frame_pixels = max_frames, max_frame_pixels
        self.planner, self.guard = planner, guard
        self.session: str | None = None
        self.requests = 0
        self._lock = threading.Lock()

    def metadata(self) -> P.ServerMetadata:
        _, h, w = self.planner.policy.config.image_features[next(iter(self.camera_map.values()))].shape
        wrist = P.WRIST in self.camera_map
        n_ext = sum(k in self.camera_map for k in (P.EXTERIOR_0, P.EXTERIOR_1))
        return P.ServerMetadata(image_resolution=(h, w), needs_wrist_camera=wrist, n_external_cameras=n_ext)

    def prepare(self, obs: dict[str, Any]) -> Request:
        """Validate and convert one ``infer`` request. Raises ``ProtocolError``. Every bound is checked on
        shapes before a pixel is converted; frames are converted and resized one at a time."""
        state = torch.from_numpy(P.robot_state(obs))[None]
        task = P.prompt(obs)
        session = P.session_id(obs)
        raw = {rk: P.camera_frames(obs, rk, self.max_frames, self.max_frame_pixels) for rk in self.camera_map}
        counts = {x.shape[0] for x in raw.values()}
        if len(counts) != 1:
            raise P.ProtocolError(f"all cameras must send the same number of frames, got {sorted(counts)}")
        features = self.planner.policy.config.image_features
        views: dict[str, list[torch.Tensor]] = {}
        for rk, pk in self.camera_map.items():
            _, h, w = features[pk].shape
            views[pk] = [
                torch.from_numpy(np.clip(resize_views(P.unit_frame(f, rk), h, w), 0, 1).transpose(2, 0, 1))[None]
                for f in raw[rk]
            ]
        n = counts.pop()
        batches = [
            {OBS_STATE: state, "task": [task], **{k: v[t] for k, v in views.items()}} for t in range(n)
        ]
        return Request(batches, session)

    def run(self, req: Request) -> np.ndarray:
        """(N, 8) float32 actions for a prepared request."""
        with self._lock:
            if req.session is not None and req.session != self.session:
                if self.session is not None:
                    self.planner.reset()
                    if self.guard is not None:
                        self.guard.reset()
                self.session = req.session
            for b in req.batches[:-1]:
                self.planner.record(b)
            chunk = self.planner.plan(req.batches[-1])
            self.requests += 1
        if self.guard is not None:
            chunk = np.stack([self.guard.filter(a) for a in chunk])  # NonFiniteActionError -> error frame
        return chunk.astype(np.float32)

    def infer(self, obs: dict[str, Any]) -> np.ndarray:
        """(N, 8) float32 actions. Raises ``ProtocolError`` for bad observations."""
        return self.run(self.prepare(obs))

    def reset(self, info: dict[str, Any] | None = None) -> None:
        with self._lock:
            self.planner.reset()
            if self.guard is not None:
                self.guard.reset()
            self.session = None
