"""bf16 storage and compute: agreement with fp32, matmuls really in bf16, checkpoints that stay bf16,
umT5 on the host."""

import os
import subprocess
import sys
import textwrap
from dataclasses import replace
from pathlib import Path

import jax
import jax.numpy as jnp
import ml_dtypes
import numpy as np
from flax import nnx
from jax.extend.core import ClosedJaxpr, Jaxpr

from dreamzero_policy.convert.state_io import flat_params, load_flat
from dreamzero_policy.models.dit import CausalWanDiT, Register
from dreamzero_policy.models.presets import get_preset
from dreamzero_policy.weights_io import SafetensorsReader

BF16 = np.dtype(ml_dtypes.bfloat16)
# bf16 keeps 8 significant bits (relative rounding 2^-9 = 0.2 %); through 2 blocks, the register MLPs and
# the head the outputs of this tiny random model stay within 3 % of their fp32 scale.
REL_TOL = 0.03


def _train_inputs(cfg, seed: int = 0):
    rng = np.random.default_rng(seed)
    b, f, h, w = 2, 1 + 2 * cfg.frames_per_block, 4, 4
    lat = lambda: jnp.asarray(rng.normal(size=(b, f, h, w, cfg.out_dim)), jnp.float32)
    y = jnp.asarray(rng.normal(size=(b, f, h, w, cfg.in_dim - cfg.out_dim)), jnp.float32)
    reg = Register(
        jnp.asarray(rng.uniform(-1, 1, (b, 2 * cfg.actions_per_block, cfg.action_dim)), jnp.float32),
        jnp.asarray(rng.uniform(0, 1000, (b, 2 * cfg.actions_per_block)), jnp.float32),
        jnp.asarray(rng.uniform(-1, 1, (b, 2 * cfg.states_per_block, cfg.state_dim)), jnp.float32),
        jnp.zeros((b,), jnp.int32),
    )
    t = jnp.asarray(rng.uniform(0, 1000, (b, f)), jnp.float32)
    text = jnp.asarray(rng.normal(size=(b, 16, cfg.text_dim)), jnp.float32)
    clip = jnp.asarray(rng.normal(size=(b, 5, cfg.image_dim)), jnp.float32)
    return lat(), lat(), t, reg, text, clip, y


def test_bf16_forward_agrees_with_fp32_and_multiplies_in_bf16():
    cfg32 = get_preset("tiny").dit
    cfg16 = replace(cfg32, dtype="bfloat16", param_dtype="bfloat16")
    m32 = CausalWanDiT(cfg32, rngs=nnx.Rngs(0))
    m16 = nnx.eval_shape(lambda: CausalWanDiT(cfg16, rngs=nnx.Rngs(0)))
    load_flat(m16, {k: np.asarray(v) for k, v in flat_params(m32).items()})
    stored = {k: v.dtype for k, v in flat_params(m16).items()}
    assert stored["blocks/ffn_0/kernel"] == BF16 and stored["blocks/self_attn/q/kernel"] == BF16
    assert stored["blocks/modulation"] == np.float32 and stored["blocks/norm3/scale"] == np.float32

    args = _train_inputs(cfg32)
    v32, a32 = m32.forward_train(*args[:5], clip=args[5], y=args[6])
    v16, a16 = m16.forward_train(*args[:5], clip=args[5], y=args[6])
    assert v16.dtype == a16.dtype == jnp.float32  # outputs leave the head / decoder in float32
    for got, want in ((v16, v32), (a16, a32)):
        err = float(jnp.max(jnp.abs(got - want)) / jnp.max(jnp.abs(want)))
        assert err < REL_TOL, err
        assert err > 0  # it did compute in bf16

    # Every matmul of the block stack multiplies bf16 x bf16 and accumulates in float32.
    jaxpr = jax.make_jaxpr(lambda *a: m16.forward_train(*a[:5], clip=a[5], y=a[6]))(*args)

    def dots(jx):
        for eqn in jx.eqns:
            if eqn.primitive.name == "dot_general":
                yield eqn
            for v in eqn.params.values():  # scan / pjit / remat bodies
                for sub in v if isinstance(v, tuple) else (v,):
                    if isinstance(sub, ClosedJaxpr):
                        yield from dots(sub.jaxpr)
                    elif isinstance(sub, Jaxpr):
                        yield from dots(sub)

    found = list(dots(jaxpr.jaxpr))
    in_bf16 = [e for e in found if all(v.aval.dtype == jnp.bfloat16 for v in e.invars)]
    weight_dots = [e for e in in_bf16 if e.params.get("preferred_element_type") == jnp.float32]
    # 2 layers: self q/k/v/o, cross q/k/v/o/k_img/v_img, ffn 0/2 = 12 per block in the scanned body
    assert len(weight_dots) >= 12, [(str(e.invars[0].aval), e.params.get("preferred_element_type")) for e in found]


