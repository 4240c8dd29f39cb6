"""LeRobot's own ACT and Diffusion Policy as peers of DreamZero: trained by the real `lerobot-train` on the
same LeRobotDataset for the same CPU wall-clock budget, evaluated by the real `lerobot-eval` on the same seeds.

    from eval.peers import train_peer, eval_policy
    run = train_peer("act", Path("data/dz_metaworld"), "local/dz_metaworld", Path("outputs/peers/act"),
                     budget_s=1800, seed=0, batch_size=8)
    res = eval_policy(Path(run["policy_dir"]), "button-press-v3,drawer-open-v3", 50, 100_000, 500, 64,
                      Path("outputs/peers/act_eval"), batch_size=10, extra=[])

`lerobot-train` has no time limit, so a probe run (killed once it has timed enough steps) measures the
seconds per step from the wall-clock times its per-step log lines arrive, and the real run gets
`steps = budget / seconds per step`; its training loop is then timed the same way. The command building,
the step arithmetic and the eval_info.json parsing are pure functions (tested in tests/test_peers.py).
"""

from __future__ import annotations

import importlib.util
import itertools
import json
import math
import os
import re
import shutil
import signal
import statistics
import subprocess
import time
from collections.abc import Callable
from pathlib import Path

from eval.job_steps import console_script

PEER_KINDS = ("act", "diffusion")
# Diffusion Policy's DDIM inference (Chi et al. use 10 DDIM steps on real robots); LeRobot's default is
# DDPM with all 100 training timesteps at inference, i.e. 10x the CPU cost per action chunk in lerobot-eval.
DIFFUSION_INFERENCE_STEPS = 10
# LeRobot's Diffusion defaults come from PushT's 96 px frames randomly cropped to 84 px; keep that ratio.
DIFFUSION_CROP_RATIO = 84 / 96

# The lines lerobot-train logs that time the training loop (lerobot/scripts/lerobot_train.py).
_START_RE = re.compile(r"Start offline training")
_STEP_RE = re.compile(r"\bstep:\S+ smpl:\S+ ep:")  # MetricsTracker.__str__, once per log_freq steps
_FINAL_RE = re.compile(r"Checkpoint policy after step (\d+)")


def subprocess_env(threads: int | None = None) -> dict[str, str]:
    # No Hub access ever (weights, datasets, configs); headless MuJoCo; unbuffered so log lines are timed
    # when they are written, not when a pipe buffer fills.
    env = dict(os.environ, HF_HUB_OFFLINE="1", HF_DATASETS_OFFLINE="1", PYTHONUNBUFFERED="1")
    env.setdefault("MUJOCO_GL", "egl")
    if threads is not None:
        # torch's OpenMP pool defaults to every core; when anything else holds a core its threads wait on
        # each other: ACT at batch 8 went from 1.0 s/step (quiet, 2 threads) to ~10 s/step (one busy
        # co-tenant, 2 threads) vs 1.5 s/step (same co-tenant, 1 thread) on the 2-core dev machine.
        env |= {"OMP_NUM_THREADS": str(threads), "MKL_NUM_THREADS": str(threads)}
    return env


def peer_policy_flags(kind: str, image_size: int) -> dict[str, str]:
    """`--policy.*` settings per peer beyond LeRobot's defaults (returned so the table can state them)."""
    if kind not in PEER_KINDS:
        raise ValueError(f"kind must be one of {PEER_KINDS}, got {kind!r}")
    flags = {
        # Both default to torchvision's ImageNet ResNet18, a download; every model here starts from scratch.
        "pretrained_backbone_weights": "null",
    }
    if kind == "diffusion":
        crop = int(image_size * DIFFUSION_CROP_RATIO)
        flags |= {
            "crop_shape": f"[{crop},{crop}]",  # 84/96 of the frame, as LeRobot's PushT default
            # From-scratch backbone: Diffusion Policy's own recipe swaps BatchNorm for GroupNorm (LeRobot
            # only refuses that with pretrained weights).
            "use_group_norm": "true",
            "noise_scheduler_type": "DDIM",
            "num_inference_steps": str(DIFFUSION_INFERENCE_STEPS),
        }
    return flags


