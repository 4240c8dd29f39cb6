"""Cached inference on CPU: float32 vs bfloat16, and JAX vs a PyTorch peer at the same config, in one run.

    uv run --frozen python -m eval.bench_precision --preset=small --size=64

One chunk of the KV-cached rollout as the reference runs it (16 UniPC steps, the DiT on 8 of them, CFG as a
batch of 2): the VAE encode of the newest observed frames and the t=0 pass that puts them into the cache,
plus the 8 DiT calls that denoise the next block and its actions. The PyTorch peer is diffusers'
``AutoencoderKLWan`` + ``WanTransformer3DModel`` (the Wan VAE and DiT this model is built on) with the same
widths, depth, heads, text / CLIP context and latent grid, making the same encode and 1 + 8 calls. It does less work than ours (no attention to the cached
context, no action/state register tokens), so the JAX/PyTorch ratio is conservative. Both sides use the
same threads; reps alternate between the four variants so load on the machine hits them alike.
"""

from __future__ import annotations

import json
import os
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path

import draccus
import jax
import jax.numpy as jnp
import numpy as np
import torch
from lerobot.configs.types import FeatureType, PolicyFeature

from dreamzero_policy.configuration_dreamzero import REFERENCE_DIT_STEPS, DreamZeroJaxConfig
from dreamzero_policy.modeling_dreamzero import DreamZeroJaxPolicy


@dataclass
class PrecisionBenchConfig:
    preset: str = "small"  # model preset (tiny / small; the real ones do not fit this machine's memory)
    size: int = 64  # camera view size (pixels, square)
    reps: int = 5  # timed chunks per variant (after one warm-up chunk)
    output: str = "outputs/bench_precision.json"


def _policy(args: PrecisionBenchConfig, dtype: str) -> DreamZeroJaxPolicy:
    cfg = DreamZeroJaxConfig(
        preset=args.preset, device="cpu", dtype=dtype, num_inference_steps=16, dit_steps=list(REFERENCE_DIT_STEPS),
        cfg_scale=5.0, view_height=args.size, view_width=args.size,
        input_features={"observation.state": PolicyFeature(FeatureType.STATE, (2,)),
                        "observation.images.top": PolicyFeature(FeatureType.VISUAL, (3, args.size, args.size))},
        output_features={"action": PolicyFeature(FeatureType.ACTION, (2,))},
    )
    return DreamZeroJaxPolicy(cfg)


def jax_chunk(policy: DreamZeroJaxPolicy) -> Callable[[], None]:
    """One cached chunk (observe the last block, plan the next) at the second chunk of a context."""
    runner, dc = policy.runner, policy.model.cfg.dit
    frame = np.asarray(np.random.default_rng(0).uniform(-1, 1, (1, *runner.config.frame_size, 3)), np.float32)
    fns = runner._fns(1, frame)
    text = jnp.concatenate([runner._encoded_text(fns, ("press the button",)),
                            runner._encoded_text(fns, (policy.config.negative_prompt,))])
    state = fns.observe_first(runner.params, fns.start(runner.params, text, frame), frame)
    rs = np.zeros((1, dc.states_per_block, dc.state_dim), np.float32)
    emb = np.zeros((1,), np.int32)
    _, _, state = fns.plan(runner.params, state, rs, emb, np.int32(0))  # chunk 1: the cache now holds frame 0
    block = np.repeat(frame[:, None], 4 * dc.frames_per_block, axis=1)

    def run() -> None:
        s = fns.observe_block(runner.params, jax.tree.map(jnp.copy, state), block)  # it donates its state
        jax.block_until_ready(fns.plan(runner.params, s, rs, emb, np.int32(1)))

    return run


