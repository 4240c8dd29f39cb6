"""The training loop: data -> encoders -> sharded step, orbax checkpoints, metrics JSONL, loss curve."""

from __future__ import annotations

import json
import time
from pathlib import Path

import jax
import numpy as np
import orbax.checkpoint as ocp
from flax import nnx
from lerobot.datasets.lerobot_dataset import LeRobotDataset
from tqdm import tqdm

from dreamzero_policy.models.world_model import DreamZeroModel, make_tokenizer
from dreamzero_policy.training.config import TrainConfig
from dreamzero_policy.training.data import PositionSampler, WindowDataset, make_loader
from dreamzero_policy.training.export import build_model
from dreamzero_policy.training.precompute import PrecomputedDataset
from dreamzero_policy.training.sharding import global_batch, make_mesh
from dreamzero_policy.training.trainer import DiTTrainer, batch_from_arrays, encode_raw

CKPT_DIR, METRICS, CURVE = "checkpoints", "metrics.jsonl", "loss_curve.png"


def stats_to_json(stats: dict) -> dict:
    return {k: {s: np.asarray(v).tolist() for s, v in d.items()} for k, d in stats.items()}


def stats_from_json(d: dict) -> dict:
    return {k: {s: np.asarray(v, np.float32) for s, v in v2.items()} for k, v2 in d.items()}


def checkpoint_manager(output_dir: str | Path, cfg: TrainConfig) -> ocp.CheckpointManager:
    opts = ocp.CheckpointManagerOptions(
        max_to_keep=cfg.keep_last, enable_async_checkpointing=True, create=True
    )
    return ocp.CheckpointManager(Path(output_dir).absolute() / CKPT_DIR, options=opts)


def restore(mgr: ocp.CheckpointManager, state: dict, step: int | None = None) -> tuple[dict, dict]:
    step = mgr.latest_step() if step is None else step
    abstract = jax.tree.map(lambda x: jax.ShapeDtypeStruct(x.shape, x.dtype, sharding=x.sharding), state)
    out = mgr.restore(
        step, args=ocp.args.Composite(state=ocp.args.StandardRestore(abstract), meta=ocp.args.JsonRestore())
    )
    return out["state"], out["meta"]


def make_dataset(cfg: TrainConfig, model: DreamZeroModel, stats: dict | None = None):
    if cfg.precomputed:
        return PrecomputedDataset(cfg.precomputed, seed=cfg.seed)
    ds = LeRobotDataset(cfg.repo_id, root=cfg.dataset_root)
    return WindowDataset(
        ds,
        cfg.policy_config(),
        model.cfg,
        make_tokenizer(model.cfg),
        num_chunks=cfg.num_chunks,
        seed=cfg.seed,
        train=cfg.augment,
        crop=cfg.crop,
        jitter=cfg.jitter if cfg.augment else 0.0,
        stats=stats,
    )


def _resolve_latent_stats(cfg: TrainConfig, model: DreamZeroModel, dataset) -> None:
    """Precomputed latents fix the VAE statistics the DiT is trained (and exported) with; otherwise
    estimate them when asked. Deterministic, so a resumed run finds the same values."""
    from dreamzero_policy.training.latent_stats import apply_latent_stats, estimate_latent_stats

    if isinstance(dataset, PrecomputedDataset):
        if dataset.latent_stats is not None:
            apply_latent_stats(model, cfg, dataset.latent_stats["mean"], dataset.latent_stats["std"])
    elif cfg.latent_stats_frames > 0 and cfg.latents_mean is None:
        # window(anchor, None) is the eval transform, so the training dataset serves unaugmented clips.
        apply_latent_stats(model, cfg, *estimate_latent_stats(model, dataset, cfg.latent_stats_frames))


def save_loss_curve(records: list[dict], path: Path) -> None:
    """Loss vs step as a PNG drawn with Pillow (matplotlib is not a dependency), log-scale y."""
    from PIL import Image, ImageDraw

    steps = np.array([r["step"] for r in records], np.float64)
    loss = np.log10(np.maximum([r["loss"] for r in records], 1e-12))
    w, h, pad = 640, 400, 50
    img = Image.new("RGB", (w, h), "white")
    dr = ImageDraw.Draw(img)
    dr.rectangle([pad, pad, w - pad, h - pad], outline="black")
    if len(steps) > 1:
        sx = (steps - steps.min()) / max(np.ptp(steps), 1e-9)
        sy = (loss - loss.min()) / max(np.ptp(loss), 1e-9)
        pts = [(pad + x * (w - 2 * pad), h - pad - y * (h - 2 * pad)) for x, y in zip(sx, sy, strict=True)]
        dr.line(pts, fill=(31, 119, 180), width=2)
    dr.text(
        (pad, 10),
        f"loss (log10 {loss.min():.2f}..{loss.max():.2f}) vs step {int(steps.min())}..{int(steps.max())}",
        fill="black",
    )
    img.save(path)


def train(cfg: TrainConfig) -> list[dict]:
    """Run (or resume) training; returns this call's metric records."""
    if cfg.distributed:
        jax.distributed.initialize()
    out = Path(cfg.output_dir)
    out.mkdir(parents=True, exist_ok=True)
    mesh = make_mesh(cfg.mesh.data, cfg.mesh.fsdp, cfg.mesh.tensor)
    model = build_model(cfg)
    trainer = DiTTrainer(model, cfg, mesh)
    state = trainer.init_state()
    mgr = checkpoint_manager(out, cfg)
    stats = None
    if cfg.resume and mgr.latest_step() is not None:
        state, meta = restore(mgr, state)
        stats = stats_from_json(meta["stats"]) if meta.get("stats") else None
    dataset = make_dataset(cfg, model, stats)
    stats = dataset.stats
    _resolve_latent_stats(cfg, model, dataset)
    start = int(jax.device_get(state["step"]))
    stop = min(cfg.steps, cfg.stop_at_step or cfg.steps)
    sampler = PositionSampler(
        cfg.batch_size,
        start,
        jax.process_index(),
        jax.process_count(),
        num_steps=max(0, stop - start),
        fixed=cfg.overfit,
    )
    loader = make_loader(dataset, sampler, cfg.num_workers)
    encode = nnx.jit(encode_raw)
    meta = {"train_config": cfg.to_dict(), "stats": stats_to_json(stats)}
    records: list[dict] = []
    bar = tqdm(total=stop, initial=start, disable=not cfg.progress or jax.process_index() != 0, desc="train")
    with open(out / METRICS, "a") as log:
        t_prev = time.perf_counter()
        for step, local in zip(range(start, stop), loader, strict=False):
            arrays = global_batch(local, mesh)
            batch = batch_from_arrays(arrays) if cfg.precomputed else encode(model, arrays)
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
            if (step + 1) % cfg.log_every == 0 and jax.process_index() == 0:
                log.write(json.dumps(rec) + "\n")
                log.flush()
            bar.set_postfix(loss=f"{m['loss']:.4f}", samples_s=f"{rec['samples_per_s']:.1f}")
            bar.update(1)
            if (step + 1) % cfg.save_every == 0 or step + 1 == stop:
                meta["data_position"] = (step + 1) * cfg.batch_size
                mgr.save(
                    step + 1,
                    args=ocp.args.Composite(state=ocp.args.StandardSave(state), meta=ocp.args.JsonSave(meta)),
                )
    bar.close()
    mgr.wait_until_finished()
    mgr.close()
    if records and jax.process_index() == 0:
        all_recs = [json.loads(ln) for ln in open(out / METRICS) if ln.strip()]
        save_loss_curve(all_recs, out / CURVE)
    return records
