"""One train step sharded over (data 2, fsdp 2, tensor 2) on 8 faked CPU devices equals the 1-device step."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import textwrap

import pytest

BODY = textwrap.dedent(
    """
    import json
    import jax, jax.numpy as jnp, numpy as np
    from flax import nnx
    from dreamzero_policy.models.presets import get_preset
    from dreamzero_policy.models.world_model import DreamZeroModel
    from lerobot.configs.default import DatasetConfig

    from dreamzero_policy.training.config import LoraConfig, TrainConfig
    from dreamzero_policy.training.loss import TrainBatch
    from dreamzero_policy.training.sharding import make_mesh, global_batch
    from dreamzero_policy.training.trainer import DiTTrainer, flatten

    assert jax.device_count() == 8, jax.devices()
    mc = get_preset("tiny")
    d = mc.dit
    b, f, h, w = 4, 1 + 2 * d.frames_per_block, 4, 4
    rng = np.random.default_rng(0)
    raw = dict(
        latents=rng.normal(size=(b, f, h, w, d.out_dim)).astype(np.float32),
        text=rng.normal(size=(b, 16, d.text_dim)).astype(np.float32),
        actions=rng.uniform(-1, 1, (b, 2 * d.actions_per_block, d.action_dim)).astype(np.float32),
        action_mask=np.ones((b, 2 * d.actions_per_block, d.action_dim), np.float32),
        state=rng.uniform(-1, 1, (b, 2, d.state_dim)).astype(np.float32),
        embodiment=np.array([0, 1, 0, 1], np.int32),
        clip=rng.normal(size=(b, 5, d.image_dim)).astype(np.float32),
        y=rng.normal(size=(b, f, h, w, mc.cond_channels)).astype(np.float32),
    )
    results = {}
    for name, shape, devs, lora in [("one", (1, 1, 1), jax.devices()[:1], 2), ("eight", (2, 2, 2), jax.devices(), 2)]:
        mesh = make_mesh(*shape, devices=devs)
        model = DreamZeroModel(mc, rngs=nnx.Rngs(0))
        cfg = TrainConfig(DatasetConfig(repo_id="local/none"), steps=10, seed=0, lora=LoraConfig(rank=lora))
        cfg.optim.lr = 1e-3
        cfg.optim.warmup_ratio = 0.0
        tr = DiTTrainer(model, cfg, mesh)
        state = tr.init_state()
        batch = TrainBatch(**global_batch(raw, mesh))
        state, m = tr.step(state, batch)
        if name == "eight":
            specs = {k: str(v.sharding.spec) for k, v in flatten(state["trainable"]).items()}
            assert "tensor" in specs["lora/blocks/self_attn/q/b"], specs
            results["specs"] = specs
        params = flatten(jax.device_get(state["trainable"]))
        results[name] = {"loss": float(m["loss"]), "params": {k: np.asarray(v).tolist() for k, v in params.items()}}
    print("RESULT" + json.dumps(results))
    """
)


def _run() -> dict:
    env = dict(os.environ, XLA_FLAGS="--xla_force_host_platform_device_count=8", JAX_PLATFORMS="cpu")
    proc = subprocess.run([sys.executable, "-c", BODY], capture_output=True, text=True, env=env, timeout=600)
    assert proc.returncode == 0, proc.stderr[-4000:]
    line = next(ln for ln in proc.stdout.splitlines() if ln.startswith("RESULT"))
    return json.loads(line[len("RESULT") :])


@pytest.fixture(scope="module")
def results() -> dict:
    return _run()


def _max_err(a: dict, b: dict) -> float:
    import numpy as np

    assert a.keys() == b.keys()
    return max(float(np.max(np.abs(np.asarray(a[k]) - np.asarray(b[k])))) for k in a)


def test_sharded_step_matches_single_device(results: dict) -> None:
    # LoRA rank 2 run: adapters, register encoders and their AdamW moments are all sharded.
    one, eight = results["one"], results["eight"]
    # fp32; different reduction orders across shards: loss to 1e-5 relative, params (after one AdamW
    # step of lr 1e-3, whose update is ~lr in size) to 1e-5 absolute.
    assert abs(one["loss"] - eight["loss"]) <= 1e-5 * abs(one["loss"])
    assert _max_err(one["params"], eight["params"]) <= 1e-5


def test_parameters_are_actually_sharded(results: dict) -> None:
    specs = results["specs"]
    assert any("fsdp" in s for s in specs.values())
