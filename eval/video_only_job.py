"""Learning from video without actions, measured on MetaWorld: K labelled expert demonstrations per task,
against the same K plus M video-only episodes per task (the same experts recorded with their actions
dropped: a LeRobotDataset without an `action` feature), at the same training budget, evaluated with
`lerobot-eval` on the same held-out seeds.

  1. record K labelled episodes per task (env seeds from 0) and M action-less ones (seeds from
     --video_only_seed); the evaluation seeds (--eval_seed, default 100000) are held out from both
  2. one frozen-encoder pass over both datasets (``dreamzero-train --precompute.only`` with
     ``--video_only.*``); the labelled-only arm reads its labelled part, bit-identical for both arms
  3. train each arm with ``dreamzero-train``, same steps, batch, lr and seed; the mixed arm draws
     ``--ratio`` of every batch from the video-only episodes (video loss only for those)
  4. evaluate each arm per task; score both on the same held-out labelled episodes of every task (video and
     action loss, same noise, the action loss also per task: eval.heldout_loss); print and save one table
     (success %, budget, seeds, losses)

The second arm is the same job with the tasks split: ``--video_only_tasks=T --labelled_tasks=<the others>``
records T only as video-only episodes (its instruction given), so the labelled-only policy never saw T at all
and the mixed one saw it without actions; both are evaluated on every task of ``--tasks``, T included.

    uv run --frozen --all-extras python -m eval.video_only_job [--labelled_per_task=2] [--video_only_per_task=25] [--ratio=0.5]

A finished stage is reused when the job is run again (``--fresh=true`` starts over); ``--toy=true`` runs
every stage at toy size.
"""

from __future__ import annotations

import itertools
import json
import os
import shutil
import subprocess
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import NamedTuple

import draccus

os.environ.setdefault("MUJOCO_GL", "egl")  # headless rendering for the in-process recording

from eval.job_steps import SecondsLedger, Stage, console_script, subprocess_env
from eval.main_job import DEFAULT_TASKS, task_names

ARMS = {"labelled": "labelled only", "mixed": "labelled + video-only"}
HELDOUT_KEYS = ("heldout_video_loss", "heldout_video_loss_no_actions", "heldout_action_loss",
                "heldout_action_loss_video_blind")
LOSS_WINDOW = 100  # training losses are noisy per step: report the mean of the last this-many steps