def _policy_script(body: str) -> str:
    return textwrap.dedent("""
        import os, sys
        sys.path.insert(0, {tests!r})
        import jax, numpy as np, torch
        from test_policy import make_config, obs
        from dreamzero_policy.modeling_dreamzero import DreamZeroJaxPolicy
    """).format(tests=str(Path(__file__).parent)) + textwrap.dedent(body)


def test_bf16_checkpoint_loads_as_bf16_on_its_device_and_umt5_can_stay_on_the_host(tmp_path):
    # Two CPU devices: the policy runs on cpu:1, so "the host" (cpu:0) is a different device.
    script = _policy_script(f"""
        from dreamzero_policy.weights_io import SafetensorsReader
        path = {str(tmp_path)!r}
        p = DreamZeroJaxPolicy(make_config(dtype="bfloat16"))
        p.save_pretrained(path)
        with SafetensorsReader(path + "/model.safetensors") as r:
            stored = {{k: (str(r.dtype(k)), r.nbytes(k)) for k in r.keys()}}
        torch.manual_seed(0)
        want = p.predict_action_chunk(obs(0)).numpy()
        cfg = make_config(dtype="bfloat16", text_encoder_on_host=True)
        cfg.device = "cpu:1"
        q = DreamZeroJaxPolicy.from_pretrained(path, config=cfg)
        from dreamzero_policy.convert.state_io import flat_params
        loaded = {{k: (str(v.dtype), v.nbytes, {{d.id for d in v.devices()}}) for k, v in flat_params(q.model).items()}}
        assert {{k: v[:2] for k, v in loaded.items()}} == stored, "dtype or bytes changed on load"
        text_devs = set().union(*(v[2] for k, v in loaded.items() if k.startswith("text_encoder/")))
        rest_devs = set().union(*(v[2] for k, v in loaded.items() if not k.startswith("text_encoder/")))
        assert rest_devs == {{1}} and text_devs == {{0}}, (text_devs, rest_devs)
        paths = ["/".join(map(str, p)) for p, _ in jax.tree_util.tree_flatten_with_path(q.runner.params)[0]]
        assert paths and not any("text_encoder" in k for k in paths)
        torch.manual_seed(0)
        np.testing.assert_array_equal(q.predict_action_chunk(obs(0)).numpy(), want)
        print("BYTES", sum(b for _, b in stored.values()))
    """)
    env = {**os.environ, "XLA_FLAGS": "--xla_force_host_platform_device_count=2", "JAX_PLATFORMS": "cpu"}
    res = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, env=env, timeout=600)
    assert res.returncode == 0, res.stdout[-3000:] + res.stderr[-5000:]
    with SafetensorsReader(tmp_path / "model.safetensors") as r:
        dt = {k: r.dtype(k) for k in r.keys()}
    # bf16: DiT matmul weights, umT5, CLIP; float32: DiT norms / modulation and the whole VAE (as Wan keeps it).
    assert dt["dit/blocks/ffn_0/kernel"] == BF16 and dt["dit/time_projection_1/kernel"] == BF16
    assert dt["text_encoder/blocks/ffn/fc1/kernel"] == BF16 and dt["image_encoder/pre_norm/scale"] == BF16
    assert dt["dit/blocks/modulation"] == np.float32 and dt["dit/head/modulation"] == np.float32
    assert all(d == np.float32 for k, d in dt.items() if k.startswith("vae/"))