def train_command(
    kind: str,
    dataset_root: Path,
    repo_id: str,
    out_dir: Path,
    steps: int,
    seed: int,
    batch_size: int,
    image_size: int = 64,
    num_workers: int = 0,
    log_freq: int = 1,
    save_checkpoint: bool = True,
    extra: list[str] | None = None,
) -> list[str]:
    """The `lerobot-train` command line for one peer (pure)."""
    policy = [f"--policy.{k}={v}" for k, v in peer_policy_flags(kind, image_size).items()]
    return [
        console_script("lerobot-train"),
        f"--policy.type={kind}",
        f"--dataset.repo_id={repo_id}",
        f"--dataset.root={dataset_root}",
        f"--output_dir={out_dir}",
        "--policy.device=cpu",
        "--policy.push_to_hub=false",
        "--wandb.enable=false",
        f"--seed={seed}",
        f"--batch_size={batch_size}",
        f"--steps={steps}",
        # 0 workers: on 2 shared cores a spawned worker re-imports lerobot (seconds) and competes with the
        # model for the same cores, while decoding 64 px PNG frames in the main process is cheap.
        f"--num_workers={num_workers}",
        f"--log_freq={log_freq}",
        "--save_freq=0",  # only the final checkpoint: saving is time outside the measured loop
        f"--save_checkpoint={str(save_checkpoint).lower()}",
        "--env_eval_freq=0",
        *policy,
        *(extra or []),
    ]


def steps_for_budget(budget_s: float, seconds_per_step: float) -> int:
    """`budget / seconds per step`, at least 1 (pure). The first step's extra cost is left out: it is
    ~0.3 s when the machine is quiet, but one co-tenant burst made it 12 s in a probe, so it is noise."""
    if seconds_per_step <= 0:
        raise ValueError(f"seconds_per_step must be > 0, got {seconds_per_step}")
    return max(1, math.floor(budget_s / seconds_per_step))


def _fail(what: str, rc: int, log_path: Path) -> RuntimeError:
    tail = "".join(log_path.read_text(errors="replace").splitlines(keepends=True)[-15:])
    return RuntimeError(f"{what} failed (rc={rc}); log {log_path} ends:\n{tail}")


def _stream(
    cmd: list[str], log_path: Path, on_line: Callable[[str, float], bool] | None = None,
    threads: int | None = None,
) -> tuple[int, float]:
    """Run `cmd`, teeing its output to `log_path`; `on_line(line, t)` returning True stops the run (its own
    process group, so dataloader workers go too). Returns (exit code, wall seconds)."""
    log_path.parent.mkdir(parents=True, exist_ok=True)
    t0 = time.perf_counter()
    with log_path.open("w") as log:
        log.write(" ".join(cmd) + "\n")
        # text mode translates tqdm's bare \r into line ends, so its progress bar cannot hold back a line.
        proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
                                env=subprocess_env(threads), start_new_session=True)
        assert proc.stdout is not None
        stopped = False
        for line in proc.stdout:
            t = time.perf_counter() - t0
            log.write(line)
            if on_line is not None and not stopped and on_line(line, t):
                os.killpg(proc.pid, signal.SIGTERM)
                stopped = True
        rc = proc.wait()
    return (0 if stopped else rc), time.perf_counter() - t0


