"""``DreamZeroJaxPolicy``: the LeRobot policy (torch in, torch out) over the JAX world-action model.

``select_action`` serves one action per call from ``_action_queue``; when the queue is empty,
``predict_action_chunk`` runs one KV-cached rollout step (observe the frames seen while the last chunk
executed and the frame that triggers the plan, then jointly denoise the next video latents and action
chunk). Training is done by the JAX trainer (``dreamzero-train``), not through torch autograd:
``forward`` raises.

The JAX model runs on the device ``--policy.device`` names (``cuda[:N]`` -> JAX GPU N, ``cpu`` -> the
host CPU); a device JAX cannot reach is an error, never a silent fall-back to another backend.
"""

from __future__ import annotations

from collections import deque
from contextvars import ContextVar
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import jax
import numpy as np
import torch
from flax import nnx
from lerobot.policies.pretrained import PreTrainedPolicy
from lerobot.utils.constants import OBS_STATE
from torch import Tensor, nn

from dreamzero_policy.configuration_dreamzero import DreamZeroJaxConfig
from dreamzero_policy.inference.device import jax_device_for
from dreamzero_policy.inference.observation import crop_views, tile_views
from dreamzero_policy.inference.relative_actions import RelativeActions
from dreamzero_policy.inference.runner import RolloutRunner
from dreamzero_policy.models.world_model import DreamZeroModel
from dreamzero_policy.weights_io import WEIGHTS_NAME, load_weights, save_weights


def check_view(key: str, x: Tensor) -> None:
    """A camera batch must be (B, 3, H, W) float in [0, 1] (LeRobot's convention), finite; any H, W (each
    view is resized to the configured view size)."""
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


@dataclass(frozen=True)
class Observation:
    """One validated observation batch: tiled frame (B, H, W, 3) in [-1, 1], normalised state (B, S)."""

    frame: np.ndarray
    state: np.ndarray
    tasks: tuple[str, ...]

    @property
    def batch(self) -> int:
        return self.state.shape[0]


# Set while from_pretrained builds a policy whose weights are loaded right after construction.
_WEIGHTS_FOLLOW: ContextVar[bool] = ContextVar("dreamzero_weights_follow", default=False)


