"""Per-device memory and FLOPs of real-scale inference and training, compiled from abstract shapes only.

Every model here comes from ``nnx.eval_shape``; arguments are ``jax.ShapeDtypeStruct``s carrying their
shardings, and each executable is ``jax.jit(...).lower(...).compile()``d for its ``memory_analysis()``.
No weight is ever allocated, so the 14B model plans on a laptop (over a faked CPU mesh:
``XLA_FLAGS=--xla_force_host_platform_device_count=N`` before JAX starts). FLOPs come from
:mod:`dreamzero_policy.models.flops`, because ``cost_analysis()`` counts a loop body once.
"""

from __future__ import annotations

import time
from dataclasses import asdict, dataclass, replace
from pathlib import Path

import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx
from jax.sharding import NamedSharding, SingleDeviceSharding
from lerobot.configs.default import DatasetConfig
from lerobot.configs.types import FeatureType, PolicyFeature

from dreamzero_policy.configuration_dreamzero import DreamZeroJaxConfig
from dreamzero_policy.convert.policy_settings import policy_settings
from dreamzero_policy.inference import rollout as ro
from dreamzero_policy.models import flops
from dreamzero_policy.models.presets import get_preset
from dreamzero_policy.models.world_model import DreamZeroModel
from dreamzero_policy.nn import masks
from dreamzero_policy.schedulers.unipc import UniPCSchedule
from dreamzero_policy.training.config import LoraConfig, TrainConfig
from dreamzero_policy.training.loss import TrainBatch
from dreamzero_policy.training.sharding import batch_sharding, make_mesh
from dreamzero_policy.training.trainer import DiTTrainer, encode_raw

DROID_CAMERAS = ("exterior_image_1_left", "exterior_image_2_left", "wrist_image_left")
DROID_CAMERA_SHAPE = (3, 180, 320)  # DROID's recorded views; the policy resizes them to its view size


@dataclass(frozen=True)
class Chip:
    name: str
    bf16_flops: float  # dense peak, FLOP/s
    hbm_bytes: float


CHIPS = (Chip("H100", 989e12, 80e9), Chip("TPU v5p", 459e12, 95e9))


@dataclass
class CaseResult:
    """One compiled executable (or a per-chunk summary), per device."""

    preset: str
    case: str
    devices: int
    param_bytes: int  # parameters among the arguments (training: fp32 masters, frozen + trainable)
    argument_bytes: int
    output_bytes: int
    temp_bytes: int
    alias_bytes: int  # outputs written into donated arguments (not counted twice)
    flops: int | None  # per chunk (inference) / per step (training); None: not counted (once per context)
    compile_s: float
    resident_bytes: int = 0  # on the device but not an argument (umT5 weights when they live there)
    note: str = ""

    @property
    def total_bytes(self) -> int:
        return self.argument_bytes + self.output_bytes + self.temp_bytes - self.alias_bytes + self.resident_bytes

    def ideal_s(self, chip: Chip) -> float | None:
        return None if self.flops is None else self.flops / chip.bf16_flops

    def fits(self, chip: Chip) -> bool:
        return self.total_bytes <= chip.hbm_bytes

    def to_dict(self) -> dict:
        chips = {c.name: {"ideal_s": self.ideal_s(c), "fits": self.fits(c)} for c in CHIPS}
        return asdict(self) | {"total_bytes": self.total_bytes, "chips": chips}


def droid_policy(preset: str, *, attention: str = "xla", view: tuple[int, int] | None = None) -> DreamZeroJaxConfig:
    """The policy config a converted bf16 DROID checkpoint of ``preset`` gets (``policy_settings``: views,
    tiling, sampling); ``view`` overrides the view size (small test geometries)."""
    cams = {f"observation.images.{n}": DROID_CAMERA_SHAPE for n in DROID_CAMERAS}
    fields = policy_settings(preset, get_preset(preset), cameras=cams, embodiment="oxe_droid", config_json=None,
                             conf=None, dit_dtypes=[np.dtype(jnp.bfloat16)], src_dir=Path("/nonexistent"),
                             tokenizer_dir=None).fields
    if view is not None:
        fields["view_height"], fields["view_width"] = view
    feats = {k: PolicyFeature(FeatureType.VISUAL, s) for k, s in cams.items()}
    feats["observation.state"] = PolicyFeature(FeatureType.STATE, (8,))
    return DreamZeroJaxConfig(preset=preset, device="cpu", attention_impl=attention, input_features=feats,
                              output_features={"action": PolicyFeature(FeatureType.ACTION, (8,))}, **fields)


