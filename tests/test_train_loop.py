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

import numpy as np
import pytest

from dreamzero_envs.record import record

PY = [sys.executable, "-m", "dreamzero_policy.training.cli"]
ROOT = Path(__file__).resolve().parents[1]
BASE = ["--steps=40", "--batch_size=2", "--progress=false", "--windows.augment=false", "--policy.device=cpu"]


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


def _data(data: dict, name: str) -> list[str]:
    return [f"--dataset.root={data[name]}", f"--dataset.repo_id=local/dz_{name}"]


def _losses(out: Path) -> dict[int, float]:
    return {r["step"]: r["loss"] for r in map(json.loads, open(out / "metrics.jsonl"))}


@pytest.fixture(scope="module")
def data(tmp_path_factory) -> dict[str, Path]:
    root = tmp_path_factory.mktemp("data")
    reach = record("reach", 2, root / "reach", image_size=32, max_episode_steps=30).root
    arm = record("reach_arm", 2, root / "arm", image_size=32, cameras="top,wrist", max_episode_steps=30).root
    return {"reach": reach, "arm": arm, "tmp": root}


def test_tiny_overfits_fixed_batch(data) -> None:
    # One fixed batch and fixed noise/timestep draw (--overfit): the model must memorise it.
    out = data["tmp"] / "overfit"
    _cli([*_data(data, "reach"), f"--output_dir={out}", *BASE, "--steps=80", "--windows.overfit=true",
          "--save_freq=80", "--optim.lr=0.003", "--optim.end_lr_ratio=1.0"])
    losses = _losses(out)
    first, last = losses[1], min(losses[s] for s in range(76, 81))
    assert first / last >= 10.0, (first, last)
    assert (out / "loss_curve.png").stat().st_size > 0


def _final_state(run: Path, step: int) -> dict:
    import jax
    import orbax.checkpoint as ocp

    flat = jax.tree_util.tree_flatten_with_path(ocp.StandardCheckpointer().restore(run / "checkpoints" / str(step) / "state"))[0]
    return {jax.tree_util.keystr(k): np.asarray(v) for k, v in flat}


def _committed(run: Path) -> int:
    steps = [int(p.name) for p in (run / "checkpoints").glob("*") if p.name.isdigit()] if (run / "checkpoints").is_dir() else []
    return max(steps, default=0)


