"""``RoboarenaBackend``: roboarena observations (three cameras, joint position 7, gripper 1, prompt,
session id) -> a LeRobot batch for ``PolicyPlanner`` -> the (N, 8) action chunk the protocol returns.

As the reference server, a request's camera entry may hold one frame (H, W, 3) or the frames seen
since the last request (T, H, W, 3); all but the last go to the policy's context, the last is the
frame the plan starts from. A new session id, or ``reset``, restarts the policy's context.
"""

from __future__ import annotations

import threading
from collections.abc import Mapping
from typing import Any

import numpy as np
import torch
from lerobot.utils.constants import OBS_STATE

from dreamzero_policy.inference.observation import resize_bilinear
from dreamzero_policy.serving import protocol as P
from dreamzero_policy.serving.guards import ActionGuard
from dreamzero_policy.serving.planner import PolicyPlanner

ACTION_DIM = P.JOINT_DIM + P.GRIPPER_DIM


class RoboarenaBackend:
    def __init__(
        self,
        planner: PolicyPlanner,
        camera_map: Mapping[str, str] | None = None,
        guard: ActionGuard | None = None,
    ) -> None:
        cfg = planner.policy.config
        cams = cfg.camera_keys
        self.camera_map = (
            dict(camera_map) if camera_map is not None else dict(zip(P.IMAGE_KEYS, cams, strict=False))
        )
        unknown = [k for k in self.camera_map.values() if k not in cfg.image_features]
        if unknown or set(self.camera_map.values()) != set(cams):
            raise ValueError(f"camera_map {self.camera_map} must cover exactly the policy cameras {cams}")
        if cfg.robot_state_feature.shape[0] != ACTION_DIM or planner.action_dim != ACTION_DIM:
            raise ValueError(
                f"roboarena needs state and action dim {ACTION_DIM} (7 joints + gripper), policy has "
                f"state {cfg.robot_state_feature.shape[0]} and action {planner.action_dim}"
            )
        self.planner, self.guard = planner, guard
        self.session: str | None = None
        self.requests = 0
        self._lock = threading.Lock()

    def metadata(self) -> P.ServerMetadata:
        _, h, w = self.planner.policy.config.image_features[next(iter(self.camera_map.values()))].shape
        wrist = P.WRIST in self.camera_map
        n_ext = sum(k in self.camera_map for k in (P.EXTERIOR_0, P.EXTERIOR_1))
        return P.ServerMetadata(image_resolution=(h, w), needs_wrist_camera=wrist, n_external_cameras=n_ext)

    def _batches(self, obs: dict[str, Any]) -> list[dict[str, Any]]:
        state = torch.from_numpy(P.robot_state(obs))[None]
        task = P.prompt(obs)
        views: dict[str, np.ndarray] = {}
        for rk, pk in self.camera_map.items():
            _, h, w = self.planner.policy.config.image_features[pk].shape
            views[pk] = resize_bilinear(P.image_frames(obs, rk), h, w)  # (T, h, w, 3) in [0, 1]
        n = {v.shape[0] for v in views.values()}
        if len(n) != 1:
            raise P.ProtocolError(f"all cameras must send the same number of frames, got {sorted(n)}")
        return [
            {
                OBS_STATE: state,
                "task": [task],
                **{
                    k: torch.from_numpy(np.ascontiguousarray(v[t].transpose(2, 0, 1)))[None].clamp(0, 1)
                    for k, v in views.items()
                },
            }
            for t in range(n.pop())
        ]

    def infer(self, obs: dict[str, Any]) -> np.ndarray:
        """(N, 8) float32 actions. Raises ``ProtocolError`` for bad observations."""
        batches = self._batches(obs)  # validate everything before touching the policy's state
        with self._lock:
            sid = P.session_id(obs)
            if sid is not None and sid != self.session:
                if self.session is not None:
                    self.planner.reset()
                    if self.guard is not None:
                        self.guard.reset()
                self.session = sid
            for b in batches[:-1]:
                self.planner.record(b)
            chunk = self.planner.plan(batches[-1])
            self.requests += 1
        if self.guard is not None:
            chunk = np.stack([self.guard.filter(a) for a in chunk])  # NonFiniteActionError -> error frame
        return chunk.astype(np.float32)

    def reset(self, info: dict[str, Any] | None = None) -> None:
        with self._lock:
            self.planner.reset()
            if self.guard is not None:
                self.guard.reset()
            self.session = None
