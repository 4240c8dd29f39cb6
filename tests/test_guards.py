"""Safety guards: clamping to (dataset) bounds, NaN/inf never passed on, inference deadline responses."""

import time

import numpy as np
import pytest

from dreamzero_policy.serving.async_exec import ChunkExecutor
from dreamzero_policy.serving.guards import (
    ActionGuard,
    DeadlineExceededError,
    NonFiniteActionError,
    UnsafeActionError,
    bounds_from_stats,
)

STATS = {"action": {"min": np.array([-1.0, -0.5]), "max": np.array([1.0, 0.5])}}


def test_clamp_to_dataset_bounds():
    g = ActionGuard.from_stats(STATS)
    np.testing.assert_array_equal(g.filter([2.0, -3.0]), np.array([1.0, -0.5], np.float32))
    np.testing.assert_array_equal(g.filter([0.25, 0.1]), np.array([0.25, 0.1], np.float32))
    assert g.clamped == 1
    lo, hi = bounds_from_stats(STATS)
    assert lo.tolist() == [-1.0, -0.5] and hi.tolist() == [1.0, 0.5]
    with pytest.raises(ValueError, match="shape"):
        g.filter([0.0, 0.0, 0.0])
    with pytest.raises(ValueError, match="no 'action'"):
        bounds_from_stats({"observation.state": {"min": [0], "max": [1]}})


@pytest.mark.parametrize("bad", [np.nan, np.inf, -np.inf])
def test_non_finite_action_is_withheld_and_last_safe_held(bad):
    g = ActionGuard.from_stats(STATS)
    with pytest.raises(NonFiniteActionError) as e:  # before any safe action: the neutral one is held
        g.filter([bad, 0.0])
    np.testing.assert_array_equal(e.value.safe_action, [0.0, 0.0])
    g.filter([0.3, 0.9])
    with pytest.raises(UnsafeActionError) as e:  # catchable through the base class too
        g.filter([0.1, bad])
    np.testing.assert_array_equal(e.value.safe_action, np.array([0.3, 0.5], np.float32))
    assert g.rejected == 2
    g.reset()
    np.testing.assert_array_equal(g.last_safe, [0.0, 0.0])


def test_non_finite_chunk_never_reaches_the_robot():
    chunk = np.array([[0.1, 0.1], [np.nan, 0.0], [0.2, 0.2]], np.float32)
    ex = ChunkExecutor(lambda obs: chunk, ActionGuard.from_stats(STATS), asynchronous=False)
    sent = [ex.step(0)]
    with pytest.raises(NonFiniteActionError) as e:
        ex.step(1)
    sent.append(e.value.safe_action)  # what a robot loop sends on this error
    sent.append(ex.step(2))
    assert all(np.isfinite(a).all() for a in sent)
    np.testing.assert_array_equal(np.stack(sent), np.array([[0.1, 0.1], [0.1, 0.1], [0.2, 0.2]], np.float32))
    ex.close()


def _slow_plan(delay: float):
    def plan(obs):
        time.sleep(delay)
        return np.full((4, 2), 0.1 * (1 + obs), np.float32)

    return plan


def test_deadline_hold_sends_last_safe_action_then_resumes():
    g = ActionGuard.from_stats(STATS, deadline_s=0.02, on_deadline="hold")
    ex = ChunkExecutor(_slow_plan(0.15), g, asynchronous=False)
    first = ex.step(0)  # no safe action yet: the neutral action is held
    np.testing.assert_array_equal(first, [0.0, 0.0])
    assert g.late == 1 and ex.held_steps == 1
    while ex.held_steps == ex.t:  # keep ticking until the chunk arrives
        a = ex.step(0)
    np.testing.assert_allclose(a, [0.1, 0.1])
    assert ex.handovers[0].dropped == 0  # held steps executed nothing of the plan
    ex.close()


def test_deadline_raise_and_continue():
    g = ActionGuard.from_stats(STATS, deadline_s=0.02, on_deadline="raise")
    ex = ChunkExecutor(_slow_plan(0.1), g, asynchronous=False)
    with pytest.raises(DeadlineExceededError) as e:
        ex.step(0)
    assert e.value.latency_s > 0.02 and e.value.safe_action.tolist() == [0.0, 0.0]
    ex.close()
    g = ActionGuard.from_stats(STATS, deadline_s=0.02, on_deadline="continue")
    ex = ChunkExecutor(_slow_plan(0.1), g, asynchronous=False)
    np.testing.assert_allclose(ex.step(0), [0.1, 0.1])  # waited for the late chunk
    assert g.late == 1 and ex.handovers[0].dropped == 0
    ex.close()


def test_bad_guard_config():
    with pytest.raises(ValueError, match="on_deadline"):
        ActionGuard([0.0], [1.0], on_deadline="ignore")
    with pytest.raises(ValueError, match="low <= high"):
        ActionGuard([1.0], [0.0])
