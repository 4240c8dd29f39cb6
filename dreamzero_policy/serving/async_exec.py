"""Chunked action execution with asynchronous re-planning and guarded output.

Executed actions are counted e = 0, 1, ... (a step where the guard held the last safe action does not
count: the robot did not move on). A chunk planned from the observation taken when e0 actions had been
executed holds the actions for e0, e0 + 1, ...: its action i is meant for the (e0 + i)-th. Hand-over
rule: when it arrives after e1 >= e0 executed actions, its stale prefix (the e1 - e0 actions for steps
the previous chunk already executed) is dropped and the rest REPLACES whatever remained of the
previous chunk, so every executed action is the one its chunk meant for that very step. Only the first ``execute_k`` actions of a chunk are used
(0: all; the reference executes 8 of 24).

With ``asynchronous=True`` the next plan starts in a background thread, from the latest observation,
as soon as the queue has ``threshold`` actions or fewer left; the control thread never blocks while
actions remain. When the queue is empty the controller waits for the pending plan up to the guard's
deadline, then applies the guard's response (hold the last safe action / raise / keep waiting).
"""

from __future__ import annotations

import time
from collections import deque
from collections.abc import Callable
from concurrent.futures import Future, ThreadPoolExecutor
from concurrent.futures import TimeoutError as FutureTimeout
from dataclasses import dataclass
from typing import Any

import numpy as np

from dreamzero_policy.serving.guards import ActionGuard


@dataclass(frozen=True)
class Handover:
    """One chunk arrival: planned after ``t_obs`` executed actions, arrived after ``t_arrival``."""

    t_obs: int
    t_arrival: int
    dropped: int  # stale prefix length
    used: int  # actions queued from it
    latency_s: float


class ChunkExecutor:
    def __init__(
        self,
        plan_fn: Callable[[Any], np.ndarray],
        guard: ActionGuard,
        execute_k: int = 0,
        threshold: int = 0,
        asynchronous: bool = True,
        record_fn: Callable[[Any], None] | None = None,
        reset_fn: Callable[[], None] | None = None,
    ) -> None:
        if execute_k < 0 or threshold < 0:
            raise ValueError("execute_k and threshold must be >= 0")
        if execute_k and threshold >= execute_k:
            raise ValueError(f"threshold {threshold} must be < execute_k {execute_k}")
        self.plan_fn, self.guard, self.execute_k, self.threshold = plan_fn, guard, execute_k, threshold
        self.asynchronous, self.record_fn, self.reset_fn = asynchronous, record_fn, reset_fn
        self._pool = ThreadPoolExecutor(max_workers=1, thread_name_prefix="dz-plan")
        self._future: Future | None = None
        self._future_t = 0
        self._future_start = 0.0
        self._queue: deque[tuple[int, np.ndarray]] = deque()
        self.t = 0
        self.executed = 0
        self._latest: Any = None
        self._latest_e = 0
        self.handovers: list[Handover] = []
        self.held_steps = 0

    # ------------------------------------------------------------------ control thread API
    def step(self, obs: Any) -> np.ndarray:
        """The guarded action for this control step (its observation ``obs``). May raise the guard's
        ``UnsafeActionError``s (their ``safe_action`` is what to send) or an error of the planner."""
        needed_at = time.perf_counter()
        self._latest, self._latest_e = obs, self.executed  # obs shows the robot after `executed` actions
        self._collect(block=False)
        submitted = False
        if not self._queue and self._future is None:
            self._submit(obs)
            submitted = True
        if not self._queue:
            held = self._wait(needed_at)
            if held is not None:
                self.t += 1  # held: wall-clock ticks advance, executed actions do not
                self.held_steps += 1
                return held
        _, action = self._queue.popleft()
        self.executed += 1
        if self.asynchronous and self._future is None and len(self._queue) <= self.threshold:
            self._submit(obs)
            submitted = True
        if not submitted and self.record_fn is not None:
            self.record_fn(obs)
        self.t += 1
        return self.guard.filter(action)

    def reset(self) -> None:
        """New episode: discard the pending plan and the queue, restart time, reset guard and policy."""
        if self._future is not None:
            try:
                self._future.result()
            except Exception:  # noqa: BLE001 - the episode is over; its plan's failure no longer matters
                pass
            self._future = None
        self._queue.clear()
        self.t = self.executed = 0
        self.guard.reset()
        if self.reset_fn is not None:
            self.reset_fn()

    def close(self) -> None:
        self._pool.shutdown(wait=True)

    @property
    def queued_steps(self) -> list[int]:
        return [t for t, _ in self._queue]

    # ------------------------------------------------------------------ internals
    def _submit(self, obs: Any) -> None:
        self._future_t, self._future_start = self._latest_e, time.perf_counter()
        self._future = self._pool.submit(self.plan_fn, obs)

    def _wait(self, needed_at: float) -> np.ndarray | None:
        deadline = self.guard.deadline_s
        if deadline is None:
            self._collect(block=True)
            return None
        remaining = deadline - (time.perf_counter() - needed_at)
        try:
            self._future.result(timeout=max(remaining, 0.0))
        except FutureTimeout:
            held = self.guard.on_late(time.perf_counter() - needed_at)  # raises for "raise"
            if held is not None:
                return held
        self._collect(block=True)
        return None if self._queue else self._wait(needed_at)  # an all-stale chunk: wait for the next

    def _collect(self, block: bool) -> None:
        f = self._future
        if f is None or (not block and not f.done()):
            return
        chunk = np.asarray(f.result(), dtype=np.float32)  # re-raises a planner error here
        latency = time.perf_counter() - self._future_start
        self._future = None
        if chunk.ndim != 2 or chunk.shape[0] == 0:
            raise ValueError(f"plan_fn must return a (n, action_dim) chunk, got shape {chunk.shape}")
        if self.execute_k:
            chunk = chunk[: self.execute_k]
        t0, t1 = self._future_t, self.executed
        fresh = [(t0 + i, chunk[i]) for i in range(t1 - t0, chunk.shape[0])]
        self._queue = deque(fresh)
        self.handovers.append(Handover(t0, t1, min(t1 - t0, chunk.shape[0]), len(fresh), latency))
        if not self._queue:  # everything went stale while planning: plan again from the latest frame
            self._submit(self._latest)