@dataclass
class VideoOnlyJobConfig:
    out: str = "outputs/video_only_job"
    tasks: str = DEFAULT_TASKS  # evaluated, and held out; by default also the labelled and the video-only tasks
    # The second arm: a task only ever seen as video-only episodes (--video_only_tasks=T, --labelled_tasks= the
    # others): the labelled-only policy never saw T at all. None: every task of --tasks.
    labelled_tasks: str | None = None
    video_only_tasks: str | None = None
    # K: labelled-only must stay clearly below the ceiling; measured at 1000 steps: K=4 reached 77 %, K=2 63 %.
    labelled_per_task: int = 2
    video_only_per_task: int = 25  # M
    video_only_seed: int = 10_000  # env seeds of the video-only episodes (labelled ones start at 0)
    heldout_per_task: int = 3  # labelled episodes no arm trains on: both arms' losses on the same windows
    heldout_seed: int = 50_000
    ratio: float = 0.5  # fraction of every batch the mixed arm draws from the video-only episodes
    demo_episode_length: int = 200
    image_size: int = 64
    preset: str | None = None  # None: `small`, or the --vae_policy's preset
    # A fitted VAE both arms start from (dreamzero-fit-vae's pretrained_model; its preset, views and cameras
    # come with it), so the video loss is on latents that carry the picture. None: the preset's random VAE.
    vae_policy: str | None = None
    steps: int = 1000
    batch_size: int = 16
    lr: float = 3e-4
    seed: int = 0
    num_chunks: int = 2
    anchor_stride: int = 4
    eval_episodes_per_task: int = 20
    eval_seed: int = 100_000
    eval_batch: int = 20
    eval_episode_length: int = 150
    inference_steps: int = 4
    n_action_steps: int = 8
    toy: bool = False
    fresh: bool = False  # delete `out` first (otherwise finished stages are reused)
    timings: dict = field(default_factory=dict)

    def __post_init__(self) -> None:
        if self.toy:
            self.labelled_per_task, self.video_only_per_task, self.image_size = 1, 1, 32
            self.preset, self.steps, self.batch_size, self.anchor_stride = "tiny", 2, 2, 8
            self.eval_episodes_per_task, self.eval_batch, self.eval_episode_length = 1, 1, 16
            self.inference_steps, self.n_action_steps = 2, 0
        if self.labelled_per_task < 1 or self.video_only_per_task < 1:
            raise ValueError("--labelled_per_task and --video_only_per_task must be >= 1")
        if self.vae_policy:
            self._check_vae_policy()
        elif self.preset is None:
            self.preset = "small"
        for flag, names in (("--labelled_tasks", self.labelled_task_list), ("--video_only_tasks", self.video_only_task_list)):
            if not names or not set(names) <= set(self.task_list):
                raise ValueError(f"{flag} must name some of --tasks={self.tasks}, got {','.join(names) or 'none'}")
        if not 0.0 < self.ratio < 1.0:
            raise ValueError(f"--ratio must be in (0, 1), got {self.ratio}")
        # Env seeds each set may use.
        spans = {name: r.seeds for name, r in recordings(self).items()}
        spans["evaluation"] = (self.eval_seed, self.eval_seed + self.eval_episodes_per_task)
        for (a, (a0, a1)), (b, (b0, b1)) in itertools.combinations(spans.items(), 2):
            if a0 < b1 and b0 < a1:
                raise ValueError(f"the {a} seeds [{a0}, {a1}) overlap the {b} seeds [{b0}, {b1}): move "
                                 "--video_only_seed or --eval_seed")

    @property
    def task_list(self) -> list[str]:
        return task_names(self.tasks)

    @property
    def labelled_task_list(self) -> list[str]:
        return self.task_list if self.labelled_tasks is None else task_names(self.labelled_tasks)

    @property
    def video_only_task_list(self) -> list[str]:
        return self.task_list if self.video_only_tasks is None else task_names(self.video_only_tasks)

    def _check_vae_policy(self) -> None:
        """The fitted VAE's own preset and view size are what both arms train: a different --preset or
        --image_size would record frames, or name a model, that the VAE was not fitted to."""
        path = Path(self.vae_policy) / "config.json"
        if not path.is_file():
            raise ValueError(f"--vae_policy={self.vae_policy} is not a policy directory (no config.json): pass "
                             "dreamzero-fit-vae's <output_dir>/pretrained_model")
        fitted = json.loads(path.read_text())
        preset, views = fitted.get("preset"), (fitted.get("view_height"), fitted.get("view_width"))
        if self.preset is not None and self.preset != preset:
            raise ValueError(f"--preset={self.preset} but --vae_policy holds a fitted {preset!r} VAE: drop --preset "
                             "(the fitted VAE's preset is used)")
        if views != (self.image_size, self.image_size):
            raise ValueError(f"--image_size={self.image_size} but --vae_policy was fitted to {views[0]}x{views[1]} "
                             f"views: pass --image_size={views[0]}")
        self.preset = preset


class Recording(NamedTuple):
    """One recorded set: ``per_task`` expert episodes of each of ``tasks``, env seeds from ``first_seed``."""

    tasks: list[str]
    per_task: int
    first_seed: int
    actions: bool

    @property
    def seeds(self) -> tuple[int, int]:
        """The env seeds it may use: the recorder retries failed expert episodes, at most 2n + 10 per task."""
        return self.first_seed, self.first_seed + 2 * self.per_task + 10


def recordings(cfg: VideoOnlyJobConfig) -> dict[str, Recording]:
    """The job's three recordings by directory name: what is recorded, and what the seed guard checks."""
    return {"labelled": Recording(cfg.labelled_task_list, cfg.labelled_per_task, 0, True),
            "video_only": Recording(cfg.video_only_task_list, cfg.video_only_per_task, cfg.video_only_seed, False),
            "heldout": Recording(cfg.task_list, cfg.heldout_per_task, cfg.heldout_seed, True)}


