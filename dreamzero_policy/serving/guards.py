"""Safety guards between the policy and the robot: bounds, non-finite actions, inference deadlines.

Every action the robot receives passes ``ActionGuard.filter``: it is clamped to ``[low, high]``
(defaults: the dataset's action min/max), and a NaN/inf action is never passed on: the guard keeps the
last safe action and raises ``NonFiniteActionError`` carrying it, so the caller can send that and
decide what to do next. ``ActionGuard.on_late`` applies the configured response to an inference that
missed its deadline.
"""

from __future__ import annotations

import logging
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

import numpy as np

log = logging.getLogger(__name__)
DEADLINE_RESPONSES = ("hold", "raise", "continue")


class UnsafeActionError(RuntimeError):
    """Base of the guard errors. ``safe_action`` is what the robot should be sent instead."""

    def __init__(self, message: str, safe_action: np.ndarray):
        super().__init__(message)
        self.safe_action = safe_action


class NonFiniteActionError(UnsafeActionError):
    """The policy produced NaN or inf; ``safe_action`` is the last safe action (held)."""


class DeadlineExceededError(UnsafeActionError):
    """Inference took longer than the deadline and the configured response is 'raise'."""

    def __init__(self, message: str, safe_action: np.ndarray, latency_s: float):
        super().__init__(message, safe_action)
        self.latency_s = latency_s


def bounds_from_stats(
    stats: Mapping[str, Mapping[str, Any]], key: str = "action", low: str = "min", high: str = "max"
) -> tuple[np.ndarray, np.ndarray]:
    """(low, high) from LeRobot dataset statistics (``stats[key]["min"/"max"]``, or "q01"/"q99")."""
    if key not in stats or low not in stats[key] or high not in stats[key]:
        raise ValueError(f"dataset stats have no {key!r} {low!r}/{high!r}; have {sorted(stats)}")
    lo = np.asarray(stats[key][low], dtype=np.float32).reshape(-1)
    hi = np.asarray(stats[key][high], dtype=np.float32).reshape(-1)
    return lo, hi


@dataclass
class ActionGuard:
    low: np.ndarray
    high: np.ndarray
    deadline_s: float | None = None  # None: no latency deadline
    on_deadline: str = "hold"  # "hold": send the last safe action; "raise"; "continue": accept it, log
    neutral: np.ndarray | None = None  # held before any safe action was seen (default: clip(0))
    clamped: int = 0
    rejected: int = 0
    late: int = 0
    _last: np.ndarray | None = field(default=None, repr=False)

    def __post_init__(self) -> None:
        self.low = np.asarray(self.low, np.float32).reshape(-1)
        self.high = np.asarray(self.high, np.float32).reshape(-1)
        if self.low.shape != self.high.shape:
            raise ValueError(f"low {self.low.shape} and high {self.high.shape} differ in shape")
        if not (np.isfinite(self.low).all() and np.isfinite(self.high).all()) or (self.low > self.high).any():
            raise ValueError("bounds must be finite with low <= high")
        if self.on_deadline not in DEADLINE_RESPONSES:
            raise ValueError(f"on_deadline must be one of {DEADLINE_RESPONSES}, got {self.on_deadline!r}")
        if self.deadline_s is not None and self.deadline_s <= 0:
            raise ValueError("deadline_s must be positive (or None)")
        base = np.zeros_like(self.low) if self.neutral is None else np.asarray(self.neutral, np.float32)
        if base.shape != self.low.shape:
            raise ValueError(f"neutral action shape {base.shape} != bounds shape {self.low.shape}")
        self.neutral = np.clip(base, self.low, self.high)

    @classmethod
    def from_stats(cls, stats: Mapping[str, Mapping[str, Any]], **kw: Any) -> ActionGuard:
        lo, hi = bounds_from_stats(stats)
        return cls(lo, hi, **kw)

    @property
    def last_safe(self) -> np.ndarray:
        return (self.neutral if self._last is None else self._last).copy()

    def reset(self) -> None:
        """A new episode: the held action falls back to the neutral one."""
        self._last = None

    def filter(self, action: Any) -> np.ndarray:
        """The action the robot may receive (clamped); raises ``NonFiniteActionError`` for NaN/inf."""
        a = np.asarray(action, dtype=np.float32).reshape(-1)
        if a.shape != self.low.shape:
            raise ValueError(f"action shape {a.shape} != bounds shape {self.low.shape}")
        if not np.isfinite(a).all():
            self.rejected += 1
            raise NonFiniteActionError(
                f"non-finite action {a.tolist()} withheld; holding the last safe action", self.last_safe
            )
        out = np.clip(a, self.low, self.high)
        if not np.array_equal(out, a):
            self.clamped += 1
        self._last = out
        return out.copy()

    def on_late(self, latency_s: float) -> np.ndarray | None:
        """The response to an action that is not ready ``latency_s`` after it was needed. Returns the
        held action to send now ('hold'), raises ``DeadlineExceededError`` ('raise'), or returns None
        when the deadline is not passed yet or the response is 'continue' (keep waiting)."""
        if self.deadline_s is None or latency_s <= self.deadline_s:
            return None
        self.late += 1
        msg = f"inference not ready after {latency_s * 1e3:.1f} ms (deadline {self.deadline_s * 1e3:.1f} ms)"
        if self.on_deadline == "raise":
            raise DeadlineExceededError(msg, self.last_safe, latency_s)
        if self.on_deadline == "hold":
            log.warning("%s; holding the last safe action", msg)
            return self.last_safe
        log.warning("%s; waiting for it", msg)
        return None
