"""``DreamZeroJaxPolicy``: the LeRobot policy (torch in, torch out) over the JAX world-action model.

``select_action`` serves one action per call from ``_action_queue``; when the queue is empty,
``predict_action_chunk`` runs one KV-cached rollout step (observe the frames seen while the last chunk
executed, then jointly denoise the next video latents and action chunk). Training is done by the JAX
trainer (``dreamzero-train``), not through torch autograd: ``forward`` computes the loss for monitoring.
"""

from __future__ import annotations

from collections import deque
from pathlib import Path
from typing import Any

import numpy as np
import torch
from flax import nnx
from lerobot.policies.pretrained import PreTrainedPolicy
from lerobot.utils.constants import OBS_STATE
from torch import Tensor, nn

from dreamzero_policy.configuration_dreamzero import DreamZeroJaxConfig
from dreamzero_policy.inference.observation import tile_views
from dreamzero_policy.inference.relative_actions import RelativeActions
from dreamzero_policy.inference.runner import RolloutRunner
from dreamzero_policy.models.world_model import DreamZeroModel
from dreamzero_policy.weights_io import WEIGHTS_NAME, load_weights, save_weights


def check_view(key: str, x: Tensor) -> None:
    """A camera batch must be (B, 3, H, W) float in [0, 1] (LeRobot's convention), finite."""
    if not isinstance(x, torch.Tensor):
        raise ValueError(f"{key}: expected a torch tensor (B, 3, H, W), got {type(x).__name__}")
    if x.ndim != 4 or x.shape[1] != 3:
        raise ValueError(f"{key}: expected shape (B, 3, H, W) channels-first RGB, got {tuple(x.shape)}")
    if not torch.is_floating_point(x):
        raise ValueError(f"{key}: expected float pixels in [0, 1], got dtype {x.dtype}")
    if not torch.isfinite(x).all():
        raise ValueError(f"{key}: image contains NaN or inf")
    lo, hi = float(x.min()), float(x.max())
    if lo < -1e-3 or hi > 1.0 + 1e-3:
        raise ValueError(f"{key}: pixels must be in [0, 1], got range [{lo:.3f}, {hi:.3f}]")