def _kill_when(cmd: list[str], ready, rng: np.random.Generator) -> None:
    """Start a training process, SIGKILL it once ``ready()`` holds (plus a random delay up to 0.3 s)."""
    proc = subprocess.Popen(cmd, env=_env(), stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    deadline = time.time() + 400
    while not ready() and time.time() < deadline and proc.poll() is None:
        time.sleep(0.005)
    time.sleep(float(rng.uniform(0.0, 0.3)))
    os.kill(proc.pid, signal.SIGKILL)
    proc.wait()


def test_kill9_at_random_moments_then_resume_equals_an_uninterrupted_run(data) -> None:
    steps = 10
    common = [*_data(data, "reach"), *BASE, f"--steps={steps}", "--save_freq=2", "--keep_last=2",
              "--windows.augment=true", "--resume=true"]
    ref = data["tmp"] / "ref"
    _cli([*common, f"--output_dir={ref}"])
    run = data["tmp"] / "killed"
    cmd = PY + [*common, f"--output_dir={run}"]
    rng = np.random.default_rng(0)
    ckpt = run / "checkpoints"
    # 1: after the first checkpoint commits; 2: while a checkpoint is being written (orbax's tmp dir
    # exists); 3: at a random moment of the next start (possibly before it restored anything).
    _kill_when(cmd, lambda: _committed(run) >= 2, rng)
    first = _committed(run)
    _kill_when(cmd, lambda: ckpt.is_dir() and any("tmp" in p.name for p in ckpt.iterdir()), rng)
    t0 = time.time()
    _kill_when(cmd, lambda: time.time() - t0 > float(rng.uniform(5.0, 25.0)), rng)
    # A torn last line, as a kill in the middle of a write leaves it.
    with open(run / "metrics.jsonl", "a") as f:
        f.write('{"step": 99, "loss": 0.')
    last = _committed(run)
    assert last >= first >= 2
    out = _cli([*common, f"--output_dir={run}"])
    assert f"resumed from step {last}" in out.stdout  # the resumed process really starts at the saved step
    assert [r["step"] for r in map(json.loads, open(run / "metrics.jsonl"))] == list(range(1, steps + 1))
    ref_l, run_l = _losses(ref), _losses(run)
    for s in range(1, steps + 1):
        assert abs(ref_l[s] - run_l[s]) <= 1e-6 * abs(ref_l[s]), (s, ref_l[s], run_l[s])
    want, got = _final_state(ref, steps), _final_state(run, steps)
    assert want.keys() == got.keys()
    for k in want:
        np.testing.assert_allclose(got[k], want[k], rtol=1e-6, atol=1e-7, err_msg=k)


def test_a_wrong_dataset_root_is_a_clear_error_and_creates_nothing(tmp_path) -> None:
    from dreamzero_policy.training.cli import main

    missing = tmp_path / "no_such_dataset"
    with pytest.raises(SystemExit, match="does not exist"):
        main(["--dataset.repo_id=local/x", f"--dataset.root={missing}", f"--output_dir={tmp_path / 'out'}"])
    assert not missing.exists() and not (tmp_path / "out").exists()
    (tmp_path / "empty").mkdir()
    with pytest.raises(SystemExit, match="holds no LeRobotDataset"):
        main(["--dataset.repo_id=local/x", f"--dataset.root={tmp_path / 'empty'}"])


def test_export_flags_parse_and_a_missing_source_is_not_created(tmp_path, capsys) -> None:
    from dreamzero_policy.training.cli import main

    src = tmp_path / "no_run"
    with pytest.raises(SystemExit, match="no training run"):
        main([f"--export_from={src}", f"--export_to={tmp_path / 'x'}"])
    assert not src.exists() and not (tmp_path / "x").exists()
    with pytest.raises(SystemExit):
        main(["--export_from"])  # a usage error from the parser, not an IndexError
    assert "export_from" in capsys.readouterr().err


def test_help_shows_lerobot_shape_and_a_saved_config_reloads(data, tmp_path, capsys) -> None:
    from dreamzero_policy.training.cli import main, parse_train_config
    from dreamzero_policy.training.run import TRAIN_CONFIG, load_train_config

    with pytest.raises(SystemExit):
        main(["--help"])
    help_text = capsys.readouterr().out
    for flag in ("--dataset.repo_id", "--dataset.root", "--policy.preset", "--output_dir", "--save_freq",
                 "--log_freq", "--resume", "--wandb.enable", "--windows.num_chunks", "--mesh.fsdp", "--lora.rank"):
        assert flag in help_text, flag
    for gone in ("--dataset_root", "--repo_id", "--view_height ", "--preset "):
        assert gone not in help_text, gone
    # The overfit run above saved its config: it reloads into the same DreamZeroJaxConfig.
    saved = load_train_config(data["tmp"] / "overfit" / TRAIN_CONFIG)
    again = parse_train_config([*_data(data, "reach"), f"--output_dir={data['tmp'] / 'overfit'}", *BASE,
                                "--steps=80", "--windows.overfit=true", "--save_freq=80", "--optim.lr=0.003",
                                "--optim.end_lr_ratio=1.0"])
    from dreamzero_policy.training.run import preflight

    again.resume = True
    preflight(again)  # sets the dataset's features, as the run did
    assert type(saved.policy).__name__ == "DreamZeroJaxConfig"
    assert saved.policy.latents_mean is None and saved.policy == again.policy
    assert saved.windows.overfit and saved.steps == 80
    exported = data["tmp"] / "overfit" / "pretrained_model"
    card = (exported / "README.md").read_text()
    assert "local/dz_reach" in card and "Not measured yet" in card
    assert {"config.json", "model.safetensors", "policy_preprocessor.json"} <= {p.name for p in exported.iterdir()}


def test_lerobot_train_stops_at_once_with_the_equivalent_command(data) -> None:
    lerobot_train = Path(sys.executable).parent / "lerobot-train"
    proc = subprocess.run([str(lerobot_train), "--policy.type=dreamzero_jax", "--policy.preset=small",
                           "--dataset.repo_id=local/dz_reach", f"--dataset.root={data['reach']}", "--steps=10",
                           "--env.type=pusht"], capture_output=True, text=True, env=_env(), timeout=300)
    assert proc.returncode != 0
    assert ("dreamzero-train --policy.preset=small --dataset.repo_id=local/dz_reach "
            f"--dataset.root={data['reach']} --steps=10") in proc.stderr, proc.stderr[-3000:]
    assert "--env.type=pusht" in proc.stderr  # named as not used


def test_a_used_output_dir_needs_resume_and_an_offline_push_is_refused(data, tmp_path, monkeypatch) -> None:
    from huggingface_hub import constants

    from dreamzero_policy.training.cli import main

    with pytest.raises(SystemExit, match="already holds a run"):
        main([*_data(data, "reach"), f"--output_dir={data['tmp'] / 'overfit'}"])
    monkeypatch.setattr(constants, "HF_HUB_OFFLINE", True)
    with pytest.raises(SystemExit, match="HF_HUB_OFFLINE"):
        main([*_data(data, "reach"), f"--output_dir={tmp_path / 'x'}", "--policy.repo_id=me/policy"])
    assert not (tmp_path / "x").exists()
    with pytest.raises(SystemExit, match="does not support --dataset.streaming"):
        main([*_data(data, "reach"), "--dataset.streaming=true"])


@pytest.mark.slow
def test_finetune_new_embodiment_from_pretrained(data) -> None:
    pre_run = data["tmp"] / "pre"
    _cli([*_data(data, "reach"), f"--output_dir={pre_run}", *BASE, "--steps=2", "--save_freq=2"])
    pretrained = pre_run / "pretrained_model"  # exported when the run finished
    assert {"config.json", "model.safetensors", "README.md"} <= {p.name for p in pretrained.iterdir()}
    ft = data["tmp"] / "ft"
    # The README's recipe: reach_arm has action/state dim 3 (reach: 2), two cameras; embodiment 2 is added
    # by growing num_embodiments 2 -> 3; LoRA. --policy.path loads the saved config, the recipe's and the
    # command line's --policy.* apply on top.
    _cli(["--config_path=configs/finetune_new_embodiment.yaml", f"--policy.path={pretrained}",
          *_data(data, "arm"), f"--output_dir={ft}", *BASE, "--steps=3", "--save_freq=3"], cwd=ROOT)
    assert len(_losses(ft)) == 3
    exported = _cli([f"--export_from={ft}", f"--export_to={data['tmp'] / 'ft_pre'}"])
    assert "exported" in exported.stdout
    from safetensors.numpy import load_file

    w = load_file(str(data["tmp"] / "ft_pre" / "model.safetensors"))
    assert w["dit/action_decoder/layer2/W"].shape[0] == 3
    cfg = json.loads((data["tmp"] / "ft_pre" / "config.json").read_text())
    assert cfg["num_embodiments"] == 3 and cfg["embodiment_id"] == 2 and cfg["cameras"] == ["top", "wrist"]
    assert cfg["output_features"]["action"]["shape"] == [3]
