"""A fixed-rate robot control loop over ``ChunkExecutor``, with guard handling and period jitter.

The loop is robot-agnostic: ``observe()`` returns (policy batch, episode_done) and ``act(action)``
sends one action. A guard error never stops the loop: its ``safe_action`` is sent instead, and a
non-finite plan makes the executor re-plan at the next step.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from dreamzero_policy.serving.async_exec import ChunkExecutor
from dreamzero_policy.serving.guards import UnsafeActionError


@dataclass
class LoopStats:
    hz: float
    periods_s: list[float] = field(default_factory=list)
    steps: int = 0
    episodes: int = 0
    guard_events: int = 0
    reset_periods: list[int] = field(default_factory=list)  # indices of periods that contain a reset

    def jitter(self, skip_resets: bool = False) -> dict[str, float]:
        """Control-period figures in ms: mean, std, p50/p99/max of |period - 1/hz|. ``skip_resets``
        leaves out the periods after an episode reset (the first plan of an episode blocks)."""
        p = np.asarray(self.periods_s) * 1e3
        if skip_resets:
            skip = {i + 1 for i in self.reset_periods} | set(self.reset_periods)
            p = np.asarray([x for i, x in enumerate(p) if i not in skip])
        if p.size == 0:
            return {}
        dev = np.abs(p - 1e3 / self.hz)
        return {
            "target_ms": 1e3 / self.hz,
            "mean_ms": float(p.mean()),
            "std_ms": float(p.std()),
            "dev_p50_ms": float(np.percentile(dev, 50)),
            "dev_p99_ms": float(np.percentile(dev, 99)),
            "dev_max_ms": float(dev.max()),
            "n": int(p.size),
        }


def sleep_until(t: float) -> None:
    """Sleep coarsely, then spin the last millisecond (time.sleep alone overshoots by ~0.1-1 ms)."""
    while True:
        left = t - time.perf_counter()
        if left <= 0:
            return
        time.sleep(left - 1e-3 if left > 2e-3 else 0)


def run_loop(
    executor: ChunkExecutor,
    observe: Callable[[], tuple[Any, bool]],
    act: Callable[[np.ndarray], None],
    hz: float,
    steps: int,
    on_episode_end: Callable[[], None] | None = None,
    stats: LoopStats | None = None,
) -> LoopStats:
    """Run ``steps`` control steps at ``hz``; resets executor (and calls ``on_episode_end``) when
    ``observe`` reports the episode is over."""
    if hz <= 0 or steps < 0:
        raise ValueError("hz must be positive and steps >= 0")
    stats = stats or LoopStats(hz)
    period = 1.0 / hz
    nxt = time.perf_counter()
    last_start: float | None = None
    for _ in range(steps):
        sleep_until(nxt)
        start = time.perf_counter()
        if last_start is not None:
            stats.periods_s.append(start - last_start)
        last_start = start
        nxt += period
        if nxt < start:  # overran a whole period: do not try to catch up with a burst
            nxt = start + period
        batch, done = observe()
        if done:
            executor.reset()
            stats.episodes += 1
            stats.reset_periods.append(len(stats.periods_s))
            if on_episode_end is not None:
                on_episode_end()
            batch, _ = observe()
        try:
            action = executor.step(batch)
        except UnsafeActionError as e:
            stats.guard_events += 1
            action = e.safe_action
        act(action)
        stats.steps += 1
    return stats