class DreamZeroJaxPolicy(PreTrainedPolicy):
    config_class = DreamZeroJaxConfig
    name = "dreamzero_jax"

    def __init__(self, config: DreamZeroJaxConfig, dataset_stats: dict | None = None, **kwargs: Any):
        super().__init__(config)
        config.validate_features()
        self.config = config
        self.jax_device = jax_device_for(config.device)
        build = lambda: DreamZeroModel(config.model_config(), rngs=nnx.Rngs(config.seed))
        self.runner: RolloutRunner | None = None
        if _WEIGHTS_FOLLOW.get():  # from_pretrained: shapes only, the weights stream in next
            self.model = nnx.eval_shape(build)
        else:
            with jax.default_device(self.jax_device):
                self.model = build()
            self.runner = RolloutRunner(config, self.model, device=self.jax_device)
        # torch bookkeeping only: LeRobot moves / counts parameters of the nn.Module.
        self._device_anchor = nn.Parameter(torch.zeros(1), requires_grad=False)
        self._action_queue: deque[Tensor] = deque(maxlen=config.actions_per_plan)
        self._queued_tasks: tuple[str, ...] | None = None
        # LeRobot's world-model hook (lerobot-eval --policy.save_predicted_video=true): after a plan, the
        # latents (B, z, 1 + fpb, h, w) = [latent of the frame planned from | predicted block]; None after a
        # call served from the queue. lerobot-eval concatenates them on dim 2 and calls
        # decode_predicted_latents once per rollout.
        self.last_predicted_latents: Tensor | None = None
        self._decode_block = None
        self.relative: RelativeActions | None = None
        if config.relative_action_dims and dataset_stats is not None:
            self.relative = RelativeActions.from_stats(config.relative_action_dims, dataset_stats)

    # ------------------------------------------------------------------ LeRobot API
    def get_optim_params(self) -> dict:
        return {}

    def reset(self) -> None:
        self._action_queue.clear()
        self._queued_tasks = None
        self.runner.reset()

    @torch.no_grad()
    def select_action(self, batch: dict[str, Tensor], **kwargs: Any) -> Tensor:
        """One action (B, action_dim). Every call is validated in full, also when it is served from the
        queue; a new instruction drops the queued actions and re-plans (the context resets with it)."""
        obs = self._validated(batch)
        if self._action_queue:
            queued = self._action_queue[0].shape[0]
            if obs.batch != queued:
                raise ValueError(f"batch size changed from {queued} to {obs.batch} while actions are queued; "
                                 "call reset() before starting a new set of episodes")
            if obs.tasks != self._queued_tasks:
                self._action_queue.clear()
        if self._action_queue:
            self.runner.record(obs.frame)
        else:
            chunk = self._plan(obs)  # (B, n, A)
            self._action_queue.extend(chunk.transpose(0, 1))
            self._queued_tasks = obs.tasks
        return self._action_queue.popleft()

    @torch.no_grad()
    def predict_action_chunk(self, batch: dict[str, Tensor], **kwargs: Any) -> Tensor:
        return self._plan(self._validated(batch))

    def forward(self, batch: dict[str, Tensor]) -> tuple[Tensor, dict | None]:
        raise RuntimeError(
            "dreamzero_jax trains with the JAX trainer (`dreamzero-train`), not with torch autograd"
        )

    @torch.no_grad()
    def decode_predicted_latents(self, latents: Tensor) -> np.ndarray:
        """Plans' latents concatenated on dim 2, (B, z, n*(1 + fpb), h, w) -> the imagined video of batch
        element 0, (n * 4 * fpb, H, W, 3) uint8: each predicted block decoded behind its context frame
        (which is dropped), so frame i lines up with the i-th frame after each plan."""
        block = 1 + self.model.cfg.dit.frames_per_block
        lat = torch.as_tensor(latents)
        if lat.ndim != 5 or lat.shape[1] != self.model.cfg.vae.z_dim or lat.shape[2] % block:
            raise ValueError(f"expected (B, {self.model.cfg.vae.z_dim}, n*{block}, h, w) plan latents, got {tuple(lat.shape)}")
        z = lat[0].permute(1, 2, 3, 0).reshape(-1, block, *lat.shape[3:], lat.shape[1]).numpy()  # (n, 1+fpb, h, w, z)
        if self._decode_block is None:  # one block at a time: compiled once, whatever the rollout's length
            graphdef = nnx.graphdef(self.model.vae)
            self._decode_block = jax.jit(lambda p, x: nnx.merge(graphdef, p).decode(x)[0, 1:])
        params = nnx.state(self.model.vae)
        frames = np.concatenate([np.asarray(self._decode_block(params, b[None])) for b in z])  # (n*4*fpb, H, W, 3)
        return np.clip((frames + 1.0) * 127.5, 0, 255).round().astype(np.uint8)

    # ------------------------------------------------------------------ internals
    def _validated(self, batch: dict[str, Any]) -> Observation:
        """Check everything a plan needs (cameras, state, task, batch size) and convert it."""
        state = self._state(batch)
        frame = self._observe(batch, state.shape[0])
        return Observation(frame, state, self._tasks(batch, state.shape[0]))

    def _observe(self, batch: dict[str, Tensor], b: int | None = None) -> np.ndarray:
        """Validate the cameras and return the tiled frame (B, H, W, 3) in [-1, 1] as numpy."""
        cams = self.config.camera_keys
        for key in [*cams, OBS_STATE]:
            if key not in batch:
                raise ValueError(f"missing observation key {key!r}; the policy expects {[*cams, OBS_STATE]}")
        b = batch[OBS_STATE].shape[0] if b is None else b
        views = []
        for key in cams:
            x = batch[key]
            check_view(key, x)
            if x.shape[0] != b:
                raise ValueError(f"{key}: batch size {x.shape[0]} != observation.state batch size {b}")
            views.append(x.detach().to("cpu", torch.float32).permute(0, 2, 3, 1).numpy())
        tiled = tile_views(crop_views(views, self.config.crop), self.config)  # (B, H, W, 3) in [0, 1], each view at the configured size
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
        """The normalised state (B, S), not clamped (relative actions add back the true state)."""
        if OBS_STATE not in batch:
            raise ValueError(f"missing observation key {OBS_STATE!r}")
        s = batch[OBS_STATE]
        want = self.config.robot_state_feature.shape[0]
        if not isinstance(s, torch.Tensor):
            raise ValueError(f"{OBS_STATE}: expected a torch tensor (B, {want}), got {type(s).__name__}")
        if s.ndim == 2 and s.shape[0] == 0:
            raise ValueError(f"{OBS_STATE}: empty batch (B=0)")
        if s.ndim != 2 or s.shape[1] != want:
            raise ValueError(f"{OBS_STATE}: expected shape (B, {want}), got {tuple(s.shape)}")
        if not torch.isfinite(s).all():
            raise ValueError(f"{OBS_STATE} contains NaN or inf")
        return s.detach().to("cpu", torch.float32).numpy()

    def _plan(self, obs: Observation) -> Tensor:
        state, b = obs.state, obs.batch
        emb = np.full((b,), self.config.embodiment_id, np.int32)
        # The model saw states clamped to [-1, 1] in training (q01/q99 tails), as the reference clamps them.
        actions, latents = self.runner.step(obs.frame, np.clip(state, -1.0, 1.0), obs.tasks, emb)
        self.last_predicted_latents = torch.from_numpy(np.ascontiguousarray(latents.transpose(0, 4, 1, 2, 3)))
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
    def from_pretrained(cls, pretrained_name_or_path: str | Path, **kwargs: Any) -> DreamZeroJaxPolicy:
        """LeRobot's loader, with the model built from shapes only: each stored tensor then goes once, in the
        model's dtype, to where it runs (a random init first would need a 14B model's memory twice)."""
        token = _WEIGHTS_FOLLOW.set(True)
        try:
            return super().from_pretrained(pretrained_name_or_path, **kwargs)
        finally:
            _WEIGHTS_FOLLOW.reset(token)

    @classmethod
    def _load_as_safetensor(cls, model: DreamZeroJaxPolicy, model_file: str, map_location: str, strict: bool):
        host = jax.devices("cpu")[0]
        on_host = model.config.text_encoder_on_host
        device_of = lambda path: host if on_host and path.startswith("text_encoder/") else model.jax_device
        # always strict: a partial load would act silently wrong
        load_weights(model.model, model_file, device_of=device_of)
        if model.runner is None:
            model.runner = RolloutRunner(model.config, model.model, device=model.jax_device)
        else:
            model.runner.set_params(model.model)
        if model.config.relative_action_dims and model.relative is None:
            model.relative = RelativeActions.from_pretrained_dir(model.config.relative_action_dims,
                                                                 Path(model_file).parent)
        return model


