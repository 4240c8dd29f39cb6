"""Rollout benchmark: KV-cached chunks vs full recompute, select_action cost, compile vs steady state.

    uv run --frozen python -m eval.bench_rollout --preset=tiny --size=32 --steps=16 --cfg=5.0

All figures come from one run on one machine and are printed side by side (ratios, not absolutes).
"""

from __future__ import annotations

import time
from collections.abc import Sequence
from dataclasses import dataclass

import draccus
import jax
import jax.numpy as jnp
import numpy as np
import torch
from lerobot.configs.types import FeatureType, PolicyFeature

from dreamzero_policy.configuration_dreamzero import REFERENCE_DIT_STEPS, DreamZeroJaxConfig
from dreamzero_policy.inference.full_context import full_context_velocity
from dreamzero_policy.modeling_dreamzero import DreamZeroJaxPolicy
from dreamzero_policy.models.dit import Register
from dreamzero_policy.schedulers.unipc import denoise


def _time(fn, reps: int = 5) -> float:
    jax.block_until_ready(fn())  # warm (compile excluded)
    t = time.perf_counter()
    for _ in range(reps):
        jax.block_until_ready(fn())
    return (time.perf_counter() - t) / reps


def bench_chunks(policy: DreamZeroJaxPolicy, frame: np.ndarray) -> list[tuple[int, float, float]]:
    """Per chunk: seconds of one plan with the cache vs with the whole context recomputed per DiT call."""
    runner, model = policy.runner, policy.model
    b = frame.shape[0]
    fns = runner._fns(b, frame)
    spec = runner.spec(b)
    dc = model.cfg.dit
    text = runner._encoded_text(fns, ("move to the red target",) * b)
    if spec.branches == 2:
        text = jnp.concatenate([text, runner._encoded_text(fns, (policy.config.negative_prompt,) * b)])
    state = fns.observe_first(runner.params, fns.start(runner.params, text, frame), frame)
    rs = np.zeros((b, 1, dc.state_dim), np.float32)
    emb = np.zeros((b,), np.int32)
    lat0 = model.encode_video(jnp.asarray(frame)[:, None])
    clean = [lat0]
    rows = []
    for chunk in range(1, 5):
        start = int(state.start_frame)
        # the plan donates its state (the KV cache): time it on copies, keep ``state`` for the next chunk
        cached = _time(lambda s=state: fns.plan(runner.params, jax.tree.map(jnp.copy, s), rs, emb, np.int32(0)))
        ctx = jnp.concatenate(clean, axis=1)

        @jax.jit
        def plan_full(p, s, ctx, start=start):
            m = runner.bind(p)
            nb = spec.branches
            key_v, key_a = jax.random.split(jax.random.key(0))
            noise = (jax.random.normal(key_v, (b, dc.frames_per_block, *spec.latent_hw, dc.out_dim)),
                     jax.random.normal(key_a, (b, dc.actions_per_block, dc.action_dim)))

            def vel(sample, t, _i):
                video, acts = sample
                reg = Register(jnp.concatenate([acts] * nb), jnp.full((nb * b, acts.shape[1]), t, jnp.float32),
                               jnp.concatenate([jnp.asarray(rs)] * nb), jnp.zeros((nb * b,), jnp.int32))
                v, a = full_context_velocity(m, spec, s, ctx, video, t.astype(jnp.float32), reg, start)
                if nb == 2:
                    v = v[b:] + spec.cfg_scale * (v[:b] - v[b:])
                return v, a[:b]

            return denoise(spec.schedule, vel, noise, spec.dit_mask)

        full = _time(lambda s=state, c=ctx: plan_full(runner.params, s, c))
        rows.append((chunk, cached, full))
        _, video, state = fns.plan(runner.params, state, rs, emb, np.int32(0))
        clean.append(video)  # the predicted block stands in for the observed one
        state = fns.observe_block(runner.params, state, np.repeat(frame[:, None], 4 * dc.frames_per_block, 1))
    return rows


@dataclass
class RolloutBenchConfig:
    preset: str = "tiny"  # model preset (see `dreamzero-params`)
    size: int = 32  # camera view size (pixels, square)
    steps: int = 16  # denoising steps per plan (16: the reference DiT step schedule)
    cfg: float = 5.0  # classifier-free guidance scale (1.0: no guidance branch)


def main(argv: Sequence[str] | None = None) -> None:
    args = draccus.parse(RolloutBenchConfig, args=argv)
    dit_steps = list(REFERENCE_DIT_STEPS) if args.steps == 16 else None
    cfg = DreamZeroJaxConfig(
        preset=args.preset, device="cpu", num_inference_steps=args.steps, dit_steps=dit_steps, cfg_scale=args.cfg,
        view_height=args.size, view_width=args.size,
        input_features={"observation.state": PolicyFeature(FeatureType.STATE, (2,)),
                        "observation.images.top": PolicyFeature(FeatureType.VISUAL, (3, args.size, args.size))},
        output_features={"action": PolicyFeature(FeatureType.ACTION, (2,))},
    )
    policy = DreamZeroJaxPolicy(cfg)
    obs = {"observation.state": torch.zeros(1, 2), "observation.images.top": torch.rand(1, 3, args.size, args.size),
           "task": ["move to the red target"]}
    t = time.perf_counter()
    policy.select_action(obs)
    first = time.perf_counter() - t
    steps = 4 * cfg.chunk_size
    t = time.perf_counter()
    plans = []
    for _ in range(steps):
        t0 = time.perf_counter()
        q = len(policy._action_queue)
        policy.select_action(obs)
        if q == 0:
            plans.append(time.perf_counter() - t0)
    amort = (time.perf_counter() - t) / steps
    steady = float(np.median(plans))
    print(f"preset={args.preset} view={args.size}px steps={args.steps} dit_steps={dit_steps} cfg={args.cfg} "
          f"chunk={cfg.chunk_size} backend={jax.default_backend()}")
    print(f"first select_action (compile + plan): {first:8.2f} s | steady-state plan: {steady * 1e3:8.1f} ms "
          f"| ratio {first / steady:6.1f}x")
    print(f"select_action amortised over {steps} steps: {amort * 1e3:8.2f} ms/step")
    frame = np.asarray(np.random.default_rng(0).uniform(-1, 1, (1, args.size, args.size, 3)), np.float32)
    print(f"{'chunk':>5} {'cached ms':>10} {'full ms':>10} {'full/cached':>12}")
    for chunk, c, f in bench_chunks(policy, frame):
        print(f"{chunk:>5} {c * 1e3:>10.1f} {f * 1e3:>10.1f} {f / c:>12.2f}")


if __name__ == "__main__":
    main()