def probe_speed(
    kind: str, dataset_root: Path, repo_id: str, out_dir: Path, seed: int, batch_size: int,
    probe_s: float = 20.0, min_steps: int = 3, threads: int | None = None, **kw: object,
) -> dict:
    """Seconds per steady-state training step of `lerobot-train`, and the first step's seconds, from the
    arrival times of its per-step log lines (process startup, dataset loading and model building are
    before the first of them, so they are excluded). Stops after `probe_s` s of steady state."""
    start: list[float] = []
    steps: list[float] = []

    def on_line(line: str, t: float) -> bool:
        if _START_RE.search(line):
            start.append(t)
        elif _STEP_RE.search(line):
            steps.append(t)
        return len(steps) > min_steps and steps[-1] - steps[0] >= probe_s

    if out_dir.exists():
        shutil.rmtree(out_dir)
    cmd = train_command(kind, dataset_root, repo_id, out_dir, 10**7, seed, batch_size,
                        log_freq=1, save_checkpoint=False, **kw)  # type: ignore[arg-type]
    log_path = out_dir.with_name(out_dir.name + ".log")
    rc, wall = _stream(cmd, log_path, on_line, threads)
    if rc != 0 or not start or len(steps) < 2:
        raise _fail(f"lerobot-train {kind} probe", rc, log_path)
    # Median interval: a short probe on a shared machine must not be set by one co-tenant burst.
    return {"seconds_per_step": statistics.median(b - a for a, b in itertools.pairwise(steps)),
            "mean_seconds_per_step": (steps[-1] - steps[0]) / (len(steps) - 1),
            "first_step_s": steps[0] - start[0], "probe_steps": len(steps), "probe_wall_s": wall}


