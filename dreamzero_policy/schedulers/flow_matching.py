"""Flow-matching training schedule (rectified flow with a shifted, discrete sigma table).

Matches DreamZero's training use of ``FlowMatchScheduler(shift=5, sigma_min=0.0, extra_one_step=True)``
followed by ``set_timesteps(1000, training=True)``:

* sigmas: ``linspace(sigma_max, sigma_min, T + 1)[:-1]`` (= 1.000, 0.999, ..., 0.001 for the defaults),
  then shifted, ``s' = shift * s / (1 + (shift - 1) * s)``; timestep id ``k`` has sigma ``sigmas[k]``,
  so id 0 is pure noise.
* model-facing timestep: ``sigma * T`` (a float, not rounded; the DiT sees these values in training).
* ``x_t = (1 - sigma) * x0 + sigma * noise`` and velocity target ``noise - x0``.
* loss weight per id: ``y = exp(-2 ((t - T/2) / T)^2)`` of the shifted timestep ``t``, minus its minimum
  over the table, scaled so the table sums to ``T`` (mean 1; the pure-noise id gets weight 0).

Tables are computed once on the host in float64 and stored as float32 numpy arrays, so every method is
a gather plus elementwise jnp ops and traces cleanly under ``jax.jit``.
"""

from __future__ import annotations

from dataclasses import dataclass
from functools import cached_property

import jax
import jax.numpy as jnp
import numpy as np


def shift_sigmas(sigmas: np.ndarray, shift: float) -> np.ndarray:
    """The resolution shift used by Wan/DreamZero: ``shift * s / (1 + (shift - 1) * s)``."""
    return shift * sigmas / (1.0 + (shift - 1.0) * sigmas)


@dataclass(frozen=True)
class FlowMatchSchedule:
    """Discrete flow-matching schedule for training; hashable, so usable as a static jit argument."""

    num_train_timesteps: int = 1000
    shift: float = 5.0
    sigma_max: float = 1.0
    sigma_min: float = 0.0
    # The reference's ``extra_one_step``: drop the last of T + 1 grid points instead of using T points.
    extra_one_step: bool = True

    def __post_init__(self) -> None:
        if self.num_train_timesteps < 2:
            raise ValueError(f"num_train_timesteps must be >= 2, got {self.num_train_timesteps}")
        if self.shift <= 0:
            raise ValueError(f"shift must be positive, got {self.shift}")
        if not 0.0 <= self.sigma_min < self.sigma_max <= 1.0:
            raise ValueError(
                f"need 0 <= sigma_min < sigma_max <= 1, got sigma_min={self.sigma_min}, sigma_max={self.sigma_max}"
            )

    # ----------------------------------------------------------------- host tables (float64 -> float32)
    @cached_property
    def _sigmas64(self) -> np.ndarray:
        n = self.num_train_timesteps
        if self.extra_one_step:
            grid = np.linspace(self.sigma_max, self.sigma_min, n + 1, dtype=np.float64)[:-1]
        else:
            grid = np.linspace(self.sigma_max, self.sigma_min, n, dtype=np.float64)
        return shift_sigmas(grid, self.shift)

    @cached_property
    def sigmas(self) -> np.ndarray:
        """(T,) float32 noise level of each timestep id, decreasing from ``sigma_max`` (shifted)."""
        return self._sigmas64.astype(np.float32)

    @cached_property
    def timesteps(self) -> np.ndarray:
        """(T,) float32 model-facing timestep ``sigma * T`` of each id."""
        return (self._sigmas64 * self.num_train_timesteps).astype(np.float32)

    @cached_property
    def weights(self) -> np.ndarray:
        """(T,) float32 loss weight of each id (mean 1, zero at the table's far end from T/2)."""
        n = self.num_train_timesteps
        t = self._sigmas64 * n
        y = np.exp(-2.0 * ((t - n / 2) / n) ** 2)
        y = y - y.min()
        return (y * (n / y.sum())).astype(np.float32)

    # ------------------------------------------------------------------------------ jit-friendly ops
    def sigma(self, timestep_ids: jax.Array) -> jax.Array:
        """Sigma of integer timestep ids (any shape)."""
        return jnp.asarray(self.sigmas)[timestep_ids]

    def timestep(self, timestep_ids: jax.Array) -> jax.Array:
        """Model-facing float timestep of integer ids (what the DiT's time embedding receives)."""
        return jnp.asarray(self.timesteps)[timestep_ids]

    def training_weight(self, timestep_ids: jax.Array) -> jax.Array:
        """Loss weight of integer timestep ids (any shape)."""
        return jnp.asarray(self.weights)[timestep_ids]

    def add_noise(self, x0: jax.Array, noise: jax.Array, timestep_ids: jax.Array) -> jax.Array:
        """``(1 - sigma) * x0 + sigma * noise``; ``timestep_ids`` indexes the leading axes of ``x0``.

        E.g. video latents (B, F, H, W, C) with per-frame ids (B, F), or actions (B, A, D) with ids (B, A).
        """
        if x0.shape != noise.shape:
            raise ValueError(f"x0 and noise shapes differ: {x0.shape} vs {noise.shape}")
        ids = jnp.asarray(timestep_ids)
        if ids.shape != x0.shape[: ids.ndim]:
            raise ValueError(
                f"timestep_ids shape {ids.shape} must equal the leading axes of x0 (shape {x0.shape})"
            )
        sigma = self.sigma(ids).reshape(ids.shape + (1,) * (x0.ndim - ids.ndim))
        out = (1.0 - sigma) * x0.astype(jnp.float32) + sigma * noise.astype(jnp.float32)
        return out.astype(x0.dtype)

    @staticmethod
    def velocity_target(x0: jax.Array, noise: jax.Array) -> jax.Array:
        """Flow-matching regression target ``noise - x0`` (d x_t / d sigma)."""
        if x0.shape != noise.shape:
            raise ValueError(f"x0 and noise shapes differ: {x0.shape} vs {noise.shape}")
        return noise - x0

    def sample_timestep_ids(self, key: jax.Array, shape: tuple[int, ...]) -> jax.Array:
        """Uniform int32 ids in ``[0, T)`` (the reference's ``torch.randint(0, T, shape)``)."""
        return jax.random.randint(key, shape, 0, self.num_train_timesteps, dtype=jnp.int32)

    def sample_blockwise_timestep_ids(
        self,
        key: jax.Array,
        batch: int,
        num_blocks: int,
        frames_per_block: int,
        actions_per_block: int,
    ) -> tuple[jax.Array, jax.Array]:
        """Ids drawn the way DreamZero's teacher-forcing step draws them (coupled video/action mode).

        Latent frame 0 gets its own uniform id; each block of ``frames_per_block`` later frames shares one
        uniform id, and that block's actions reuse it. Returns ``(video_ids (B, 1 + num_blocks *
        frames_per_block), action_ids (B, num_blocks * actions_per_block))``, both int32.
        """
        if min(batch, num_blocks, frames_per_block, actions_per_block) < 1:
            raise ValueError(
                "batch, num_blocks, frames_per_block and actions_per_block must be >= 1, got "
                f"{batch}, {num_blocks}, {frames_per_block}, {actions_per_block}"
            )
        ids = self.sample_timestep_ids(key, (batch, 1 + num_blocks))
        video_ids = jnp.concatenate([ids[:, :1], jnp.repeat(ids[:, 1:], frames_per_block, axis=1)], axis=1)
        action_ids = jnp.repeat(ids[:, 1:], actions_per_block, axis=1)
        return video_ids, action_ids
