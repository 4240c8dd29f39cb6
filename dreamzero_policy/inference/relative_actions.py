"""Relative actions at inference: the model predicts some action dims relative to the state at the chunk
start (the reference's relative joint positions); the policy adds that anchor state back.

The policy works in LeRobot's normalised space (the preprocessor normalised the state, the postprocessor
will un-normalise the action), so the offset is applied as  norm_a(unnorm_a(r) + unnorm_s(s))  with the
same q01/q99 statistics the processors use; the postprocessor then returns exactly  r + s.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np

QUANTILE_EPS = 1e-8  # LeRobot's NormalizerProcessorStep epsilon for degenerate quantiles


def to_quantile_space(x: np.ndarray, q01: np.ndarray, q99: np.ndarray) -> np.ndarray:
    """LeRobot's QUANTILES normalisation: q01 -> -1, q99 -> +1 (not clamped)."""
    return 2.0 * (x - q01) / np.where(q99 - q01 == 0, QUANTILE_EPS, q99 - q01) - 1.0


def from_quantile_space(x: np.ndarray, q01: np.ndarray, q99: np.ndarray) -> np.ndarray:
    return (x + 1.0) * np.where(q99 - q01 == 0, QUANTILE_EPS, q99 - q01) / 2.0 + q01


@dataclass(frozen=True)
class RelativeActions:
    dims: tuple[int, ...]
    action_q01: np.ndarray
    action_q99: np.ndarray
    state_q01: np.ndarray
    state_q99: np.ndarray

    @classmethod
    def from_stats(cls, dims: Sequence[int], stats: Mapping[str, Mapping[str, object]]) -> RelativeActions:
        try:
            get = lambda k, s: np.asarray(stats[k][s], np.float64).reshape(-1)
            return cls(tuple(dims), get("action", "q01"), get("action", "q99"),
                       get("observation.state", "q01"), get("observation.state", "q99"))
        except KeyError as e:
            raise ValueError(f"relative actions need q01/q99 statistics of action and observation.state; missing {e}") from None

    @classmethod
    def from_pretrained_dir(cls, dims: Sequence[int], directory: str | Path) -> RelativeActions:
        from safetensors.numpy import load_file

        files = sorted(Path(directory).glob("policy_preprocessor_step_*_normalizer_processor.safetensors"))
        if not files:
            raise ValueError(f"relative actions need the normalizer statistics saved in {directory}; none found")
        flat = load_file(str(files[0]))
        stats: dict[str, dict[str, np.ndarray]] = {}
        for key, value in flat.items():
            feature, _, stat = key.rpartition(".")
            stats.setdefault(feature, {})[stat] = value
        return cls.from_stats(dims, stats)

    def to_absolute(self, actions: np.ndarray, state: np.ndarray) -> np.ndarray:
        """actions (B, n, A) and state (B, S), both normalised -> normalised absolute actions."""
        a_dim, s_dim = actions.shape[-1], state.shape[-1]
        a = from_quantile_space(actions.astype(np.float64), self.action_q01[:a_dim], self.action_q99[:a_dim])
        s = from_quantile_space(state.astype(np.float64), self.state_q01[:s_dim], self.state_q99[:s_dim])
        d = list(self.dims)
        a[..., d] += s[:, None, d]
        return to_quantile_space(a, self.action_q01[:a_dim], self.action_q99[:a_dim]).astype(np.float32)
