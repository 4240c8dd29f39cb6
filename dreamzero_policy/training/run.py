"""The training loop: data -> encoders -> sharded step, orbax checkpoints, metrics JSONL, loss curve."""

from __future__ import annotations

import time
from pathlib import Path

import jax
import numpy as np
import orbax.checkpoint as ocp
from flax import nnx
from tqdm import tqdm

from dreamzero_policy.models.world_model import DreamZeroModel, make_tokenizer
from dreamzero_policy.training.config import TrainConfig
from dreamzero_policy.training.curves import save_training_curves
from dreamzero_policy.training.data import PositionSampler, WindowDataset, make_loader
from dreamzero_policy.training.dataset_source import check_local_root, open_dataset, open_metadata
from dreamzero_policy.training.export import build_model, export_pretrained
from dreamzero_policy.training.metrics_log import MetricsLog
from dreamzero_policy.training.mixing import MixedDataset, check_mixable
from dreamzero_policy.training.precompute import PrecomputedDataset, precompute
from dreamzero_policy.training.sharding import global_batch, make_mesh
from dreamzero_policy.training.tracking import Tracker
from dreamzero_policy.training.trainer import DiTTrainer, batch_from_arrays, encode_raw

CKPT_DIR, METRICS, CURVE = "checkpoints", "metrics.jsonl", "loss_curve.png"
VIDEO_ONLY_SUBDIR, VIDEO_ONLY_REPO_ID, VIDEO_ONLY_SEED_OFFSET = "video_only", "local/video_only", 1_000_003
TRAIN_CONFIG, EXPORT_DIR = "train_config.json", "pretrained_model"


def stats_to_json(stats: dict) -> dict:
    return {k: {s: np.asarray(v).tolist() for s, v in d.items()} for k, d in stats.items()}


def stats_from_json(d: dict) -> dict:
    return {k: {s: np.asarray(v, np.float32) for s, v in v2.items()} for k, v2 in d.items()}


def checkpoint_manager(output_dir: str | Path, keep_last: int | None) -> ocp.CheckpointManager:
    opts = ocp.CheckpointManagerOptions(
        max_to_keep=keep_last, enable_async_checkpointing=True, create=True
    )
    return ocp.CheckpointManager(Path(output_dir).absolute() / CKPT_DIR, options=opts)


def restore(mgr: ocp.CheckpointManager, state: dict, step: int | None = None) -> tuple[dict, dict]:
    step = mgr.latest_step() if step is None else step
    abstract = jax.tree.map(lambda x: jax.ShapeDtypeStruct(x.shape, x.dtype, sharding=x.sharding), state)
    out = mgr.restore(
        step, args=ocp.args.Composite(state=ocp.args.StandardRestore(abstract), meta=ocp.args.JsonRestore())
    )
    return out["state"], out["meta"]


def make_windows(cfg: TrainConfig, model: DreamZeroModel, stats: dict | None = None, train: bool = True):
    w = cfg.windows
    augment = w.augment and train
    return WindowDataset(
        open_dataset(cfg.dataset.repo_id, cfg.dataset.root, cfg.dataset.episodes, cfg.dataset.video_backend,
                     cfg.dataset.revision),
        cfg.policy,
        model.cfg,
        make_tokenizer(model.cfg, cfg.policy.tokenizer_dir),
        num_chunks=w.num_chunks,
        seed=cfg.seed,
        train=augment,
        jitter=w.jitter if augment else 0.0,
        stats=stats,
    )


def make_video_windows(cfg: TrainConfig, model: DreamZeroModel, labelled: WindowDataset, train: bool = True):
    """The --video_only dataset's windows: same cameras, transform and statistics as ``labelled``."""
    v, augment = cfg.video_only, cfg.windows.augment and train
    return WindowDataset(
        open_dataset(v.repo_id or VIDEO_ONLY_REPO_ID, v.root, v.episodes, cfg.dataset.video_backend),
        cfg.policy,
        model.cfg,
        labelled.tokenizer,
        num_chunks=cfg.windows.num_chunks,
        seed=cfg.seed + VIDEO_ONLY_SEED_OFFSET,  # its own shuffle and augmentation draws
        train=augment,
        jitter=cfg.windows.jitter if augment else 0.0,
        stats=labelled.stats,
        video_only=True,
        cameras=labelled.cameras,
    )