def torch_chunk(policy: DreamZeroJaxPolicy, dtype: torch.dtype) -> Callable[[], None]:
    """The same chunk through diffusers: the observed clip's VAE encode (fp32, as ours) and the DiT calls of
    its Wan transformer (random weights: speed only)."""
    from diffusers import AutoencoderKLWan, WanTransformer3DModel

    mc = policy.model.cfg
    d = mc.dit
    spec = policy.runner.spec(1)
    torch.manual_seed(0)
    peer = WanTransformer3DModel(
        patch_size=d.patch_size, num_attention_heads=d.num_heads, attention_head_dim=d.head_dim, in_channels=d.in_dim,
        out_channels=d.out_dim, text_dim=d.text_dim, freq_dim=d.freq_dim, ffn_dim=d.ffn_dim, num_layers=d.num_layers,
        cross_attn_norm=True, qk_norm="rms_norm_across_heads", eps=d.eps,
        image_dim=d.image_dim if d.has_image else None, added_kv_proj_dim=d.dim if d.has_image else None,
    ).eval().to(dtype)
    for name, module in peer.named_modules():  # as diffusers loads it in bf16: these stay float32
        if any(k in name.split(".") for k in peer._keep_in_fp32_modules or ()):
            module.float()
    v = mc.vae
    if v.is_residual or v.patch_size != 1:
        raise ValueError(f"the peer's VAE covers Wan2.1-style VAEs (preset {mc.name!r} has a Wan2.2 one)")
    vae = AutoencoderKLWan(base_dim=v.base_dim, z_dim=v.z_dim, dim_mult=list(v.dim_mult),
                           num_res_blocks=v.num_res_blocks, temperal_downsample=list(v.temporal_downsample),
                           latents_mean=list(v.latents_mean), latents_std=list(v.latents_std)).eval()  # fp32, as ours
    clip = torch.rand(1, 3, 1 + 4 * d.frames_per_block, *spec.frame_hw) * 2 - 1
    nb = spec.branches
    lat = torch.randn(nb, d.in_dim, d.frames_per_block, *spec.latent_hw, dtype=dtype)
    text = torch.randn(nb, mc.text.text_len, d.text_dim, dtype=dtype)
    img = torch.randn(nb, mc.image.num_tokens, d.image_dim, dtype=dtype) if d.has_image else None
    calls = 1 + sum(spec.dit_mask)  # the t=0 observe pass + the DiT steps

    @torch.no_grad()
    def run() -> None:
        vae.encode(clip)  # the observed block, as our observe step encodes it
        for i in range(calls):
            t = torch.full((nb,), 0.0 if i == 0 else 500.0)
            peer(lat, t, text, encoder_hidden_states_image=img, return_dict=False)

    return run


def main(argv: Sequence[str] | None = None) -> None:
    args = draccus.parse(PrecisionBenchConfig, args=argv)
    threads = os.cpu_count() or 1
    torch.set_num_threads(threads)
    variants = {
        "jax float32": jax_chunk(_policy(args, "float32")),
        "jax bfloat16": jax_chunk(_policy(args, "bfloat16")),
    }
    ref = _policy(args, "float32")
    variants["torch float32"] = torch_chunk(ref, torch.float32)
    variants["torch bfloat16"] = torch_chunk(ref, torch.bfloat16)
    for run in variants.values():  # compile / warm up
        run()
    times: dict[str, list[float]] = {k: [] for k in variants}
    for _ in range(args.reps):
        for name, run in variants.items():
            t = time.perf_counter()
            run()
            times[name].append(time.perf_counter() - t)
    med = {k: float(np.median(v)) for k, v in times.items()}
    d = ref.model.cfg.dit
    print(f"preset={args.preset} view={args.size}px dim={d.dim} layers={d.num_layers} heads={d.num_heads} "
          f"CFG batch 2, DiT on 8 of 16 steps; {threads} threads; median of {args.reps} chunks; "
          f"{jax.devices()[0].device_kind} / torch {torch.__version__}")
    print(f"{'variant':<16} {'ms/chunk':>10}")
    for k, v in med.items():
        print(f"{k:<16} {v * 1e3:>10.1f}")
    ratios = {
        "jax bf16 / jax fp32": med["jax bfloat16"] / med["jax float32"],
        "jax fp32 / torch fp32": med["jax float32"] / med["torch float32"],
        "jax bf16 / torch bf16": med["jax bfloat16"] / med["torch bfloat16"],
        "best jax / best torch": min(med["jax float32"], med["jax bfloat16"])
        / min(med["torch float32"], med["torch bfloat16"]),
    }
    for k, v in ratios.items():
        print(f"{k:<24} {v:6.2f}x")
    out = Path(args.output)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps({"config": vars(args), "ms_per_chunk": {k: v * 1e3 for k, v in med.items()},
                               "ratios": ratios}, indent=2))


if __name__ == "__main__":
    main()