def _record(cfg: VideoOnlyJobConfig, out: Path, name: str) -> dict:
    """Record ``recordings(cfg)[name]`` into ``out/name``, or reuse a finished recording of exactly that; a
    different one in ``out`` is refused, since the later stages were built from it."""
    from dreamzero_envs.record_metaworld import record_metaworld

    want, root, marker = recordings(cfg)[name], out / name, out / f"{name}.json"
    if marker.exists() and (root / "meta" / "info.json").exists():
        rec = json.loads(marker.read_text())
        first = min(s for task_seeds in rec["seeds"].values() for s in task_seeds)
        if (rec["episodes"] != dict.fromkeys(want.tasks, want.per_task) or rec["actions"] != want.actions
                or not want.seeds[0] <= first < want.seeds[1]):
            raise ValueError(f"{root} holds a recording of {rec['episodes']} (seeds from {first}, actions="
                             f"{rec['actions']}), not the {want.per_task} episodes of {want.tasks} (seeds from "
                             f"{want.first_seed}, actions={want.actions}) asked for: pass --fresh=true or another --out")
        return rec
    if root.exists():
        shutil.rmtree(root)
    s = record_metaworld(want.tasks, want.per_task, root, seed=want.first_seed, repo_id=f"local/{name}",
                         image_size=cfg.image_size, episode_length=cfg.demo_episode_length, actions=want.actions)
    marker.write_text(json.dumps({"episodes": s.episodes, "expert_failures_dropped": s.failed,
                                  "frames": s.frames, "seeds": s.seeds, "actions": want.actions}))
    return json.loads(marker.read_text())


def policy_start(cfg: VideoOnlyJobConfig) -> list[str]:
    """What both arms' policy starts from: a fitted VAE's policy directory, or the preset at the job's views."""
    if cfg.vae_policy:
        return [f"--policy.path={cfg.vae_policy}"]
    return [f"--policy.preset={cfg.preset}", f"--policy.view_height={cfg.image_size}",
            f"--policy.view_width={cfg.image_size}", "--policy.device=cpu", "--policy.cameras=[observation.image]"]


def loss_summary(metrics: list[dict], window: int = LOSS_WINDOW) -> dict[str, float]:
    """Mean video / action loss over the last ``window`` logged steps (and the first, to show the drop)."""
    import numpy as np

    out: dict[str, float] = {}
    for key in ("video_loss", "action_loss"):
        vals = np.array([r[key] for r in metrics], np.float64)
        out[f"first_{key}"] = float(vals[:window].mean())
        out[f"final_{key}"] = float(vals[-window:].mean())
    return out


def save_loss_curves(runs: dict[str, list[dict]], path: Path, smooth: int = 25) -> Path:
    """Both arms' video and action losses (moving average of ``smooth`` steps) on one log-scale plot."""
    import matplotlib
    import numpy as np

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(8, 4.5), dpi=120)
    for i, (arm, recs) in enumerate(runs.items()):
        steps = np.array([r["step"] for r in recs])
        for key, style in (("video_loss", "-"), ("action_loss", "--")):
            vals = np.array([r[key] for r in recs], np.float64)
            k = min(smooth, len(vals))
            avg = np.convolve(vals, np.ones(k) / k, mode="valid")
            ax.plot(steps[k - 1:], np.maximum(avg, 1e-8), style, color=f"C{i}", lw=1.2,
                    label=f"{ARMS[arm]}: {key.replace('_', ' ')}")
    ax.set_yscale("log")
    ax.set_xlabel("training step")
    ax.set_ylabel(f"flow-matching loss ({smooth}-step mean, log scale)")
    ax.grid(True, which="both", alpha=0.3)
    ax.legend(fontsize=8)
    ax.set_title("labelled only vs labelled + video-only (action loss over labelled samples)")
    fig.tight_layout()
    fig.savefig(path)
    plt.close(fig)
    return path


