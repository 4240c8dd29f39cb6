"""UniPC multistep sampler for flow prediction (predict-x0, B(h) variants), as pure JAX functions.

Matches DreamZero's ``FlowUniPCMultistepScheduler(num_train_timesteps=1000, shift=1)`` followed by
``set_timesteps(16, shift=5.0)`` (Wan's flow UniPC, itself diffusers' UniPC with flow sigmas):

* ``sigma_max = float32(1 - 1/T)`` (0.99900001 for T = 1000; the first entry of the unshifted training
  table the reference builds in float32) and ``sigma_min = 0``;
  ``sigmas = shift(linspace(sigma_max, 0, N + 1)[:-1])`` followed by a final 0, stored as float32;
  model-facing timesteps ``int(sigma * T)`` (truncated, computed in float64 before the float32 cast).
* diffusers' ``UniPCMultistepScheduler(use_flow_sigmas=True, flow_shift=5)`` builds a DIFFERENT default
  grid, ``shift(linspace(1, 1/T, N + 1)[:-1])`` with ``sigma[0] -= 1e-6``; passing the reference grid as
  ``set_timesteps(sigmas=linspace(sigma_max, 0, N + 1)[:-1])`` makes diffusers reproduce it exactly.

All scalar coefficients of the predictor (UniP) and corrector (UniC) depend only on the sigma table, so
they are precomputed on the host in float64 for every step and both orders; a step is then a few table
gathers and linear combinations, so ``step_index`` may be a traced integer inside ``lax.fori_loop``.
Samples and model outputs may be any pytree of arrays (e.g. ``(video, actions)``), stepped together.

Skipped DiT steps (DreamZero runs the DiT on 8 of 16 steps): the reference re-feeds the last raw
velocity (after CFG) to ``step()`` with the current sample, so the scheduler converts it to a new x0
estimate ``sample_i - sigma_i * v_stale`` and runs the normal predictor/corrector. With this API that is
simply calling ``step`` with the previous ``model_output``; ``denoise`` does it with a static mask.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass
from functools import cached_property
from typing import Any, NamedTuple

import jax
import jax.numpy as jnp
import numpy as np
from jax import lax

from dreamzero_policy.schedulers.flow_matching import shift_sigmas

PyTree = Any

# The reference's ``dit_step_mask`` tables for 16 sampling steps, keyed by the number of DiT evaluations
# (``NUM_DIT_STEPS``; default 8: steps 0, 1, 2, 6, 10, 13, 14, 15). Skipped steps reuse the last velocity.
_T, _F = True, False
REFERENCE_DIT_STEP_MASKS: dict[int, tuple[bool, ...]] = {
    5: (_T, _T, _T, _F, _F, _F, _F, _T, _F, _F, _F, _F, _T, _F, _F, _F),
    6: (_T, _T, _F, _F, _F, _T, _F, _F, _F, _F, _T, _F, _F, _F, _T, _T),
    7: (_T, _T, _T, _F, _F, _F, _T, _F, _F, _F, _T, _F, _F, _F, _T, _T),
    8: (_T, _T, _T, _F, _F, _F, _T, _F, _F, _F, _T, _F, _F, _T, _T, _T),
    16: (_T,) * 16,
}


def dit_step_mask(num_dit_steps: int = 8) -> tuple[bool, ...]:
    """Which of the 16 sampling steps run the DiT in the reference (``NUM_DIT_STEPS``)."""
    if num_dit_steps not in REFERENCE_DIT_STEP_MASKS:
        raise ValueError(
            f"num_dit_steps must be one of {sorted(REFERENCE_DIT_STEP_MASKS)}, got {num_dit_steps}"
        )
    return REFERENCE_DIT_STEP_MASKS[num_dit_steps]


class UniPCState(NamedTuple):
    """Multistep history carried between steps (a pytree; float32 leaves shaped like the sample)."""

    last_sample: PyTree  # the (corrected) sample the previous predictor started from
    prev_x0: PyTree  # converted model output (x0 estimate) of the previous step, m_{i-1}
    prev_prev_x0: PyTree  # m_{i-2}
    lower_order_nums: jax.Array  # int32: steps taken so far, saturating at solver_order (warm-up)
    last_order: jax.Array  # int32: order of the previous predictor; the corrector reuses it


class _Coefficients(NamedTuple):
    """Per-step scalar tables (float64 host arrays of length num_steps)."""

    # predictor: x_next = a * x + b * m0 + [order 2] c2 * (m_{-1} - m0)
    pred_a: np.ndarray
    pred_b: np.ndarray
    pred_c2: np.ndarray
    # corrector: x = a * x_last + b * m_{-1} + [order 2] c2 * (m_{-2} - m_{-1}) + d * (m0 - m_{-1})
    corr_a: np.ndarray
    corr_b: np.ndarray
    corr_d1: np.ndarray
    corr_c2: np.ndarray
    corr_d2: np.ndarray


@dataclass(frozen=True)
class UniPCSchedule:
    """Flow UniPC sampling schedule; hashable (config fields only), tables are cached host arrays."""

    num_steps: int = 16
    shift: float = 5.0
    num_train_timesteps: int = 1000
    solver_order: int = 2
    solver_type: str = "bh2"
    lower_order_final: bool = True
    # Steps whose corrector is skipped, in the reference's convention: index i disables the UniC update
    # applied at step i + 1.
    disable_corrector: tuple[int, ...] = ()
    # The reference's optional "decoupled inference": rescale sigmas so the chain ends at this noise
    # level instead of 0 (``video_inference_final_noise``); 0 is the default full denoising.
    final_sigma: float = 0.0

    @classmethod
    def create(
        cls,
        num_steps: int = 16,
        shift: float = 5.0,
        *,
        num_train_timesteps: int = 1000,
        solver_order: int = 2,
        solver_type: str = "bh2",
        lower_order_final: bool = True,
        disable_corrector: Sequence[int] = (),
        final_sigma: float = 0.0,
    ) -> UniPCSchedule:
        return cls(
            num_steps=num_steps,
            shift=float(shift),
            num_train_timesteps=num_train_timesteps,
            solver_order=solver_order,
            solver_type=solver_type,
            lower_order_final=lower_order_final,
            disable_corrector=tuple(int(i) for i in disable_corrector),
            final_sigma=float(final_sigma),
        )

    def __post_init__(self) -> None:
        if self.num_steps < 1:
            raise ValueError(f"num_steps must be >= 1, got {self.num_steps}")
        if self.num_train_timesteps < 2:
            raise ValueError(f"num_train_timesteps must be >= 2, got {self.num_train_timesteps}")
        if self.shift <= 0:
            raise ValueError(f"shift must be positive, got {self.shift}")
        if self.solver_order not in (1, 2):
            raise ValueError(f"solver_order must be 1 or 2, got {self.solver_order}")
        if self.solver_type not in ("bh1", "bh2"):
            raise ValueError(f"solver_type must be 'bh1' or 'bh2', got {self.solver_type!r}")
        if not 0.0 <= self.final_sigma < self.sigma_max:
            raise ValueError(f"final_sigma must be in [0, {self.sigma_max}), got {self.final_sigma}")
        if self.final_sigma == 0.0 and self.solver_order == 2 and not self.lower_order_final:
            # With a zero final sigma the last step's log-SNR is infinite and the 2nd-order predictor
            # divides by zero (the reference returns inf/nan there).
            raise ValueError(
                "lower_order_final=False with final_sigma=0 makes the last 2nd-order step singular"
            )

    # ----------------------------------------------------------------------------------- host tables
    @property
    def sigma_max(self) -> float:
        """float32(1 - 1/T) as a Python float: the reference's unshifted starting sigma."""
        return float(np.float32(1.0 - 1.0 / self.num_train_timesteps))

    @cached_property
    def _sigmas64(self) -> np.ndarray:
        """(N + 1,) float64 sigmas of the float32 table, final entry included."""
        grid = np.linspace(self.sigma_max, 0.0, self.num_steps + 1, dtype=np.float64)[:-1]
        shifted = shift_sigmas(grid, self.shift)
        if self.final_sigma == 0.0:
            return np.append(shifted, 0.0).astype(np.float32).astype(np.float64)
        # Reference rescale, in float32 with the same operation order as the reference's torch code:
        # map [sigma_0, 0] onto [sigma_0, final_sigma].
        s = np.append(shifted, 0.0).astype(np.float32)
        s0 = float(s[0])
        scaled = s * np.float32(s0 - self.final_sigma) / np.float32(s0) + np.float32(self.final_sigma)
        return scaled.astype(np.float32).astype(np.float64)

    @cached_property
    def sigmas(self) -> np.ndarray:
        """(N + 1,) float32 sigmas, from the first step's noise level down to the final one."""
        return self._sigmas64.astype(np.float32)

    @cached_property
    def timesteps(self) -> np.ndarray:
        """(N,) int32 model-facing timesteps (truncated like the reference's int64 cast)."""
        n = self.num_train_timesteps
        if self.final_sigma == 0.0:
            grid = np.linspace(self.sigma_max, 0.0, self.num_steps + 1, dtype=np.float64)[:-1]
            return (shift_sigmas(grid, self.shift) * n).astype(np.int32)
        return (self.sigmas[:-1] * np.float32(n)).astype(np.int32)

    @cached_property
    def _coefficients(self) -> _Coefficients:
        s = self._sigmas64
        n = self.num_steps
        with np.errstate(divide="ignore"):
            lam = np.log(1.0 - s) - np.log(s)  # log-SNR; +inf at a zero final sigma

        def b_of(hh: float) -> float:
            return float(np.expm1(hh)) if self.solver_type == "bh2" else hh

        tables = {name: np.zeros(n) for name in _Coefficients._fields}
        for i in range(n):
            # UniP from sigma_i to sigma_{i+1}; with predict_x0 the exponent is hh = -h.
            h = lam[i + 1] - lam[i]
            alpha_next = 1.0 - s[i + 1]
            if np.isinf(h):  # final step to sigma = 0: the update collapses to x_next = m0
                tables["pred_a"][i], tables["pred_b"][i] = 0.0, alpha_next
            else:
                hh = -h
                tables["pred_a"][i] = s[i + 1] / s[i]
                tables["pred_b"][i] = -alpha_next * np.expm1(hh)
                if i >= 1:
                    rk = (lam[i - 1] - lam[i]) / h
                    tables["pred_c2"][i] = -alpha_next * b_of(hh) * 0.5 / rk
            if i == 0:
                continue
            # UniC at step i corrects the sample reached from sigma_{i-1} using the new model output.
            h = lam[i] - lam[i - 1]
            hh = -h
            alpha_t = 1.0 - s[i]
            bh = b_of(hh)
            tables["corr_a"][i] = s[i] / s[i - 1]
            tables["corr_b"][i] = -alpha_t * np.expm1(hh)
            tables["corr_d1"][i] = -alpha_t * bh * 0.5
            if i >= 2:
                rk = (lam[i - 2] - lam[i - 1]) / h
                phi = np.expm1(hh) / hh - 1.0
                rhs = np.array([phi / bh, (phi / hh - 0.5) * 2.0 / bh])
                rho = np.linalg.solve(np.array([[1.0, 1.0], [rk, 1.0]]), rhs)
                tables["corr_c2"][i] = -alpha_t * bh * rho[0] / rk
                tables["corr_d2"][i] = -alpha_t * bh * rho[1]
        return _Coefficients(**tables)

    @cached_property
    def _corrector_enabled(self) -> np.ndarray:
        return np.array([i > 0 and (i - 1) not in self.disable_corrector for i in range(self.num_steps)])

    # --------------------------------------------------------------------------------- pure functions
    def init_state(self, sample: PyTree) -> UniPCState:
        """Empty history for a sample pytree (zeros; never read before being written)."""
        zeros = jax.tree.map(lambda x: jnp.zeros(jnp.shape(x), jnp.float32), sample)
        zero = jnp.zeros((), jnp.int32)
        return UniPCState(zeros, zeros, zeros, zero, zero)

    def step(
        self, state: UniPCState, model_output: PyTree, step_index: int | jax.Array, sample: PyTree
    ) -> tuple[PyTree, UniPCState]:
        """One UniPC step from ``sigmas[step_index]`` to ``sigmas[step_index + 1]``.

        ``model_output`` is the flow velocity at ``sample`` (same pytree structure), or a stale one for a
        skipped DiT step. Returns ``(prev_sample, new_state)``; prev_sample keeps the sample's dtypes.
        """
        if isinstance(step_index, int) and not 0 <= step_index < self.num_steps:
            raise ValueError(f"step_index must be in [0, {self.num_steps}), got {step_index}")
        i = jnp.asarray(step_index, jnp.int32)
        c = {k: jnp.asarray(v, jnp.float32)[i] for k, v in self._coefficients._asdict().items()}
        sigma = jnp.asarray(self.sigmas)[i]

        x0 = jax.tree.map(
            lambda x, v: x.astype(jnp.float32) - sigma * v.astype(jnp.float32), sample, model_output
        )
        x_in = jax.tree.map(lambda x: x.astype(jnp.float32), sample)

        # UniC: correct the current sample using this step's x0 (order of the previous predictor).
        use_corrector = (state.lower_order_nums > 0) & jnp.asarray(self._corrector_enabled)[i]
        corr_second = state.last_order == 2
        corr_c2 = jnp.where(corr_second, c["corr_c2"], 0.0)
        corr_d = jnp.where(corr_second, c["corr_d2"], c["corr_d1"])

        def correct(x: jax.Array, last: jax.Array, m0: jax.Array, m1: jax.Array, mt: jax.Array) -> jax.Array:
            corrected = c["corr_a"] * last + c["corr_b"] * m0 + corr_c2 * (m1 - m0) + corr_d * (mt - m0)
            return jnp.where(use_corrector, corrected, x)

        x_in = jax.tree.map(correct, x_in, state.last_sample, state.prev_x0, state.prev_prev_x0, x0)

        # UniP: predictor order with warm-up and (optionally) lower order on the final steps.
        order = jnp.minimum(self.solver_order, state.lower_order_nums + 1)
        if self.lower_order_final:
            order = jnp.minimum(order, self.num_steps - i)
        pred_c2 = jnp.where(order == 2, c["pred_c2"], 0.0)
        x_next = jax.tree.map(
            lambda x, m0, m1: c["pred_a"] * x + c["pred_b"] * m0 + pred_c2 * (m1 - m0),
            x_in,
            x0,
            state.prev_x0,
        )

        new_state = UniPCState(
            last_sample=x_in,
            prev_x0=x0,
            prev_prev_x0=state.prev_x0,
            lower_order_nums=jnp.minimum(state.lower_order_nums + 1, self.solver_order),
            last_order=order.astype(jnp.int32),
        )
        prev_sample = jax.tree.map(lambda y, x: y.astype(jnp.asarray(x).dtype), x_next, sample)
        return prev_sample, new_state


