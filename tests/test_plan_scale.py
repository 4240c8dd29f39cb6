"""Scale planning: the hand FLOP count against XLA's, abstract training state, the command end to end."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import jax
import jax.numpy as jnp
import pytest
from flax import nnx

from dreamzero_policy.models import flops
from dreamzero_policy.models.dit import CausalWanDiT, Register
from dreamzero_policy.models.dit_block import CrossKV
from dreamzero_policy.models.presets import get_preset

ROOT = Path(__file__).resolve().parents[1]
S = jax.ShapeDtypeStruct
F32 = jnp.float32


def _xla_flops(fn, *args) -> float:
    return float(jax.jit(fn).lower(*args).compile().cost_analysis()["flops"])


@pytest.fixture(scope="module")
def wide():
    # One layer (the layer scan runs once, so XLA counts every FLOP) and a width at which the uncounted
    # elementwise work is ~2 % of the matmuls.
    mc = get_preset("tiny", dim=256, ffn_dim=1024, num_heads=2, num_layers=1)
    dit = nnx.eval_shape(lambda: CausalWanDiT(mc.dit, rngs=nnx.Rngs(0)))
    return mc, *nnx.split(dit)


def _close(mine: int, xla: float) -> None:
    assert 0.96 <= mine / xla <= 1.0, (mine, xla)  # below XLA by the elementwise FLOPs only


def test_chunk_forward_flops_match_xla(wide) -> None:
    mc, graphdef, state = wide
    c = mc.dit
    b, f, h, w, lt, li, cache = 2, c.frames_per_block, 8, 8, 16, 5, 48
    kv = lambda n: S((c.num_layers, b, n, c.num_heads, c.head_dim), F32)
    cross = CrossKV(kv(lt), kv(lt), kv(li), kv(li))
    reg = Register(S((b, c.actions_per_block, c.action_dim), F32), S((b, c.actions_per_block), F32),
                   S((b, c.states_per_block, c.state_dim), F32), S((b,), jnp.int32))

    def fwd(st, lat, cross, k, v, reg, y):
        return nnx.merge(graphdef, st).forward_chunk(lat, jnp.zeros((b,)), 1, cross, (k, v), None, reg, y)[:2]

    xla = _xla_flops(fwd, state, S((b, f, h, w, c.out_dim), F32), cross, kv(cache), kv(cache), reg,
                     S((b, f, h, w, mc.cond_channels), F32))
    tokens = f * (h // 2) * (w // 2)
    mine = flops.chunk_forward_flops(c, rows=b, video_tokens=tokens, cache_tokens=cache, register=True,
                                     text_len=lt, image_len=li)
    _close(mine, xla)


def test_train_forward_and_backward_flops_match_xla(wide) -> None:
    mc, graphdef, state = wide
    c = mc.dit
    b, nf, h, w, lt, li = 2, 1 + 2 * c.frames_per_block, 8, 8, 16, 5
    na, ns = 2 * c.actions_per_block, 2 * c.states_per_block
    reg = Register(S((b, na, c.action_dim), F32), S((b, na), F32), S((b, ns, c.state_dim), F32), S((b,), jnp.int32))
    video = S((b, nf, h, w, c.out_dim), F32)
    args = (state, video, video, S((b, nf), F32), reg, S((b, lt, c.text_dim), F32), S((b, li, c.image_dim), F32),
            S((b, nf, h, w, mc.cond_channels), F32))

    def fwd(st, *a):
        return nnx.merge(graphdef, st).forward_train(*a)

    def loss(st, *a):
        v, act = fwd(st, *a)
        return jnp.sum(v) + jnp.sum(act)

    fwd_flops, blocks = flops.train_forward_flops(c, rows=b, num_frames=nf, frame_tokens=(h // 2) * (w // 2),
                                                  text_len=lt, image_len=li)
    assert 0 < blocks < fwd_flops
    _close(fwd_flops, _xla_flops(fwd, *args))
    # backward = activation + weight gradients: 2x the forward; no remat here
    _close(flops.train_step_flops(fwd_flops, blocks, remat=False), _xla_flops(jax.grad(loss), *args))
    assert flops.train_step_flops(fwd_flops, blocks, remat=True) == 3 * fwd_flops + blocks


def test_abstract_trainer_allocates_nothing() -> None:
    from lerobot.configs.default import DatasetConfig

    from dreamzero_policy.configuration_dreamzero import DreamZeroJaxConfig
    from dreamzero_policy.models.world_model import DreamZeroModel
    from dreamzero_policy.training.config import LoraConfig, TrainConfig
    from dreamzero_policy.training.sharding import make_mesh
    from dreamzero_policy.training.trainer import DiTTrainer, flatten

    policy = DreamZeroJaxConfig(dtype="bfloat16")
    mc = policy.model_config(master_weights=True)
    model = nnx.eval_shape(lambda: DreamZeroModel(mc, rngs=nnx.Rngs(0)))
    cfg = TrainConfig(DatasetConfig(repo_id="local/none"), policy=policy, lora=LoraConfig(rank=2))
    tr = DiTTrainer(model, cfg, make_mesh(devices=jax.devices()[:1]), abstract=True)
    state = tr.init_state()
    leaves = jax.tree.leaves(state) + jax.tree.leaves(tr.frozen)
    assert leaves and all(isinstance(x, S) and x.sharding is not None for x in leaves)
    lora = flatten(state["trainable"]["lora"])
    c = mc.dit
    assert lora["blocks/self_attn/q/a"].shape == (c.num_layers, c.dim, 2)
    assert lora["blocks/ffn_2/b"].shape == (c.num_layers, 2, c.dim)
    assert all(x.dtype == F32 for x in jax.tree.leaves(state["trainable"]))  # fp32 masters and adapters


def test_command_runs_tiny_on_a_faked_mesh(tmp_path) -> None:
    env = dict(os.environ, XLA_FLAGS="--xla_force_host_platform_device_count=2", JAX_PLATFORMS="cpu")
    cmd = [sys.executable, "-m", "eval.plan_scale", "--presets=[tiny]", "--cases=[inference,full]", "--fsdp=[2]",
           "--view_height=16", "--view_width=16", f"--output_dir={tmp_path}"]
    proc = subprocess.run(cmd, cwd=ROOT, env=env, capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, proc.stderr[-3000:]
    rows = {r["case"]: r for r in json.loads((tmp_path / "plan.json").read_text())}
    assert "| tiny | infer chunk (as RolloutRunner), umT5 on host |" in (tmp_path / "plan.md").read_text()
    for r in rows.values():
        assert min(r["param_bytes"], r["argument_bytes"], r["temp_bytes"], r["total_bytes"]) > 0, r
        assert r["flops"] is None or r["flops"] > 0, r
    host = rows["infer chunk (as RolloutRunner), umT5 on host"]
    device = rows["infer chunk (as RolloutRunner), umT5 on device"]
    assert host["flops"] == rows["infer observe_block"]["flops"] + rows["infer plan (8 DiT steps)"]["flops"]
    assert device["total_bytes"] > host["total_bytes"]
    # a donated state is written in place: the new cache is not a second copy
    assert rows["infer plan (8 DiT steps), state donated"]["alias_bytes"] > 0
    train = rows["train full FT, FSDP 2"]
    assert train["devices"] == 2 and train["alias_bytes"] > 0 and train["flops"] > 0