def _sds(tree, sharding):
    return jax.tree.map(lambda x: jax.ShapeDtypeStruct(x.shape, x.dtype, sharding=sharding), tree)


def _nbytes(x: jax.ShapeDtypeStruct) -> int:
    shape = x.sharding.shard_shape(x.shape) if isinstance(x.sharding, NamedSharding) else x.shape
    return int(np.prod(shape)) * x.dtype.itemsize


def tree_bytes(tree) -> int:
    """Per-device bytes of a tree of (sharded) ShapeDtypeStructs."""
    return sum(_nbytes(x) for x in jax.tree.leaves(tree))


def _compile(fn, *args, donate: tuple[int, ...] = ()):
    # keep_unused: every weight the runner passes stays an argument (plan never reads the VAE's, but they
    # are on the device all the same)
    t = time.perf_counter()
    compiled = jax.jit(fn, keep_unused=True, donate_argnums=donate).lower(*args).compile()
    return compiled, time.perf_counter() - t


def _result(preset: str, case: str, devices: int, compiled, params, flops_: int | None, compile_s: float,
            **kw) -> CaseResult:
    m = compiled.memory_analysis()
    return CaseResult(preset, case, devices, tree_bytes(params), int(m.argument_size_in_bytes),
                      int(m.output_size_in_bytes), int(m.temp_size_in_bytes), int(m.alias_size_in_bytes),
                      flops_, compile_s, **kw)


