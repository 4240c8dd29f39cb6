"""Training throughput on CPU: train steps/s and samples/s for the tiny and small presets, data-loader
throughput next to step time, with and without precomputed encoder outputs.

    uv run --frozen python -m eval.bench_train --presets='[tiny,small]' --steps=5 --batch=2 --workers=0
"""

from __future__ import annotations

import json
import tempfile
import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path

import draccus
import jax
from flax import nnx
from lerobot.configs.default import DatasetConfig
from lerobot.datasets.lerobot_dataset import LeRobotDataset

from dreamzero_envs.record import record
from dreamzero_policy.configuration_dreamzero import DreamZeroJaxConfig
from dreamzero_policy.models.world_model import make_tokenizer
from dreamzero_policy.training.config import TrainConfig
from dreamzero_policy.training.data import PositionSampler, WindowDataset, make_loader
from dreamzero_policy.training.export import build_model
from dreamzero_policy.training.precompute import PrecomputedDataset, precompute
from dreamzero_policy.training.sharding import global_batch, make_mesh
from dreamzero_policy.training.trainer import DiTTrainer, batch_from_arrays, encode_raw


def _time_loader(dataset, batch: int, n: int, workers: int) -> float:
    loader = make_loader(dataset, PositionSampler(batch, num_steps=n + 1), workers)
    it = iter(loader)
    next(it)
    t = time.perf_counter()
    for _ in range(n):
        next(it)
    return n * batch / (time.perf_counter() - t)


def bench(preset: str, root: Path, work: Path, steps: int, batch: int, workers: int) -> dict:
    cfg = TrainConfig(
        DatasetConfig(repo_id="local/bench", root=str(root)),
        policy=DreamZeroJaxConfig(preset=preset, view_height=32, view_width=32, device="cpu"),
        batch_size=batch,
        steps=100,
    )
    model = build_model(cfg)
    ds = WindowDataset(
        LeRobotDataset("local/bench", root=root),
        cfg.policy,
        model.cfg,
        make_tokenizer(model.cfg),
        num_chunks=cfg.windows.num_chunks,
    )
    res = {"preset": preset, "batch": batch, "loader_samples_per_s": _time_loader(ds, batch, steps, workers)}
    pre_dir = precompute(
        WindowDataset(
            ds.ds,
            cfg.policy,
            model.cfg,
            make_tokenizer(model.cfg),
            num_chunks=cfg.windows.num_chunks,
            train=False,
        ),
        model,
        work / f"pre_{preset}",
        batch,
    )
    pre = PrecomputedDataset(pre_dir)
    res["precomputed_loader_samples_per_s"] = _time_loader(pre, batch, steps, 0)
    mesh = make_mesh(devices=jax.devices()[:1])
    trainer = DiTTrainer(model, cfg, mesh)
    state = trainer.init_state()
    encode = nnx.jit(encode_raw)
    for name, source, enc in (("raw", ds, True), ("precomputed", pre, False)):
        items = make_loader(source, PositionSampler(batch, num_steps=steps + 1), 0)
        batches = [global_batch(b, mesh) for b in items]
        mk = (lambda a: encode(model, a)) if enc else batch_from_arrays
        state, m = trainer.step(state, mk(batches[0]))  # compile
        jax.block_until_ready(m)
        t = time.perf_counter()
        for b in batches[1:]:
            state, m = trainer.step(state, mk(b))
        jax.block_until_ready(m)
        dt = (time.perf_counter() - t) / steps
        res[f"{name}_step_s"] = dt
        res[f"{name}_steps_per_s"] = 1 / dt
        res[f"{name}_samples_per_s"] = batch / dt
    return res


@dataclass
class TrainBenchConfig:
    presets: list[str] = field(default_factory=lambda: ["tiny", "small"])  # as --presets='[tiny,small]'
    steps: int = 5  # timed train steps (and loader batches) per preset, after one compile step
    batch: int = 2  # samples per batch
    workers: int = 0  # data-loader worker processes for the raw-loader timing


def main(argv: Sequence[str] | None = None) -> None:
    a = draccus.parse(TrainBenchConfig, args=argv)
    with tempfile.TemporaryDirectory() as tmp:
        root = record(
            "reach", 2, Path(tmp) / "ds", repo_id="local/bench", image_size=32, max_episode_steps=30
        ).root
        for preset in a.presets:
            print(json.dumps(bench(preset, root, Path(tmp), a.steps, a.batch, a.workers)), flush=True)


if __name__ == "__main__":
    main()