def run(cfg: VideoOnlyJobConfig) -> dict:
    from lerobot.envs.metaworld import TASK_DESCRIPTIONS

    from eval.peers import eval_policy

    out = Path(cfg.out)
    if cfg.fresh and out.exists():
        shutil.rmtree(out)
    out.mkdir(parents=True, exist_ok=True)
    env = subprocess_env(out)
    os.environ.update(env)  # the lerobot-eval runs of eval.peers inherit it (XLA cache, offline)
    t = cfg.timings
    labelled, video = out / "labelled", out / "video_only"

    with Stage(t, "record labelled demonstrations"):
        labelled_rec = _record(cfg, out, "labelled")
    with Stage(t, "record video-only episodes (actions dropped)"):
        video_rec = _record(cfg, out, "video_only")

    pre = out / "precomputed"
    common = [
        "--dataset.repo_id=local/labelled", f"--dataset.root={labelled}",
        *policy_start(cfg), f"--policy.num_inference_steps={cfg.inference_steps}", "--policy.cfg_scale=1.0",
        f"--policy.n_action_steps={cfg.n_action_steps}", f"--policy.max_chunks_before_reset={cfg.num_chunks}",
        f"--steps={cfg.steps}", f"--batch_size={cfg.batch_size}", f"--save_freq={max(1, cfg.steps // 4)}",
        f"--seed={cfg.seed}", f"--windows.num_chunks={cfg.num_chunks}", f"--optim.lr={cfg.lr}",
        f"--precompute.dir={pre}", f"--precompute.anchor_stride={cfg.anchor_stride}", "--resume=true",
    ]
    video_flags = ["--video_only.repo_id=local/video_only", f"--video_only.root={video}",
                   f"--video_only.ratio={cfg.ratio}"]
    # Seconds of the stages that train, kept across reruns: a stage skipped because it finished keeps its time.
    ledger = SecondsLedger(out / "training_seconds.json")
    account = lambda name, ran: ledger.account(t, name, ran)  # noqa: E731 - after the stage's `with` block

    name = "frozen-encoder pass (both datasets)"
    with Stage(t, name):
        if ran := not ((pre / "stats.json").exists() and (pre / "video_only" / "stats.json").exists()):
            subprocess.run([console_script("dreamzero-train"), *common, *video_flags, "--precompute.only=true"],
                           check=True, env=env)
    account(name, ran)

    arms = {"labelled": [], "mixed": video_flags}
    results: dict[str, dict] = {}
    curves: dict[str, list[dict]] = {}
    for arm, extra in arms.items():
        run_dir = out / f"train_{arm}"
        policy = run_dir / "pretrained_model"
        name = f"train: {ARMS[arm]}"
        with Stage(t, name):
            meta = policy / "train_meta.json"
            if ran := not (meta.exists() and json.loads(meta.read_text())["step"] == cfg.steps):
                subprocess.run([console_script("dreamzero-train"), *common, *extra, f"--output_dir={run_dir}"],
                               check=True, env=env)
        account(name, ran)
        curves[arm] = [json.loads(line) for line in open(run_dir / "metrics.jsonl")]
        record = out / f"eval_{arm}.json"  # written once the evaluation finished; reused on a rerun
        with Stage(t, f"evaluate: {ARMS[arm]} (lerobot-eval)"):
            if not record.exists():
                r = eval_policy(policy, cfg.tasks, cfg.eval_episodes_per_task, cfg.eval_seed,
                                cfg.eval_episode_length, cfg.image_size, out / f"eval_{arm}", cfg.eval_batch, [])
                record.write_text(json.dumps(r, indent=2))
            r = json.loads(record.read_text())
        results[arm] = {"per_task": {k: v["pc_success"] for k, v in r["per_task"].items()},
                        "overall": r["pc_success"], "train_s": ledger.get(f"train: {ARMS[arm]}"),
                        **loss_summary(curves[arm])}
    save_loss_curves(curves, out / "loss_curves.png")

    heldout = out / "heldout"
    with Stage(t, "record held-out labelled episodes"):
        heldout_rec = _record(cfg, out, "heldout")
    for arm in arms:
        record = out / f"heldout_loss_{arm}.json"
        with Stage(t, f"held-out losses: {ARMS[arm]}"):
            if not record.exists():
                from eval.heldout_loss import heldout_losses

                record.write_text(json.dumps(heldout_losses(out / f"train_{arm}" / "pretrained_model", labelled,
                                                            heldout, cfg.num_chunks, cfg.anchor_stride, seed=cfg.seed)))
        held = json.loads(record.read_text())
        held.pop("windows_per_instruction", None)
        if (per := held.pop("action_loss_per_instruction", None)) is not None:  # keyed by task, as the table is
            held["action_loss_per_task"] = {t: per[TASK_DESCRIPTIONS[t]] for t in cfg.task_list
                                            if TASK_DESCRIPTIONS[t] in per}
        results[arm] |= held

    seeds = [cfg.eval_seed, cfg.eval_seed + cfg.eval_episodes_per_task - 1]
    summary = {
        "success_pct": results, "tasks": cfg.task_list,
        "eval": {"episodes_per_task": cfg.eval_episodes_per_task, "seeds": seeds,
                 "episode_length": cfg.eval_episode_length},
        "data": {"labelled": labelled_rec, "video_only": video_rec, "heldout": heldout_rec},
        "budget": {"steps": cfg.steps, "batch_size": cfg.batch_size, "ratio": cfg.ratio,
                   "precompute_s": ledger.get("frozen-encoder pass (both datasets)")},
        "seconds": t, "total_seconds": round(sum(t.values()), 1),
        "config": {k: v for k, v in asdict(cfg).items() if k != "timings"},
    }
    (out / "summary.json").write_text(json.dumps(summary, indent=2))
    table = format_table(summary)
    (out / "table.md").write_text(table + "\n")
    print("\n" + table)
    print(f"summary: {out / 'summary.json'}; loss curves: {out / 'loss_curves.png'}")
    return summary


