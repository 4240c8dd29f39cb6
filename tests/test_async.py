"""Asynchronous chunk execution: the next plan runs while the current chunk executes, from the latest
observation, and the hand-over drops exactly the stale prefix (every action runs at the step it was
planned for)."""

import time

import numpy as np
import pytest

from dreamzero_policy.serving.async_exec import ChunkExecutor
from dreamzero_policy.serving.guards import ActionGuard

BIG = ActionGuard(np.full(2, -1e6), np.full(2, 1e6))


def tagged_plan(chunk: int, delay: float, seen: list):
    """action i of a plan made from observation `obs` is [obs, i]: its intended step is obs + i."""

    def plan(obs):
        seen.append(obs)
        time.sleep(delay)
        return np.stack([np.full(chunk, obs), np.arange(chunk)], axis=1).astype(np.float32)

    return plan


def run(ex: ChunkExecutor, steps: int, period: float) -> tuple[list[np.ndarray], list[float]]:
    out, busy = [], []
    for _ in range(steps):
        t = time.perf_counter()
        out.append(ex.step(ex.executed))  # the observation is "how far the robot got"
        busy.append(time.perf_counter() - t)
        time.sleep(max(0.0, period - busy[-1]))
    return out, busy


@pytest.mark.parametrize("chunk,k,threshold", [(24, 8, 4), (6, 0, 3)])
def test_handover_order_execute_k_and_all(chunk, k, threshold):
    seen = []
    ex = ChunkExecutor(tagged_plan(chunk, 0.025, seen), BIG, execute_k=k, threshold=threshold)
    acts, busy = run(ex, 40, 0.01)
    ex.close()
    for e, a in enumerate(acts):
        assert a[0] + a[1] == e, f"step {e} executed action {int(a[1])} of the plan from step {int(a[0])}"
    used = k or chunk
    assert max(a[1] for a in acts) < used  # only the first k of each chunk is ever executed
    hs = ex.handovers
    assert len(hs) >= 4
    for h in hs[1:]:
        assert h.dropped == h.t_arrival - h.t_obs > 0  # planned ahead, while the previous chunk ran
        assert h.dropped + h.used == used
    assert seen[: len(hs)] == [
        h.t_obs for h in hs
    ]  # each plan used the observation of the step that started it
    # async: plans start when <= threshold actions remain, and the control thread did not wait for them
    # except for the very first chunk
    assert all(b < 0.02 for b in busy[1:]), max(busy[1:])


def test_synchronous_mode_executes_whole_chunks_without_drops():
    seen = []
    ex = ChunkExecutor(tagged_plan(4, 0.0, seen), BIG, asynchronous=False)
    acts, _ = run(ex, 10, 0.0)
    ex.close()
    assert [int(a[1]) for a in acts] == [0, 1, 2, 3, 0, 1, 2, 3, 0, 1]
    assert seen == [0, 4, 8] and all(h.dropped == 0 for h in ex.handovers)


def test_latest_frames_recorded_between_plans_and_reset():
    recorded, resets = [], []
    ex = ChunkExecutor(
        tagged_plan(4, 0.0, []),
        BIG,
        asynchronous=False,
        record_fn=recorded.append,
        reset_fn=lambda: resets.append(1),
    )
    for i in range(6):
        ex.step(100 + i)
    assert recorded == [101, 102, 103, 105]  # frames not used to start a plan go to the context
    ex.reset()
    assert ex.t == 0 and ex.executed == 0 and not ex.queued_steps and resets == [1]
    assert ex.step(7)[0] == 7
    ex.close()


def test_planner_error_reaches_the_control_thread():
    def boom(obs):
        raise RuntimeError("planner failed")

    ex = ChunkExecutor(boom, BIG)
    with pytest.raises(RuntimeError, match="planner failed"):
        ex.step(0)
    ex.close()
