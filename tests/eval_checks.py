"""Checks of an ``eval_info.json`` written by ``lerobot-eval`` that can actually fail."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np


def check_eval_info(path: Path, n_episodes: int) -> dict:
    """The overall figures must be the aggregate of the per-episode results, one per episode."""
    info = json.loads(Path(path).read_text())
    overall = info["overall"]
    successes = [s for t in info["per_task"] for s in t["metrics"]["successes"]]
    sums = [s for t in info["per_task"] for s in t["metrics"]["sum_rewards"]]
    assert overall["n_episodes"] == n_episodes == len(successes) == len(sums), (overall, successes)
    assert all(isinstance(s, bool) for s in successes), successes
    assert overall["pc_success"] == 100.0 * float(np.mean(successes)), (overall["pc_success"], successes)
    assert np.isclose(overall["avg_sum_reward"], float(np.mean(sums)))
    return overall
