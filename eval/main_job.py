"""The MetaWorld job, end to end, on a fresh machine with no pretrained weights and no Hub:

  1. record MetaWorld's scripted experts on several tasks whose object is placed at random (so only the
     camera says where it is) into one LeRobotDataset v3, the task sentence as the instruction
  2. with ``--vae_steps>0`` (off by default: 2,800 steps of ``--preset=small_wm`` cost ~23 min), fit the
     preset's own VAE to their frames (``dreamzero-fit-vae``; held-out PSNR); otherwise it stays random
  3. train DreamZero with ``dreamzero-train`` (windows of 2 chunks); its loss curve is redrawn with the
     closed-loop success marked at the step it was evaluated
  4. train LeRobot's ACT and Diffusion Policy with ``lerobot-train`` on the same dataset, each with the
     wall-clock seconds DreamZero's training took (VAE fit + frozen-encoder pass + DiT training)
  5. evaluate every policy with ``lerobot-eval --env.type=dz_metaworld`` per task on the same held-out
     seeds, plus DreamZero with its context reset every chunk, DreamZero with the instruction blanked and a
     random policy; print and save one table (and, with a fitted VAE, the imagined futures scored per task)

    uv run --frozen --all-extras python -m eval.main_job [--demos_per_task=30] [--tasks=...] [--out=outputs/main_job]

``--toy=true`` runs the same stages at toy size (a CI check that every stage's output is well-formed).
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import asdict, dataclass, field
from pathlib import Path

import draccus

# Headless rendering for the in-process stages (recording, random baseline); set before MuJoCo is imported.
os.environ.setdefault("MUJOCO_GL", "egl")

from dreamzero_policy.training.curves import save_training_curves
from dreamzero_policy.training.metrics_log import MetricsLog
from eval.job_steps import SecondsLedger, Stage, console_script, subprocess_env

DEFAULT_TASKS = "button-press-v3,drawer-open-v3,door-open-v3"
# LeRobot's peer defaults are set for 100k-step runs (ACT: constant lr 1e-5; Diffusion: 500 warm-up steps).
# In a budget of a few hundred steps they would barely move, so each gets a short-run setting, stated in
# the table: ACT at Diffusion's default lr, Diffusion with a 20-step warm-up.
PEER_SHORT_RUN_FLAGS = {"act": ["--policy.optimizer_lr=1e-4", "--policy.optimizer_lr_backbone=1e-4"],
                        "diffusion": ["--policy.scheduler_warmup_steps=20"]}
PEER_NAMES = {"act": "ACT (LeRobot)", "diffusion": "Diffusion Policy (LeRobot)"}


@dataclass
class MetaworldJobConfig:
    out: str = "outputs/main_job"
    tasks: str = DEFAULT_TASKS  # comma list of MetaWorld v3 tasks
    demos_per_task: int = 30
    demo_episode_length: int = 200  # the experts finish these tasks in ~60-120 steps
    image_size: int = 64
    preset: str = "small"
    steps: int = 1500
    batch_size: int = 16
    lr: float = 3e-4
    num_chunks: int = 2  # chunks per training window = chunks the evaluated context keeps
    context_ablation: bool = True  # also evaluate the policy with its context reset after every chunk
    anchor_stride: int = 4  # frozen encoders run on every 4th window start (one per latent frame)
    # 0 keeps the preset's randomly initialised VAE. Fitting it (dreamzero-fit-vae, as the reach job does)
    # costs minutes that count against the shared training budget, so it is off here; with
    # --preset=small_wm --vae_steps=2800 it reached 28.5 dB held-out in 23 min, the policy on its latents 87 %
    # (README).
    vae_steps: int = 0
    vae_batch: int = 2
    vae_frames: int = 48
    vae_holdout: int = 3  # episodes the VAE never trains on
    imagination_episodes: int = 3  # held-out episodes per task whose imagined futures are scored (with a fitted VAE)
    peers: list[str] = field(default_factory=lambda: ["act", "diffusion"])
    peer_batch_size: int = 8
    peer_steps: int | None = None  # None: as many as the training budget allows (measured by a probe run)
    eval_episodes_per_task: int = 20
    eval_seed: int = 100_000  # held out: demonstrations use seeds from 0
    eval_batch: int = 20  # envs stepped together: one batch per task
    eval_workers: int = 2  # lerobot-eval runs at a time
    eval_episode_length: int = 150
    inference_steps: int = 4
    n_action_steps: int = 8
    toy: bool = False
    fresh: bool = False  # delete `out` first (otherwise finished stages are reused)
    timings: dict = field(default_factory=dict)

    def __post_init__(self) -> None:
        if self.toy:
            self.demos_per_task, self.demo_episode_length, self.image_size = 2, 200, 32
            self.preset, self.steps, self.batch_size, self.anchor_stride = "tiny", 2, 2, 8
            self.peer_steps = 2  # the VAE stage is left at its default (off); the reach toy job covers it
            self.eval_episodes_per_task, self.eval_batch, self.eval_episode_length = 1, 1, 16
            self.inference_steps, self.n_action_steps, self.peer_batch_size = 2, 0, 2
            self.context_ablation = False  # one lerobot-eval less in CI; the reach toy job runs that ablation
        unknown = set(self.peers) - set(PEER_NAMES)
        if unknown:
            raise ValueError(f"--peers: unknown {sorted(unknown)}; choose from {sorted(PEER_NAMES)}")
        if self.eval_workers < 1:
            raise ValueError(f"--eval_workers must be >= 1, got {self.eval_workers}")
        if self.vae_steps and self.demos_per_task * len(self.task_list) <= self.vae_holdout:
            raise ValueError("--demos_per_task must leave training episodes beside the VAE's held-out ones")

    @property
    def task_list(self) -> list[str]:
        return task_names(self.tasks)


def task_names(tasks: str) -> list[str]:
    """A comma list of task names -> the names (blanks dropped)."""
    return [t.strip() for t in tasks.split(",") if t.strip()]


def _has_checkpoint(run_dir: Path) -> bool:
    """A step saved by an earlier, interrupted run (orbax names step directories by number)."""
    return any(p.name.isdigit() for p in (run_dir / "checkpoints").glob("*"))


def _evaluate(cfg: MetaworldJobConfig, policy_dir: Path, out: Path, extra: list[str]) -> dict:
    """lerobot-eval of one policy; a finished evaluation with the same settings is reused when the job is
    run again (after a kill), like every other stage."""
    from eval.peers import eval_policy

    done = out.with_name(out.name + ".json")
    settings = {"policy": str(policy_dir), "tasks": cfg.tasks, "episodes": cfg.eval_episodes_per_task,
                "seed": cfg.eval_seed, "episode_length": cfg.eval_episode_length, "image_size": cfg.image_size,
                "extra": extra}
    if done.exists() and (saved := json.loads(done.read_text()))["settings"] == settings:
        return saved["result"]
    r = eval_policy(policy_dir, cfg.tasks, cfg.eval_episodes_per_task, cfg.eval_seed, cfg.eval_episode_length,
                    cfg.image_size, out, cfg.eval_batch, extra)
    result = {"per_task": {k: v["pc_success"] for k, v in r["per_task"].items()}, "overall": r["pc_success"],
              "eval_s": r["eval_s"], "wall_s": round(r["wall_s"], 1)}
    done.write_text(json.dumps({"settings": settings, "result": result}))
    return result


Evaluation = tuple[str, Path, str, list[str]]  # table row, policy directory, output subfolder, lerobot-eval flags


def evaluations(cfg: MetaworldJobConfig, policy_dir: Path, peers: dict[str, dict]) -> list[Evaluation]:
    """Every policy the job evaluates on the same seeds, in table order."""
    evals = [(f"DreamZero ({cfg.preset})", policy_dir, "eval_dreamzero", ["--policy.save_predicted_video=true"])]
    if cfg.num_chunks > 1 and cfg.context_ablation:
        # Same policy and seeds, the KV-cached context dropped after every chunk: what memory across chunks buys.
        evals.append(("DreamZero, context reset every chunk", policy_dir, "eval_reset_every_chunk",
                      ["--policy.max_chunks_before_reset=1"]))
    evals.append(("DreamZero, instruction blanked", policy_dir, "eval_blank", ["--policy.blank_instruction=true"]))
    return evals + [(PEER_NAMES[kind], Path(info["policy_dir"]), f"eval_{kind}", []) for kind, info in peers.items()]


def run_evaluations(evals: list[Evaluation], workers: int,
                    evaluate: Callable[[Path, str, list[str]], dict]) -> dict[str, dict]:
    """``evaluate(policy_dir, subfolder, flags)`` of every evaluation, ``workers`` at a time (one lerobot-eval
    leaves a core idle through its single-threaded start-up and MuJoCo rendering); results in table order."""
    with ThreadPoolExecutor(max_workers=workers) as pool:
        # Diffusion Policy's is the longest (10 DDIM steps per chunk): started first, the others fill in.
        order = sorted(evals, key=lambda e: e[2] != "eval_diffusion")
        futures = {name: pool.submit(evaluate, pdir, sub, extra) for name, pdir, sub, extra in order}
        return {name: futures[name].result() for name, *_ in evals}


def run(cfg: MetaworldJobConfig) -> dict:
    from dreamzero_envs.record_metaworld import record_metaworld
    from eval.baselines import metaworld_random_success
    from eval.peers import train_peer

    out = Path(cfg.out)
    if cfg.fresh and out.exists():
        shutil.rmtree(out)
    out.mkdir(parents=True, exist_ok=True)
    env = subprocess_env(out)
    os.environ.update(env)  # the lerobot-train / lerobot-eval runs of eval.peers inherit it (XLA cache, offline)
    t = cfg.timings
    data, vae_dir, train_dir = out / "demos", out / "vae", out / "train"
    policy_dir = train_dir / "pretrained_model"
    repo_id = "local/dz_metaworld"
    dataset = [f"--dataset.repo_id={repo_id}", f"--dataset.root={data}"]
    views = [f"--policy.preset={cfg.preset}", f"--policy.view_height={cfg.image_size}",
             f"--policy.view_width={cfg.image_size}", "--policy.device=cpu", "--policy.cameras=[observation.image]"]

    with Stage(t, "record demonstrations"):
        if not (data / "meta" / "info.json").exists() or not (out / "demos.json").exists():
            if data.exists():
                shutil.rmtree(data)
            s = record_metaworld(cfg.tasks, cfg.demos_per_task, data, seed=0, repo_id=repo_id,
                                 image_size=cfg.image_size, episode_length=cfg.demo_episode_length)
            (out / "demos.json").write_text(json.dumps({"episodes": s.episodes, "expert_failures_dropped": s.failed,
                                                        "frames": s.frames}))
            print(f"{sum(s.episodes.values())} episodes, {s.frames} frames -> {data}; expert failures dropped: {s.failed}")
    demos = json.loads((out / "demos.json").read_text())

    # DreamZero's training seconds, kept across runs of the job: a stage finished earlier is skipped and keeps
    # its time, so a job killed after it still gives the peers the whole budget. A stage killed midway and
    # resumed counts only its resumed part: the table then says the budget is undercounted.
    ledger = SecondsLedger(out / "dreamzero_training_seconds.json")
    account = lambda name, ran: ledger.account(t, name, ran)  # noqa: E731 - after the stage's `with` block

    vae_report, start = None, views
    if cfg.vae_steps:
        name = "DreamZero: fit the VAE to the frames"
        with Stage(t, name):
            if ran := not (vae_dir / "vae_fit.json").exists():
                ledger["resumed"] = ledger.get("resumed", False) or _has_checkpoint(vae_dir)
                subprocess.run([console_script("dreamzero-fit-vae"), *dataset, *views, f"--output_dir={vae_dir}",
                                f"--steps={cfg.vae_steps}", f"--batch_size={cfg.vae_batch}",
                                f"--frames_per_step={cfg.vae_frames}", "--resume=true",
                                f"--holdout_episodes={cfg.vae_holdout}", f"--save_freq={max(1, cfg.vae_steps // 2)}"],
                               check=True, env=env)
        account(name, ran)
        vae_report = json.loads((vae_dir / "vae_fit.json").read_text())
        start = [f"--policy.path={vae_dir / 'pretrained_model'}"]  # preset, views and cameras saved there

    train_args = [
        *dataset, *start,
        f"--output_dir={train_dir}", f"--policy.num_inference_steps={cfg.inference_steps}", "--policy.cfg_scale=1.0",
        f"--policy.n_action_steps={cfg.n_action_steps}", f"--policy.max_chunks_before_reset={cfg.num_chunks}",
        f"--steps={cfg.steps}", f"--batch_size={cfg.batch_size}", f"--save_freq={max(1, cfg.steps // 4)}",
        f"--windows.num_chunks={cfg.num_chunks}", f"--optim.lr={cfg.lr}", f"--precompute.dir={out / 'precomputed'}",
        f"--precompute.anchor_stride={cfg.anchor_stride}", "--resume=true",
    ]
    name = "DreamZero: precompute frozen encoders"
    with Stage(t, name):
        if ran := not (out / "precomputed" / "stats.json").exists():
            subprocess.run([console_script("dreamzero-train"), *train_args, "--precompute.only=true"], check=True, env=env)
    account(name, ran)
    name = "DreamZero: train and export"
    with Stage(t, name):
        meta = policy_dir / "train_meta.json"
        if ran := not (meta.exists() and json.loads(meta.read_text())["step"] == cfg.steps):
            ledger["resumed"] = ledger.get("resumed", False) or _has_checkpoint(train_dir)
            subprocess.run([console_script("dreamzero-train"), *train_args], check=True, env=env)
    account(name, ran)
    budget = sum(v for k, v in ledger.items() if k != "resumed")  # all of DreamZero's training

    peers: dict[str, dict] = {}
    for kind in cfg.peers:
        record = out / f"peer_{kind}.json"
        with Stage(t, f"{PEER_NAMES[kind]}: lerobot-train"):
            if not record.exists():  # a finished peer is reused when the job is run again
                run_dir = out / f"peer_{kind}"
                if run_dir.exists():  # an interrupted run: lerobot-train refuses to overwrite it
                    shutil.rmtree(run_dir)
                info = train_peer(kind, data, repo_id, run_dir, budget, seed=0, batch_size=cfg.peer_batch_size,
                                  image_size=cfg.image_size, extra=PEER_SHORT_RUN_FLAGS[kind], steps=cfg.peer_steps)
                record.write_text(json.dumps(info | {"short_run_flags": PEER_SHORT_RUN_FLAGS[kind]}, indent=2))
            peers[kind] = json.loads(record.read_text())

    evals = evaluations(cfg, policy_dir, peers)
    with Stage(t, f"evaluate {len(evals)} policies with lerobot-eval, {cfg.eval_workers} at a time"):
        results = run_evaluations(evals, cfg.eval_workers,
                                  lambda pdir, sub, extra: _evaluate(cfg, pdir, out / sub, extra))
    with Stage(t, "evaluate random actions"):
        seeds = range(cfg.eval_seed, cfg.eval_seed + cfg.eval_episodes_per_task)
        done, settings = out / "eval_random.json", [cfg.task_list, [seeds.start, seeds.stop], cfg.eval_episode_length]
        if done.exists() and (saved := json.loads(done.read_text()))["settings"] == settings:
            per_task = saved["per_task"]
        else:
            per_task = metaworld_random_success(cfg.task_list, seeds, cfg.eval_episode_length)
            done.write_text(json.dumps({"settings": settings, "per_task": per_task}))
        results["random actions"] = {"per_task": per_task, "overall": sum(per_task.values()) / len(per_task)}

    imagination = None
    if cfg.vae_steps and cfg.imagination_episodes:
        # Only with a fitted VAE: a random one decodes any latent to noise, so there is nothing to score.
        with Stage(t, "imagined futures, scored"):
            imagination = _imagination(cfg, policy_dir, out)

    # The trainer's curve, with the closed-loop success of this policy marked at the step it was evaluated.
    step = json.loads((policy_dir / "train_meta.json").read_text())["step"]
    marks = [(step, results[name]["overall"], label) for name, label in
             ((evals[0][0], "success, context kept"), ("DreamZero, context reset every chunk",
                                                       "success, context reset every chunk")) if name in results]
    curve = save_training_curves(MetricsLog(train_dir / "metrics.jsonl").read(), train_dir / "loss_curve.png", marks)

    summary = {
        "success_pct": results, "tasks": cfg.task_list, "imagined_future_psnr_db": imagination,
        "loss_curve": {"path": str(curve), "success_marked": [list(m) for m in marks]},
        "eval": {"episodes_per_task": cfg.eval_episodes_per_task, "seeds": [seeds.start, seeds.stop - 1],
                 "episode_length": cfg.eval_episode_length},
        "demonstrations": demos, "training_budget_s": round(budget, 1), "vae": vae_report,
        "training_budget_undercounted": bool(ledger.get("resumed")),
        "peers": {k: {f: v[f] for f in ("steps", "batch_size", "train_s", "wall_s", "policy_flags", "short_run_flags")}
                  for k, v in peers.items()},
        "seconds": t, "total_seconds": round(sum(t.values()), 1),
        "config": {k: v for k, v in asdict(cfg).items() if k != "timings"},
    }
    (out / "summary.json").write_text(json.dumps(summary, indent=2))
    table = format_table(summary)
    (out / "table.md").write_text(table + "\n")
    print("\n" + table)
    print("time per stage (s):", json.dumps(t))
    print(f"summary: {out / 'summary.json'}")
    return summary


def _imagination(cfg: MetaworldJobConfig, policy_dir: Path, out: Path) -> dict:
    """Per task: imagined frames against the frames that really followed, on the first held-out seeds, next to
    copying the last observed frame (``eval.imagination``); a labelled picture per task."""
    from dreamzero_envs.metaworld_env import DzMetaworldEnv
    from eval.imagination import load_policy, score_imagination

    policy, pre, post = load_policy(policy_dir)
    seeds = list(range(cfg.eval_seed, cfg.eval_seed + cfg.imagination_episodes))
    per_task = {}
    for task in cfg.task_list:
        make = lambda task=task: DzMetaworldEnv(task, episode_length=cfg.eval_episode_length,  # noqa: E731
                                                image_size=cfg.image_size)
        r = score_imagination(policy, make, seeds, out / f"imagination_{task}.png", pre=pre, post=post)
        per_task[task] = r["per_chunk"]
    return {"seeds": [seeds[0], seeds[-1]], "per_task": per_task}


def format_table(summary: dict) -> str:
    """Task x policy -> success %, with the mean over tasks; the budget and seeds under it."""
    tasks = summary["tasks"]
    lines = ["| policy | " + " | ".join(tasks) + " | mean |", "|---|" + "---:|" * (len(tasks) + 1)]
    for name, r in summary["success_pct"].items():
        cells = [f"{r['per_task'][task]:.0f} %" for task in tasks]
        lines.append(f"| {name} | " + " | ".join(cells) + f" | {r['overall']:.0f} % |")
    e = summary["eval"]
    lines += ["", f"{e['episodes_per_task']} held-out episodes per task (seeds {e['seeds'][0]}..{e['seeds'][1]}, "
                  f"{e['episode_length']} steps at most). Training budget: {summary['training_budget_s']:.0f} s of "
                  "wall clock, DreamZero's whole training (frozen-encoder pass included); each peer trained by "
                  "lerobot-train for that long:"]
    if summary.get("training_budget_undercounted"):
        lines.append("- (DreamZero's training was interrupted and resumed: the budget counts only the resumed part.)")
    if vae := summary.get("vae"):
        lines.append(f"- Fitted VAE: held-out reconstruction PSNR {vae['held_out_psnr_db']:.1f} dB "
                     f"(train {vae['train_psnr_db']:.1f} dB).")
    if imagined := summary.get("imagined_future_psnr_db"):
        for task, per_chunk in imagined["per_task"].items():
            cells = ", ".join(f"chunk {k}: {v['imagined_psnr_db']:.1f} dB imagined / {v['copy_last_psnr_db']:.1f} dB "
                              "copy-last" for k, v in per_chunk.items())
            lines.append(f"- Imagined futures, {task} (seeds {imagined['seeds'][0]}..{imagined['seeds'][1]}): {cells}")
    for kind, p in summary["peers"].items():
        flags = " ".join([*(f"--policy.{k}={v}" for k, v in p["policy_flags"].items()), *p["short_run_flags"]])
        lines.append(f"- {PEER_NAMES[kind]}: {p['steps']} steps of batch {p['batch_size']} in {p['train_s']:.0f} s "
                     f"(no pretrained backbone: nothing is downloaded); `{flags}`")
    return "\n".join(lines)


def main() -> None:
    run(draccus.parse(MetaworldJobConfig))


if __name__ == "__main__":
    main()