def make_dataset(cfg: TrainConfig, model: DreamZeroModel, stats: dict | None = None):
    """The run's sample source: labelled windows (or their precomputed encodings), mixed with the
    --video_only ones at --video_only.ratio when that dataset is given."""
    if cfg.precompute.dir:
        labelled = PrecomputedDataset(cfg.precompute.dir, seed=cfg.seed)
        video_dir = Path(cfg.precompute.dir) / VIDEO_ONLY_SUBDIR
        if not cfg.video_only.enabled:
            if video_dir.is_dir():
                print(f"not using the precomputed video-only windows in {video_dir} (no --video_only.*)", flush=True)
            return labelled
        if not (video_dir / "stats.json").is_file():
            raise ValueError(f"--video_only.* is set but {video_dir} holds no precomputed windows: run the "
                             "--precompute.only=true pass with the same --video_only.* flags first")
        video = PrecomputedDataset(video_dir, seed=cfg.seed + VIDEO_ONLY_SEED_OFFSET)
        return MixedDataset(labelled, video, cfg.video_only.ratio)
    labelled = make_windows(cfg, model, stats)
    if not cfg.video_only.enabled:
        return labelled
    return MixedDataset(labelled, make_video_windows(cfg, model, labelled), cfg.video_only.ratio)


def _resolve_latent_stats(cfg: TrainConfig, model: DreamZeroModel, dataset) -> None:
    """Precomputed latents fix the VAE statistics the DiT is trained (and exported) with; otherwise
    estimate them when asked. Deterministic, so a resumed run finds the same values."""
    from dreamzero_policy.training.latent_stats import apply_latent_stats, estimate_latent_stats

    if isinstance(dataset, MixedDataset):
        dataset = dataset.labelled  # both halves were (or are) encoded with the same statistics
    if isinstance(dataset, PrecomputedDataset):
        if dataset.latent_stats is not None:
            apply_latent_stats(model, cfg.policy, dataset.latent_stats["mean"], dataset.latent_stats["std"])
    elif cfg.windows.latent_stats_frames > 0 and cfg.policy.latents_mean is None:
        # window(anchor, None) is the eval transform, so the training dataset serves unaugmented clips.
        apply_latent_stats(model, cfg.policy, *estimate_latent_stats(model, dataset, cfg.windows.latent_stats_frames))


def preflight(cfg: TrainConfig) -> None:
    """Every check that needs no model: the dataset exists (and no hub lookup for a named root), the
    output directory is not someone else's run, the policy fits the dataset's features, push and
    tracking are possible. Sets the policy's input/output features from the dataset."""
    from lerobot.utils.feature_utils import dataset_to_policy_features

    if cfg.dataset.root:
        check_local_root(cfg.dataset.root)
    if cfg.precompute.only and not cfg.precompute.dir:
        raise ValueError("--precompute.only=true needs --precompute.dir=<output directory>")
    ckpt = Path(cfg.output_dir) / CKPT_DIR
    if not cfg.resume and not cfg.precompute.only and ckpt.is_dir() and any(ckpt.iterdir()):
        raise ValueError(f"output_dir {cfg.output_dir} already holds a run: pass --resume=true to continue it, "
                         "or choose another --output_dir")
    if cfg.policy.repo_id and cfg.policy.push_to_hub:
        from dreamzero_policy.training.hub import check_can_push

        check_can_push(cfg.policy.repo_id)
    if cfg.wandb.enable:
        from dreamzero_policy.training.tracking import check_wandb

        check_wandb()
    meta = open_metadata(cfg.dataset.repo_id, cfg.dataset.root)
    if "action" not in meta.features:  # a clearer error than validate_features' missing output feature
        raise ValueError(
            f"--dataset {cfg.dataset.root or cfg.dataset.repo_id} has no 'action' feature, and a run needs labelled "
            "data (the action loss, the action statistics): give a labelled --dataset and this one as --video_only.root")
    feats = dataset_to_policy_features(meta.features)
    cfg.policy.input_features = {k: v for k, v in feats.items() if k.startswith("observation.")}
    cfg.policy.output_features = {k: v for k, v in feats.items() if k == "action"}
    cfg.policy.validate_features()
    if cfg.video_only.enabled:
        v = cfg.video_only
        if v.root:
            check_local_root(v.root)
        check_mixable(meta, open_metadata(v.repo_id or VIDEO_ONLY_REPO_ID, v.root), cfg.policy.camera_keys)


def precompute_only(cfg: TrainConfig) -> Path:
    """Write the frozen encoders' outputs (eval transform, every ``anchor_stride``-th anchor) to ``cfg.precompute.dir``."""
    preflight(cfg)
    model = build_model(cfg)
    ds = make_windows(cfg, model, train=False)
    if cfg.windows.latent_stats_frames > 0 and cfg.policy.latents_mean is None:
        from dreamzero_policy.training.latent_stats import apply_latent_stats, estimate_latent_stats

        apply_latent_stats(model, cfg.policy, *estimate_latent_stats(model, ds, cfg.windows.latent_stats_frames))
    if cfg.video_only.enabled:  # written first: the labelled stats.json marks the whole pass finished
        video = make_video_windows(cfg, model, ds, train=False)
        precompute(video, model, Path(cfg.precompute.dir) / VIDEO_ONLY_SUBDIR, cfg.batch_size, cfg.precompute.anchor_stride)
    return precompute(ds, model, cfg.precompute.dir, cfg.batch_size, cfg.precompute.anchor_stride)


