"""End-to-end training on tiny recorded datasets: overfit, SIGKILL + resume, export, new-embodiment fine-tune."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import pytest

from envs.record import record

PY = [sys.executable, "-m", "dreamzero_policy.training.cli"]
BASE = ["--steps", "40", "--batch_size", "2", "--progress", "false", "--augment", "false"]


# One persistent XLA cache for this module's subprocesses: the runs compile the same executables, and
# loading them instead of recompiling saves minutes on 2 cores (results are bit-identical).
XLA_CACHE = tempfile.mkdtemp(prefix="dz_test_xla_")


def _env() -> dict[str, str]:
    return dict(os.environ, JAX_PLATFORMS="cpu", JAX_COMPILATION_CACHE_DIR=XLA_CACHE,
                JAX_PERSISTENT_CACHE_MIN_COMPILE_TIME_SECS="0.5")


def _cli(args: list[str], **kw) -> subprocess.CompletedProcess:
    proc = subprocess.run(PY + args, capture_output=True, text=True, env=_env(), timeout=600, **kw)
    assert proc.returncode == 0, proc.stderr[-3000:]
    return proc


def _losses(out: Path) -> dict[int, float]:
    return {r["step"]: r["loss"] for r in map(json.loads, open(out / "metrics.jsonl"))}


@pytest.fixture(scope="module")
def data(tmp_path_factory) -> dict[str, Path]:
    root = tmp_path_factory.mktemp("data")
    reach = record("reach", 2, root / "reach", image_size=32, max_episode_steps=30).root
    arm = record("reach_arm", 2, root / "arm", image_size=32, cameras="top", max_episode_steps=30).root
    return {"reach": reach, "arm": arm, "tmp": root}


def test_tiny_overfits_fixed_batch(data) -> None:
    # One fixed batch and fixed noise/timestep draw (--overfit): the model must memorise it.
    out = data["tmp"] / "overfit"
    _cli(
        [
            "--dataset_root",
            str(data["reach"]),
            "--repo_id",
            "local/dz_reach",
            "--output_dir",
            str(out),
            *BASE,
            "--steps",
            "80",
            "--overfit",
            "true",
            "--save_every",
            "80",
            "--optim.lr",
            "0.003",
            "--optim.end_lr_ratio",
            "1.0",
        ]
    )
    losses = _losses(out)
    first, last = losses[1], min(losses[s] for s in range(76, 81))
    assert first / last >= 10.0, (first, last)
    assert (out / "loss_curve.png").stat().st_size > 0


def test_sigkill_then_resume_reproduces_losses(data) -> None:
    common = [
        "--dataset_root",
        str(data["reach"]),
        "--repo_id",
        "local/dz_reach",
        *BASE,
        "--save_every",
        "2",
        "--keep_last",
        "2",
        "--augment",
        "true",
    ]
    ref = data["tmp"] / "ref"
    _cli([*common, "--output_dir", str(ref), "--stop_at_step", "8"])
    run = data["tmp"] / "killed"
    proc = subprocess.Popen(
        PY + [*common, "--output_dir", str(run)],
        env=_env(),
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    deadline = time.time() + 400
    while not (run / "checkpoints" / "2").is_dir() and time.time() < deadline and proc.poll() is None:
        time.sleep(0.02)
    os.kill(proc.pid, signal.SIGKILL)
    assert proc.wait() == -signal.SIGKILL
    _cli([*common, "--output_dir", str(run), "--stop_at_step", "8"])
    ref_l, run_l = _losses(ref), _losses(run)
    resumed = sorted(s for s in run_l if s > 2)
    assert resumed[-1] == 8
    for s in range(3, 9):
        assert abs(ref_l[s] - run_l[s]) <= 1e-6 * abs(ref_l[s]), (s, ref_l[s], run_l[s])


@pytest.mark.slow
def test_finetune_new_embodiment_from_pretrained(data) -> None:
    pre_run = data["tmp"] / "pre"
    _cli(
        [
            "--dataset_root",
            str(data["reach"]),
            "--repo_id",
            "local/dz_reach",
            "--output_dir",
            str(pre_run),
            *BASE,
            "--steps",
            "2",
            "--save_every",
            "2",
        ]
    )
    pretrained = data["tmp"] / "pretrained"
    _cli(["--export_from", str(pre_run), "--export_to", str(pretrained)])
    assert {"config.json", "model.safetensors"} <= {p.name for p in pretrained.iterdir()}
    ft = data["tmp"] / "ft"
    # reach_arm: action/state dim 3 (reach: 2); embodiment 2 added by growing num_embodiments 2 -> 3; LoRA.
    _cli(
        [
            "--init_from",
            str(pretrained),
            "--dataset_root",
            str(data["arm"]),
            "--repo_id",
            "local/dz_reach_arm",
            "--output_dir",
            str(ft),
            *BASE,
            "--steps",
            "3",
            "--save_every",
            "3",
            "--num_embodiments",
            "3",
            "--embodiment_id",
            "2",
            "--lora.rank",
            "4",
        ]
    )
    assert len(_losses(ft)) == 3
    exported = _cli(["--export_from", str(ft), "--export_to", str(data["tmp"] / "ft_pre")])
    assert "exported" in exported.stdout
    from safetensors.numpy import load_file

    w = load_file(str(data["tmp"] / "ft_pre" / "model.safetensors"))
    assert w["dit/action_decoder/layer2/W"].shape[0] == 3
    cfg = json.loads((data["tmp"] / "ft_pre" / "config.json").read_text())
    assert cfg["num_embodiments"] == 3 and cfg["embodiment_id"] == 2
    assert cfg["output_features"]["action"]["shape"] == [3]