def train_peer(
    kind: str,
    dataset_root: Path,
    repo_id: str,
    out_dir: Path,
    budget_s: float,
    seed: int,
    batch_size: int,
    image_size: int = 64,
    num_workers: int = 0,
    probe_s: float = 20.0,
    threads: int | None = None,
    extra: list[str] | None = None,
    steps: int | None = None,
) -> dict:
    """Train one LeRobot peer with `lerobot-train` for about `budget_s` seconds of training loop
    (`steps` given: exactly that many steps, no probe; for toy runs).

    `out_dir` must not exist (lerobot-train refuses to overwrite); the probe runs in `out_dir`_probe.
    `threads`: torch CPU threads (None: torch's default, every core; use 1 per job when sharing cores)."""
    if out_dir.exists():  # lerobot-train would refuse too, but only after the probe and its startup
        raise FileExistsError(f"{out_dir} exists; lerobot-train does not overwrite a run")
    if importlib.util.find_spec("accelerate") is None:  # lerobot-train imports it first thing
        raise ImportError("lerobot-train needs `accelerate` (LeRobot's `training` extra: lerobot[training])")
    kw: dict = {"image_size": image_size, "num_workers": num_workers, "extra": extra}
    probe = None
    if steps is None:
        probe = probe_speed(kind, dataset_root, repo_id, out_dir.with_name(out_dir.name + "_probe"), seed,
                            batch_size, probe_s=probe_s, threads=threads, **kw)
        steps = steps_for_budget(budget_s, probe["seconds_per_step"])
    times: dict[str, float] = {}

    def on_line(line: str, t: float) -> bool:
        if _START_RE.search(line):
            times["start"] = t
        elif (m := _FINAL_RE.search(line)) and int(m.group(1)) == steps:
            times["end"] = t  # logged right after the last update, before the checkpoint is written
        return False

    cmd = train_command(kind, dataset_root, repo_id, out_dir, steps, seed, batch_size,
                        log_freq=max(1, steps // 20), **kw)
    log_path = out_dir.with_name(out_dir.name + ".log")
    rc, wall = _stream(cmd, log_path, on_line, threads)
    policy_dir = out_dir / "checkpoints" / "last" / "pretrained_model"
    if rc != 0 or not (policy_dir / "config.json").exists() or set(times) != {"start", "end"}:
        raise _fail(f"lerobot-train {kind}", rc, log_path)
    return {
        "kind": kind,
        "policy_dir": str(policy_dir),
        "steps": steps,
        "batch_size": batch_size,
        "seed": seed,
        "budget_s": budget_s,
        "train_s": times["end"] - times["start"],  # the training loop alone, as the budget counts it
        "wall_s": wall,  # raw: + process startup, dataset/model building and the checkpoint save
        "overhead_s": wall - (times["end"] - times["start"]),  # startup + building + saving
        "probe": probe,
        "pretrained_backbone_weights": None,  # from scratch: no ImageNet weights
        "policy_flags": peer_policy_flags(kind, image_size),
        "num_workers": num_workers,
        "threads": threads,
        "command": cmd,
        "log": str(log_path),
    }


def eval_command(
    policy_dir: Path, task: str, n_episodes_per_task: int, seed: int, episode_length: int, image_size: int,
    out_dir: Path, batch_size: int, extra: list[str] | None = None,
) -> list[str]:
    """The `lerobot-eval` command line (pure). LeRobot runs `--eval.n_episodes` episodes for EACH task of
    the comma list, with seeds seed .. seed+n-1 for every task."""
    return [
        console_script("lerobot-eval"),
        f"--policy.path={policy_dir}",
        "--policy.device=cpu",
        "--env.type=dz_metaworld",
        f"--env.task={task}",
        f"--env.episode_length={episode_length}",
        f"--env.image_size={image_size}",
        f"--eval.n_episodes={n_episodes_per_task}",
        f"--eval.batch_size={min(batch_size, n_episodes_per_task)}",
        # Synchronous vector envs: one spawned worker per env costs a lerobot import each on 2 cores.
        "--eval.use_async_envs=false",
        f"--seed={seed}",
        f"--output_dir={out_dir}",
        *(extra or []),
    ]


def parse_eval_info(info: dict, names: dict[str, list[str]] | None = None) -> dict:
    """Per-task and overall success % from lerobot-eval's eval_info.json (pure).

    Its layout: `per_task` = [{task_group, task_id, metrics: {successes: [bool per episode], ...}}],
    `per_group` = {group: {pc_success, n_episodes, ...}}, `overall` = {pc_success, n_episodes, eval_s, ...}.
    dz_metaworld makes one group per comma item; `names` ({group: [task, ...]}, from
    `dreamzero_envs.metaworld_env.parse_tasks`) names the tasks of a difficulty group, else `group/id`."""
    per_task: dict[str, dict] = {}
    for entry in info["per_task"]:
        group, tid = entry["task_group"], int(entry["task_id"])
        group_names = (names or {}).get(group)
        name = group_names[tid] if group_names else (group if tid == 0 else f"{group}/{tid}")
        succ = [bool(s) for s in entry["metrics"]["successes"]]
        per_task[name] = {"pc_success": 100.0 * sum(succ) / max(1, len(succ)), "n_episodes": len(succ)}
    overall = info["overall"]
    return {"per_task": per_task, "pc_success": overall["pc_success"], "n_episodes": overall["n_episodes"],
            "eval_s": overall["eval_s"]}


def eval_policy(
    policy_dir: Path,
    task: str,
    n_episodes_per_task: int,
    seed: int,
    episode_length: int,
    image_size: int,
    out_dir: Path,
    batch_size: int,
    extra: list[str],
    threads: int | None = None,
) -> dict:
    """Evaluate any LeRobot policy dir with `lerobot-eval` on dz_metaworld; per-task and overall success %.
    `threads` as in `train_peer`."""
    from dreamzero_envs.metaworld_env import parse_tasks

    if out_dir.exists():
        shutil.rmtree(out_dir)
    cmd = eval_command(policy_dir, task, n_episodes_per_task, seed, episode_length, image_size, out_dir,
                       batch_size, extra)
    log_path = out_dir.with_name(out_dir.name + ".log")
    rc, wall = _stream(cmd, log_path, threads=threads)
    if rc != 0 or not (out_dir / "eval_info.json").exists():
        raise _fail("lerobot-eval", rc, log_path)
    res = parse_eval_info(json.loads((out_dir / "eval_info.json").read_text()), parse_tasks(task))
    # Per vectorised env step (policy + batch_size sims), counting every episode to its limit: untrained
    # policies run that long; a success ends an episode early, so then the true time per step is higher.
    n_tasks = len(res["per_task"])
    batch = min(batch_size, n_episodes_per_task)
    max_steps = n_tasks * math.ceil(n_episodes_per_task / batch) * episode_length
    return res | {"wall_s": wall, "s_per_vector_step_full_length": res["eval_s"] / max_steps,
                  "command": cmd, "log": str(log_path)}