def train(cfg: TrainConfig) -> list[dict]:
    """Run (or resume) training, then export the policy to ``<output_dir>/pretrained_model`` (and push it
    when ``--policy.repo_id`` is set); returns this call's metric records."""
    preflight(cfg)  # before anything is created or compiled
    if cfg.mesh.distributed:
        jax.distributed.initialize()
    out = Path(cfg.output_dir)
    out.mkdir(parents=True, exist_ok=True)
    mesh = make_mesh(cfg.mesh.data, cfg.mesh.fsdp, cfg.mesh.tensor)
    model = build_model(cfg)
    trainer = DiTTrainer(model, cfg, mesh)
    state = trainer.init_state()
    mgr = checkpoint_manager(out, cfg.keep_last)
    stats = None
    if cfg.resume and mgr.latest_step() is not None:
        state, meta = restore(mgr, state)
        stats = stats_from_json(meta["stats"]) if meta.get("stats") else None
    start = int(jax.device_get(state["step"]))
    if start and jax.process_index() == 0:
        print(f"resumed from step {start} ({out / CKPT_DIR})", flush=True)
    log = MetricsLog(out / METRICS)
    if jax.process_index() == 0:
        log.truncate_after(start)  # a torn tail or steps past the restored checkpoint would be recorded twice
    dataset = make_dataset(cfg, model, stats)
    stats = dataset.stats
    _resolve_latent_stats(cfg, model, dataset)
    if jax.process_index() == 0:
        save_train_config(cfg, out / TRAIN_CONFIG)
    stop = min(cfg.steps, cfg.stop_at_step or cfg.steps)
    sampler = PositionSampler(
        cfg.batch_size,
        start,
        jax.process_index(),
        jax.process_count(),
        num_steps=max(0, stop - start),
        fixed=cfg.windows.overfit,
    )
    loader = make_loader(dataset, sampler, cfg.num_workers)
    encode = nnx.jit(encode_raw)
    meta = {"train_config": cfg.to_dict(), "stats": stats_to_json(stats)}
    records: list[dict] = []
    tracker = Tracker(cfg, out) if jax.process_index() == 0 else None
    bar = tqdm(total=stop, initial=start, disable=not cfg.progress or jax.process_index() != 0, desc="train")
    with log:
        t_prev = time.perf_counter()
        for step, local in zip(range(start, stop), loader, strict=False):
            arrays = global_batch(local, mesh)
            batch = batch_from_arrays(arrays) if cfg.precompute.dir else encode(model, arrays)
            state, m = trainer.step(state, batch)
            m = {k: float(v) for k, v in jax.device_get(m).items()}
            now = time.perf_counter()
            rec = {
                "step": step + 1,
                **m,
                "step_time_s": now - t_prev,
                "samples_per_s": cfg.batch_size / (now - t_prev),
            }
            t_prev = now
            records.append(rec)
            if (step + 1) % cfg.log_freq == 0 and jax.process_index() == 0:
                log.append(rec)
                if tracker is not None:
                    tracker.log(rec)
            bar.set_postfix(loss=f"{m['loss']:.4f}", samples_s=f"{rec['samples_per_s']:.1f}")
            bar.update(1)
            if (step + 1) % cfg.save_freq == 0 or step + 1 == stop:
                meta["data_position"] = (step + 1) * cfg.batch_size
                mgr.save(
                    step + 1,
                    args=ocp.args.Composite(state=ocp.args.StandardSave(state), meta=ocp.args.JsonSave(meta)),
                )
    bar.close()
    mgr.wait_until_finished()
    saved = mgr.latest_step() is not None
    mgr.close()
    # Export after new steps, or when an earlier run stopped before exporting (a resumed, finished run).
    if saved and jax.process_index() == 0 and (records or not (out / EXPORT_DIR / "config.json").is_file()):
        save_training_curves(log.read(), out / CURVE)
        exported = export_pretrained(out, out / EXPORT_DIR)
        print(f"exported the policy to {exported}", flush=True)
        if cfg.policy.repo_id and cfg.policy.push_to_hub:
            from dreamzero_policy.training.hub import push_policy

            print(f"pushed to {push_policy(exported, cfg.policy.repo_id, cfg.policy.private)}", flush=True)
    if tracker is not None:
        tracker.finish()
    return records


def save_train_config(cfg: TrainConfig, path: Path) -> None:
    """The run's whole config (policy included), reloadable with ``load_train_config``."""
    import draccus

    with open(path, "w") as f, draccus.config_type("json"):
        draccus.dump(cfg, f, indent=2)


def load_train_config(path: str | Path) -> TrainConfig:
    import draccus

    with open(path) as f, draccus.config_type("json"):
        return draccus.load(TrainConfig, f)