def denoise(
    schedule: UniPCSchedule,
    velocity_fn: Callable[[PyTree, jax.Array, jax.Array], PyTree],
    noise: PyTree,
    run_model: Sequence[bool] | None = None,
) -> PyTree:
    """Run the whole chain in one ``lax.fori_loop`` (jit-compatible).

    ``velocity_fn(sample, timestep, step_index)`` returns the flow velocity pytree (shaped like the
    sample); ``timestep`` is the int32 model-facing timestep. ``run_model[i]`` False reuses the last
    velocity at step i (the reference's DiT skipping); step 0 must run the model.
    """
    n = schedule.num_steps
    mask = (True,) * n if run_model is None else tuple(bool(m) for m in run_model)
    if len(mask) != n:
        raise ValueError(f"run_model must have {n} entries (one per step), got {len(mask)}")
    if not mask[0]:
        raise ValueError("run_model[0] must be True: the first step has no previous velocity to reuse")
    mask_arr = jnp.asarray(mask)
    timesteps = jnp.asarray(schedule.timesteps)

    def body(i: jax.Array, carry: tuple[PyTree, UniPCState, PyTree]) -> tuple[PyTree, UniPCState, PyTree]:
        sample, state, last_v = carry
        v = lax.cond(
            mask_arr[i],
            lambda: jax.tree.map(lambda a: a.astype(jnp.float32), velocity_fn(sample, timesteps[i], i)),
            lambda: last_v,
        )
        sample, state = schedule.step(state, v, i, sample)
        return sample, state, v

    zeros = jax.tree.map(lambda x: jnp.zeros(jnp.shape(x), jnp.float32), noise)
    sample, _, _ = lax.fori_loop(0, n, body, (noise, schedule.init_state(noise), zeros))
    return sample