# ---------------------------------------------------------------------------------------------- inference
def inference_cases(policy: DreamZeroJaxConfig, batch: int = 1) -> list[CaseResult]:
    """The KV-cached rollout of ``RolloutRunner`` on one device: start of a context, the two executables
    of every later chunk (observe_block, plan) and umT5; then the per-chunk summary with umT5 on the host
    (``text_encoder_on_host``) and on the device."""
    mc = policy.model_config()
    name, dc = mc.name, mc.dit
    sh = SingleDeviceSharding(jax.devices()[0])
    model = nnx.eval_shape(lambda: DreamZeroModel(mc, rngs=nnx.Rngs(0)))
    # As RolloutRunner.set_params: umT5 is merged back as shapes only; the rollout never takes its weights.
    graphdef, text, rest = nnx.split(model, nnx.PathContains("text_encoder"), ...)
    text_shapes = jax.tree.map(lambda x: jax.ShapeDtypeStruct(x.shape, x.dtype), text)
    params = _sds(rest, sh)
    text_graphdef, text_params = nnx.split(model.text_encoder)
    text_params = _sds(text_params, sh)
    bind = lambda p: nnx.merge(graphdef, text_shapes, p)

    h, w = policy.frame_size
    frame = jax.ShapeDtypeStruct((batch, h, w, 3), jnp.float32, sharding=sh)
    lat = jax.eval_shape(lambda m, f: m.encode_video(f[:, None]), model, frame).shape
    mask = [True] * policy.num_inference_steps if policy.dit_steps is None else [
        i in set(policy.dit_steps) for i in range(policy.num_inference_steps)]
    spec = ro.RolloutSpec(batch=batch, frame_hw=(h, w), latent_hw=lat[2:4], max_chunks=policy.max_chunks_before_reset,
                          cfg_scale=float(policy.cfg_scale), dit_mask=tuple(mask),
                          schedule=UniPCSchedule.create(num_steps=policy.num_inference_steps, shift=policy.sigma_shift))
    nb = spec.branches

    ids = jax.ShapeDtypeStruct((batch, mc.text.text_len), jnp.int32, sharding=sh)
    text_fn, t_text = _compile(lambda p, i, k: nnx.merge(text_graphdef, p).encode_prompts(i, k), text_params, ids, ids)
    states = jax.eval_shape(lambda p, i, k: nnx.merge(text_graphdef, p).encode_prompts(i, k), text_params, ids, ids)
    both = jax.ShapeDtypeStruct((nb * batch, *states.shape[1:]), states.dtype, sharding=sh)

    start = lambda p, t, f: ro.start_context(bind(p), spec, t, f)
    start_fn, t_start = _compile(start, params, both, frame)
    state = _sds(jax.eval_shape(start, params, both, frame), sh)
    fpb = dc.frames_per_block
    frames = jax.ShapeDtypeStruct((batch, 4 * fpb, h, w, 3), jnp.float32, sharding=sh)
    observe = lambda p, s, f: ro.observe_block(bind(p), spec, s, f)
    obs_fn, t_obs = _compile(observe, params, state, frames)
    obs_donated, t_obs_d = _compile(observe, params, state, frames, donate=(1,))
    rs = jax.ShapeDtypeStruct((batch, dc.states_per_block, dc.state_dim), jnp.float32, sharding=sh)
    emb = jax.ShapeDtypeStruct((batch,), jnp.int32, sharding=sh)
    seed = jax.ShapeDtypeStruct((), jnp.int32, sharding=sh)

    def plan(p, s, r, e, n):
        return ro.plan(bind(p), spec, s, r, e, jax.random.fold_in(jax.random.key(policy.seed), n))

    plan_fn, t_plan = _compile(plan, params, state, rs, emb, seed)
    plan_donated, t_plan_d = _compile(plan, params, state, rs, emb, seed, donate=(1,))

    # FLOPs per chunk: observe = the clip's VAE encode + one t=0 DiT pass over the block; plan = the DiT
    # on the new block and its register at every DiT step; both with the CFG rows. The VAE is loop-free
    # (unrolled scan), so XLA's own count of it is exact.
    clip = jax.ShapeDtypeStruct((batch, 1 + 4 * fpb, h, w, 3), jnp.float32, sharding=sh)
    vae = int(jax.jit(lambda p, f: bind(p).encode_video(f)).lower(params, clip).cost_analysis()["flops"])
    s_len = (lat[2] // dc.patch_size[1]) * (lat[3] // dc.patch_size[2])
    text_len, image_len = both.shape[1], _clip_tokens(model, frame)
    kw = dict(rows=nb * batch, video_tokens=fpb * s_len, cache_tokens=state.k.shape[2], text_len=text_len,
              image_len=image_len)
    obs_flops = vae + flops.chunk_forward_flops(dc, register=False, **kw)
    plan_flops = sum(mask) * flops.chunk_forward_flops(dc, register=True, **kw)

    umt5 = tree_bytes(text_params)
    geo = f"frame {h}x{w}, {s_len} tokens/latent frame, cache {state.k.shape[2]} tokens, CFG x{nb}"
    steps = f"{sum(mask)} DiT steps"
    start_row = _result(name, "infer start (per context)", 1, start_fn, params, None, t_start, note=geo)
    vae_note = f"incl. the fp32 VAE encode of {1 + 4 * fpb} frames: {vae / 1e12:.2f} TFLOP"
    runner = [start_row, _result(name, "infer observe_block", 1, obs_fn, params, obs_flops, t_obs, note=vae_note),
              _result(name, f"infer plan ({steps})", 1, plan_fn, params, plan_flops, t_plan)]
    # RolloutRunner donates the state (each call writes the new cache over the old); the rows without
    # donation show what holding both copies would cost.
    donated = [start_row,
               _result(name, "infer observe_block, state donated", 1, obs_donated, params, obs_flops, t_obs_d),
               _result(name, f"infer plan ({steps}), state donated", 1, plan_donated, params, plan_flops, t_plan_d)]
    text_row = _result(name, "infer umT5 encode (per task)", 1, text_fn, text_params, None, t_text,
                       resident_bytes=tree_bytes(params))

    def chunk(rows: list[CaseResult], case: str, **kw) -> CaseResult:
        peak = max(rows, key=lambda r: r.total_bytes)  # the executables run one after another
        return replace(peak, case=case, flops=obs_flops + plan_flops, compile_s=sum(r.compile_s for r in rows),
                       note=f"peak of {peak.case}; {geo}", **kw)

    return [*runner, *donated[1:], text_row,
            chunk(runner, "infer chunk, state not donated, umT5 on host"),
            chunk(donated, "infer chunk (as RolloutRunner), umT5 on device", resident_bytes=umt5),
            chunk(donated, "infer chunk (as RolloutRunner), umT5 on host")]


def _clip_tokens(model: DreamZeroModel, frame: jax.ShapeDtypeStruct) -> int:
    if not model.cfg.dit.has_image:
        return 0
    return jax.eval_shape(lambda m, f: m.image_encoder.encode_image(f), model, frame).shape[1]


# ---------------------------------------------------------------------------------------------- training
def training_case(policy: DreamZeroJaxConfig, *, fsdp: int, lora_rank: int, num_chunks: int = 4,
                  per_device_batch: int = 1, remat: bool = True) -> CaseResult:
    """One ``DiTTrainer`` step (fp32 masters, bf16 compute, AdamW sharded like the params) over an FSDP mesh of
    ``fsdp`` devices, one teacher-forcing window of ``num_chunks`` chunks per sample."""
    mc = policy.model_config(master_weights=True)
    model = nnx.eval_shape(lambda: DreamZeroModel(mc, rngs=nnx.Rngs(0)))
    cfg = TrainConfig(DatasetConfig(repo_id="local/plan"), policy=policy, remat=remat,
                      lora=LoraConfig(rank=lora_rank))
    mesh = make_mesh(1, fsdp, 1, devices=jax.devices()[:fsdp])
    trainer = DiTTrainer(model, cfg, mesh, abstract=True)
    state = trainer.init_state()

    b = fsdp * per_device_batch
    h, w = policy.frame_size
    dc = mc.dit
    frames = 1 + num_chunks * 4 * dc.frames_per_block
    na, ns = num_chunks * dc.actions_per_block, num_chunks * dc.states_per_block
    f32 = lambda *s: jax.ShapeDtypeStruct(s, jnp.float32)
    raw = dict(video=f32(b, frames, h, w, 3), text_ids=jax.ShapeDtypeStruct((b, mc.text.text_len), jnp.int32),
               text_mask=jax.ShapeDtypeStruct((b, mc.text.text_len), jnp.int32), actions=f32(b, na, dc.action_dim),
               action_mask=f32(b, na, dc.action_dim), state=f32(b, ns, dc.state_dim),
               embodiment=jax.ShapeDtypeStruct((b,), jnp.int32))
    batch = jax.eval_shape(encode_raw, model, raw)  # exactly what the frozen encoders hand the trainer
    batch = TrainBatch(*(None if x is None else _sds(x, batch_sharding(mesh)) for x in batch))

    t = time.perf_counter()
    compiled = trainer.lower_step(state, batch).compile()
    compile_s = time.perf_counter() - t

    lat = batch.latents.shape
    s_len = (lat[2] // dc.patch_size[1]) * (lat[3] // dc.patch_size[2])
    layout = masks.teacher_forcing_layout(lat[1], s_len, dc.frames_per_block, dc.actions_per_block,
                                          dc.states_per_block)
    pairs = int(masks.attention_mask(layout, layout, frames_per_block=dc.frames_per_block,
                                     local_window_frames=dc.local_window_frames).sum())
    image_len = 0 if batch.clip is None else batch.clip.shape[1]
    fwd, blocks = flops.train_forward_flops(dc, rows=per_device_batch, num_frames=lat[1], frame_tokens=s_len,
                                            text_len=batch.text.shape[1], image_len=image_len, self_pairs=pairs)
    merge = flops.lora_merge_flops(dc, lora_rank, tuple(cfg.lora.targets)) if lora_rank else 0
    step = flops.train_step_flops(fwd, blocks, remat=remat, lora_merge=merge)
    params = (trainer.frozen, state["trainable"])  # LoRA adapters included
    kind = f"LoRA r{lora_rank}" if lora_rank else "full FT"
    note = (f"{lat[1]} latent frames x {s_len} tokens, {len(layout)} tokens/sample, {pairs / len(layout) ** 2:.0%} "
            f"of attention pairs unmasked, global batch {b}, remat={remat}")
    return _result(mc.name, f"train {kind}, FSDP {fsdp}", fsdp, compiled, params, step, compile_s, note=note)