def format_table(summary: dict) -> str:
    """Task x arm -> success %, mean over tasks, final losses and training seconds; data, budget, seeds."""
    tasks, b, e, d = summary["tasks"], summary["budget"], summary["eval"], summary["data"]
    lines = ["| arm | " + " | ".join(tasks) + " | mean | train video loss | train action loss | held-out video "
             "loss (actions given / not) | held-out action loss (video seen / blind) | train s |", "|---|" + "---:|" * (len(tasks) + 6)]
    for arm, r in summary["success_pct"].items():
        cells = [f"{r['per_task'][task]:.0f} %" for task in tasks]
        v = {k: f"{r[k]:.3f}" if k in r else "?" for k in HELDOUT_KEYS}
        held = [f"{v['heldout_video_loss']} / {v['heldout_video_loss_no_actions']}",
                f"{v['heldout_action_loss']} / {v['heldout_action_loss_video_blind']}"]
        lines.append(f"| {ARMS[arm]} | " + " | ".join(cells) + f" | **{r['overall']:.0f} %** | "
                     f"{r['first_video_loss']:.3f} → {r['final_video_loss']:.3f} | "
                     f"{r['first_action_loss']:.3f} → {r['final_action_loss']:.3f} | " + " | ".join(held)
                     + f" | {_secs(r['train_s'])} |")
    per_task = {arm: r["action_loss_per_task"] for arm, r in summary["success_pct"].items()
                if "action_loss_per_task" in r}
    if per_task:
        lines += ["", "| held-out action loss, per task | " + " | ".join(tasks) + " |", "|---|" + "---:|" * len(tasks)]
        lines += [f"| {ARMS[arm]} | " + " | ".join(f"{r.get(task, float('nan')):.3f}" for task in tasks) + " |"
                  for arm, r in per_task.items()]
    lines += [
        "",
        f"Data: {_episodes(d['labelled'], tasks, 'labelled expert')} and {_episodes(d['video_only'], tasks, 'video-only')}"
        "; video-only: the same experts, no `action` feature.",
        f"Budget, both arms: {b['steps']} steps of batch {b['batch_size']} (same lr, seed and labelled windows); "
        f"the mixed arm draws {b['ratio']:.0%} of every batch from the video-only episodes. One frozen-encoder "
        f"pass over both datasets: {_secs(b['precompute_s'])} s.",
        "VAE: " + (f"fitted, from {vae}" if (vae := summary.get("config", {}).get("vae_policy"))
                   else "the preset's randomly initialised one") + ", the same for both arms.",
        f"Evaluation: lerobot-eval, {e['episodes_per_task']} held-out episodes per task (seeds "
        f"{e['seeds'][0]}..{e['seeds'][1]}, {e['episode_length']} steps at most).",
        f"Training losses: mean of the first → last {LOSS_WINDOW} steps (the action loss over labelled samples "
        "only; the mixed arm's video loss includes its video-only windows). Held-out losses: the final policies "
        f"on the same windows of {_count(d.get('heldout'), len(tasks))} unseen labelled episodes per task, with the "
        "same timesteps and noise.",
    ]
    return "\n".join(lines)


def _episodes(rec: dict, tasks: list[str], kind: str) -> str:
    """"K <kind> episodes per task (F frames)", naming the tasks where the recording has not all of ``tasks``."""
    k = sum(rec["episodes"].values()) // len(rec["episodes"])
    which = "" if sorted(rec["episodes"]) == sorted(tasks) else " of " + ", ".join(rec["episodes"])
    return f"{k} {kind} episodes per task{which} ({rec['frames']} frames)"


def _count(rec: dict | None, n_tasks: int) -> str:
    return "?" if rec is None else str(sum(rec["episodes"].values()) // n_tasks)


def _secs(x: float | None) -> str:
    return "?" if x is None else f"{x:.0f}"  # None: the stage ran before this output dir kept its seconds


def main() -> None:
    run(draccus.parse(VideoOnlyJobConfig))


if __name__ == "__main__":
    main()
