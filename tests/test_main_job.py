"""The MetaWorld job at toy size: every stage runs (record, DreamZero, LeRobot's ACT and Diffusion Policy
through lerobot-train, lerobot-eval per task, random baseline) and its outputs are well-formed."""

from __future__ import annotations

import json
import os
import threading
import time
from pathlib import Path

os.environ.setdefault("MUJOCO_GL", "egl")

from eval.main_job import PEER_NAMES, MetaworldJobConfig, evaluations, run, run_evaluations  # noqa: E402


def test_main_job_metaworld_toy(tmp_path):
    cfg = MetaworldJobConfig(out=str(tmp_path / "job"), tasks="button-press-v3,drawer-open-v3", toy=True)
    summary = run(cfg)
    tasks = ["button-press-v3", "drawer-open-v3"]
    assert summary["tasks"] == tasks
    assert set(summary["success_pct"]) == {"DreamZero (tiny)", "DreamZero, instruction blanked",
                                           *PEER_NAMES.values(), "random actions"}
    for name, r in summary["success_pct"].items():
        assert sorted(r["per_task"]) == tasks, name
        # one episode per task in toy mode: success is 0 or 100 per task, the mean of those overall
        assert all(v in (0.0, 100.0) for v in r["per_task"].values()), (name, r)
        assert abs(r["overall"] - sum(r["per_task"].values()) / len(tasks)) < 1e-9, (name, r)
    for kind, p in summary["peers"].items():
        assert p["steps"] == 2 and p["policy_flags"]["pretrained_backbone_weights"] == "null", kind
    assert summary["demonstrations"]["episodes"] == {t: 2 for t in tasks}
    out = tmp_path / "job"
    info = json.loads((out / "eval_dreamzero" / "eval_info.json").read_text())
    assert [e["task_group"] for e in info["per_task"]] == tasks
    assert list((out / "eval_dreamzero" / "videos").rglob("pred_episode_*.mp4"))  # imagined videos
    # the training curve is redrawn with DreamZero's closed-loop success marked at the step it was evaluated
    assert summary["loss_curve"]["success_marked"] == [
        [cfg.steps, summary["success_pct"]["DreamZero (tiny)"]["overall"], "success, context kept"]]
    assert (out / "train" / "loss_curve.png").stat().st_size > 0
    table = (out / "table.md").read_text()
    assert all(name in table for name in summary["success_pct"]) and "| mean |" in table
    assert summary["training_budget_s"] > 0 and set(summary["seconds"]) >= {
        "record demonstrations", "DreamZero: train and export", "evaluate random actions"}

    # Run again (as after a kill): finished stages are reused, DreamZero is not retrained nor re-evaluated, and
    # the peers' budget is still DreamZero's whole training time, not the few seconds of the second run.
    meta = out / "train" / "pretrained_model" / "train_meta.json"
    stamps = {p: p.stat().st_mtime_ns for p in (meta, out / "eval_dreamzero.json", out / "eval_random.json")}
    again = run(MetaworldJobConfig(out=str(out), tasks="button-press-v3,drawer-open-v3", toy=True, peers=[]))
    assert {p: p.stat().st_mtime_ns for p in stamps} == stamps
    assert again["success_pct"]["DreamZero (tiny)"] == summary["success_pct"]["DreamZero (tiny)"]
    assert again["training_budget_s"] == summary["training_budget_s"]
    assert not again["training_budget_undercounted"]


def test_context_ablation_flag_adds_the_reset_row_on_the_same_policy():
    peers = {"act": {"policy_dir": "/p/act"}}
    kept = evaluations(MetaworldJobConfig(context_ablation=True), Path("/p/dz"), peers)
    assert [e[0] for e in kept] == ["DreamZero (small)", "DreamZero, context reset every chunk",
                                    "DreamZero, instruction blanked", PEER_NAMES["act"]]
    reset = kept[1]
    assert reset[1] == Path("/p/dz") and reset[3] == ["--policy.max_chunks_before_reset=1"]
    for cfg in (MetaworldJobConfig(context_ablation=False), MetaworldJobConfig(num_chunks=1)):
        assert "DreamZero, context reset every chunk" not in [e[0] for e in evaluations(cfg, Path("/p/dz"), peers)]


class _ConcurrencyProbe:
    """A fake evaluation that records how many run at once and in what order they start."""

    def __init__(self):
        self.lock, self.running, self.peak, self.started = threading.Lock(), 0, 0, []

    def __call__(self, pdir, sub, extra):
        with self.lock:
            self.started.append(sub)
            self.running += 1
            self.peak = max(self.peak, self.running)
        time.sleep(0.05)
        with self.lock:
            self.running -= 1
        return {"sub": sub, "extra": extra}


def test_evaluations_run_eval_workers_at_a_time_diffusion_first():
    evals = [(f"row {i}", Path(f"/p/{i}"), f"eval_{i}", [f"--flag={i}"]) for i in range(5)]
    evals.append(("Diffusion", Path("/p/d"), "eval_diffusion", []))
    for workers in (1, 2, 3):
        probe = _ConcurrencyProbe()
        results = run_evaluations(evals, workers, probe)
        assert probe.peak == workers
        assert probe.started[0] == "eval_diffusion"
        assert list(results) == [e[0] for e in evals]  # table order, whatever the finishing order
        assert all(results[name] == {"sub": sub, "extra": extra} for name, _, sub, extra in evals)