class DreamZeroJaxPolicy(PreTrainedPolicy):
    config_class = DreamZeroJaxConfig
    name = "dreamzero_jax"

    def __init__(self, config: DreamZeroJaxConfig, dataset_stats: dict | None = None, **kwargs: Any):
        super().__init__(config)
        config.validate_features()
        self.config = config
        self.model = DreamZeroModel(config.model_config(), rngs=nnx.Rngs(config.seed))
        self.runner = RolloutRunner(config, self.model)
        # torch bookkeeping only: LeRobot moves / counts parameters of the nn.Module.
        self._device_anchor = nn.Parameter(torch.zeros(1), requires_grad=False)
        self._action_queue: deque[Tensor] = deque(maxlen=config.actions_per_plan)
        self.last_predicted_latents: np.ndarray | None = None
        self.relative: RelativeActions | None = None
        if config.relative_action_dims and dataset_stats is not None:
            self.relative = RelativeActions.from_stats(config.relative_action_dims, dataset_stats)

    # ------------------------------------------------------------------ LeRobot API
    def get_optim_params(self) -> dict:
        return {}

    def reset(self) -> None:
        self._action_queue.clear()
        self.runner.reset()

    @torch.no_grad()
    def select_action(self, batch: dict[str, Tensor], **kwargs: Any) -> Tensor:
        frame = self._observe(batch)
        if self._action_queue:
            self.runner.record(frame)
        else:
            chunk = self._plan(batch, frame)  # (B, n, A)
            self._action_queue.extend(chunk.transpose(0, 1))
        return self._action_queue.popleft()

    @torch.no_grad()
    def predict_action_chunk(self, batch: dict[str, Tensor], **kwargs: Any) -> Tensor:
        return self._plan(batch, self._observe(batch))

    def forward(self, batch: dict[str, Tensor]) -> tuple[Tensor, dict | None]:
        raise RuntimeError(
            "dreamzero_jax trains with the JAX trainer (`dreamzero-train`), not with torch autograd"
        )

    # ------------------------------------------------------------------ internals
    def _observe(self, batch: dict[str, Tensor]) -> np.ndarray:
        """Validate the batch and return the tiled frame (B, H, W, 3) in [-1, 1] as numpy."""
        cams = self.config.camera_keys
        for key in [*cams, OBS_STATE]:
            if key not in batch:
                raise ValueError(f"missing observation key {key!r}; the policy expects {[*cams, OBS_STATE]}")
        b = batch[OBS_STATE].shape[0]
        views = []
        for key in cams:
            x = batch[key]
            check_view(key, x)
            want = tuple(self.config.image_features[key].shape)
            if tuple(x.shape[1:]) != want:
                raise ValueError(f"{key}: expected (B, {', '.join(map(str, want))}) channels-first, got {tuple(x.shape)}")
            if x.shape[0] != b:
                raise ValueError(f"{key}: batch size {x.shape[0]} != observation.state batch size {b}")
            views.append(x.detach().to("cpu", torch.float32).permute(0, 2, 3, 1).numpy())
        tiled = tile_views(views, self.config)  # (B, H, W, 3) in [0, 1]
        return np.clip(tiled * 2.0 - 1.0, -1.0, 1.0).astype(np.float32)

    def _tasks(self, batch: dict[str, Any], b: int) -> tuple[str, ...]:
        task = batch.get("task")
        default = self.config.default_task
        if task is None and default is None:
            raise ValueError(
                "missing 'task': dreamzero_jax is conditioned on a language instruction "
                "(for envs without one, set --policy.default_task)"
            )
        tasks = (task,) * b if isinstance(task, str) else tuple(task or [default] * b)
        if len(tasks) != b:
            raise ValueError(f"'task' has {len(tasks)} entries for a batch of {b}")
        if default is not None:
            tasks = tuple(t if isinstance(t, str) and t.strip() else default for t in tasks)
        if any(not isinstance(t, str) or not t.strip() for t in tasks):
            raise ValueError(
                "'task' must be a non-empty instruction string for every batch element "
                "(for envs without one, set --policy.default_task)"
            )
        return ("",) * b if self.config.blank_instruction else tasks

    def _state(self, batch: dict[str, Tensor]) -> np.ndarray:
        s = batch[OBS_STATE]
        want = self.config.robot_state_feature.shape[0]
        if s.ndim != 2 or s.shape[1] != want:
            raise ValueError(f"{OBS_STATE}: expected shape (B, {want}), got {tuple(s.shape)}")
        if not torch.isfinite(s).all():
            raise ValueError(f"{OBS_STATE} contains NaN or inf")
        return s.detach().to("cpu", torch.float32).numpy()

    def _plan(self, batch: dict[str, Tensor], frame: np.ndarray) -> Tensor:
        state = self._state(batch)
        b = state.shape[0]
        tasks = self._tasks(batch, b)
        emb = np.full((b,), self.config.embodiment_id, np.int32)
        actions, latents = self.runner.step(frame, state, tasks, emb)
        self.last_predicted_latents = latents
        n = self.config.actions_per_plan
        a_dim = self.config.action_feature.shape[0]
        actions = actions[:, :n, :a_dim]
        if self.config.relative_action_dims:
            if self.relative is None:
                raise ValueError(
                    "relative_action_dims is set but no action/state statistics were given: build the policy "
                    "with dataset_stats or load it from a directory holding its normalizer files"
                )
            actions = self.relative.to_absolute(actions, state)
        out = torch.from_numpy(np.ascontiguousarray(actions)).to(self._device_anchor.device)
        if not torch.isfinite(out).all():
            raise FloatingPointError("the model produced a non-finite action; refusing to return it")
        return out

    # ------------------------------------------------------------------ persistence
    def _save_pretrained(self, save_directory: Path, state_dict: dict | None = None) -> None:
        self.config._save_pretrained(save_directory)
        save_weights(self.model, Path(save_directory) / WEIGHTS_NAME)

    @classmethod
    def _load_as_safetensor(cls, model: DreamZeroJaxPolicy, model_file: str, map_location: str, strict: bool):
        load_weights(model.model, model_file)  # always strict: a partial load would act silently wrong
        model.runner.set_params(model.model)
        if model.config.relative_action_dims and model.relative is None:
            model.relative = RelativeActions.from_pretrained_dir(model.config.relative_action_dims,
                                                                 Path(model_file).parent)
        return model

    def load_model_state(self, model: DreamZeroModel) -> None:
        """Use the weights of ``model`` (e.g. fresh from the trainer) for inference."""
        nnx.update(self.model, nnx.state(model))
        self.runner.set_params(self.model)
        self.reset()

