"""The sharded train step over the DiT (frozen VAE / umT5 / CLIP), with AdamW, LoRA and mixed precision.

The DiT is split once into a graph definition and flat "/"-keyed parameters. Trainable parameters (all
of the DiT, or LoRA adapters + the register encoders) live in the train state with the optimiser state,
step and RNG; the rest are frozen inputs. Both carry shardings from :mod:`.sharding`; one ``jax.jit``
with explicit in/out shardings is the whole SPMD program.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import replace

import jax
import jax.numpy as jnp
import numpy as np
import optax
from flax import nnx, traverse_util
from jax.sharding import Mesh, NamedSharding

from dreamzero_policy.models.dit import CausalWanDiT
from dreamzero_policy.models.world_model import DreamZeroModel
from dreamzero_policy.schedulers.flow_matching import FlowMatchSchedule
from dreamzero_policy.training.config import TrainConfig
from dreamzero_policy.training.lora import REGISTER_PREFIXES, init_lora, merge_lora
from dreamzero_policy.training.loss import TrainBatch, teacher_forcing_loss
from dreamzero_policy.training.sharding import batch_sharding, param_shardings, replicated

BATCH_FIELDS = TrainBatch._fields


def flatten(tree: Mapping) -> dict[str, jax.Array]:
    return traverse_util.flatten_dict(tree, sep="/")


def unflatten(flat: Mapping[str, jax.Array]) -> dict:
    return traverse_util.unflatten_dict(dict(flat), sep="/")


def make_optimizer(cfg: TrainConfig) -> tuple[optax.GradientTransformation, optax.Schedule]:
    o = cfg.optim
    warmup = max(1, int(round(o.warmup_ratio * cfg.steps)))
    schedule = optax.warmup_cosine_decay_schedule(
        0.0, o.lr, warmup, max(cfg.steps, warmup + 1), end_value=o.lr * o.end_lr_ratio
    )
    chain = [optax.clip_by_global_norm(o.clip_norm)] if o.clip_norm > 0 else []
    chain.append(optax.adamw(schedule, b1=o.b1, b2=o.b2, weight_decay=o.weight_decay))
    return optax.chain(*chain), schedule


def encode_raw(model: DreamZeroModel, raw: Mapping[str, jax.Array]) -> TrainBatch:
    """Frozen encoders: raw loader fields (video in [-1, 1], token ids, ...) -> a TrainBatch."""
    video = raw["video"]
    latents = model.encode_video(video)
    text = model.encode_text(raw["text_ids"], raw["text_mask"])
    clip, y = model.encode_first_frame(video[:, 0], video.shape[1])
    out = TrainBatch(
        latents,
        text,
        raw["actions"],
        raw["action_mask"],
        raw["state"],
        raw["embodiment"],
        clip,
        y,
    )
    return jax.tree.map(jax.lax.stop_gradient, out)


class DiTTrainer:
    """Train state + jitted step for one DreamZeroModel's DiT on a mesh."""

    def __init__(
        self, model: DreamZeroModel, cfg: TrainConfig, mesh: Mesh, schedule: FlowMatchSchedule | None = None,
        *, abstract: bool = False,
    ):
        """``abstract``: ``model`` comes from ``nnx.eval_shape``; parameters, LoRA adapters and the state of
        :meth:`init_state` are ``jax.ShapeDtypeStruct``s carrying their shardings, nothing is allocated, and
        :meth:`lower_step` lowers the same SPMD step (memory and cost planning at any scale)."""
        self.cfg, self.mesh, self.abstract = cfg, mesh, abstract
        self.schedule = schedule or FlowMatchSchedule()
        if model.dit.cfg.dtype != cfg.policy.dtype:
            raise ValueError(f"the model computes in {model.dit.cfg.dtype}, the run asks for {cfg.policy.dtype}: "
                             "build it with policy.model_config(master_weights=True)")
        dit_cfg = replace(model.dit.cfg, remat=cfg.remat,
                          activation_sharding=batch_sharding(mesh) if mesh.size > 1 else None)
        model.dit.cfg = dit_cfg
        self.graphdef, params, self.rest = nnx.split(model.dit, nnx.Param, ...)
        flat = flatten(nnx.to_pure_dict(params))
        # fp32 master weights; the forward sees each weight in the dtype inference stores it in (bf16 matmul
        # weights, fp32 norms and modulation), so FSDP gathers move half the bytes.
        runs_as = nnx.eval_shape(lambda: CausalWanDiT(replace(dit_cfg, param_dtype=dit_cfg.dtype), rngs=nnx.Rngs(0)))
        self._run_dtypes = {k: v.dtype for k, v in flatten(nnx.to_pure_dict(nnx.state(runs_as, nnx.Param))).items()}
        self.lora_scale = cfg.lora.alpha / cfg.lora.rank if cfg.lora.rank > 0 else 0.0
        if cfg.lora.rank > 0:
            train_keys = [k for k in flat if k.startswith(REGISTER_PREFIXES)]
        else:
            train_keys = list(flat)
        self._param_sh = param_shardings(flat, mesh)
        put = lambda d: {k: self._place(v, self._param_sh[k]) for k, v in d.items()}
        self.frozen = put({k: v for k, v in flat.items() if k not in set(train_keys)})
        trainable_params = put({k: flat[k] for k in train_keys})
        lora = {}
        if cfg.lora.rank > 0:
            make = lambda: init_lora(flat, tuple(cfg.lora.targets), cfg.lora.rank, jax.random.PRNGKey(cfg.seed + 1))
            lora = jax.eval_shape(make) if abstract else make()
            lora = {k: self._place(v, s) for (k, v), s in zip(lora.items(), param_shardings(lora, mesh).values(), strict=True)}
        self.tx, self.lr_schedule = make_optimizer(cfg)
        self.trainable0 = {"params": unflatten(trainable_params), "lora": unflatten(lora)}
        self._step_fn = None

    def _place(self, x, sharding: NamedSharding):
        if self.abstract:
            return jax.ShapeDtypeStruct(x.shape, x.dtype, sharding=sharding)
        return jax.device_put(x, sharding)

    # ------------------------------------------------------------------------------ state
    def init_state(self) -> dict:
        rep = replicated(self.mesh)
        if self.abstract:
            opt = jax.tree.map(lambda x, s: jax.ShapeDtypeStruct(x.shape, x.dtype, sharding=s),
                               jax.eval_shape(self.tx.init, self.trainable0), self._opt_shardings())
            rng = jax.eval_shape(lambda: jax.random.PRNGKey(self.cfg.seed))
        else:
            opt = jax.jit(self.tx.init, out_shardings=self._opt_shardings())(self.trainable0)
            rng = jax.random.PRNGKey(self.cfg.seed)
        return {
            "trainable": self.trainable0,
            "opt": opt,
            "step": self._place(jax.ShapeDtypeStruct((), jnp.int32) if self.abstract else jnp.zeros((), jnp.int32), rep),
            "rng": self._place(rng, rep),
        }

    def _opt_shardings(self):
        """Optimiser moments take the sharding of the parameter they track; counters are replicated."""
        by_path = {
            tuple(getattr(k, "key", k) for k in path): x.sharding
            for path, x in jax.tree_util.tree_flatten_with_path(self.trainable0)[0]
        }
        rep = replicated(self.mesh)

        def pick(path, _):
            keys = tuple(k.key for k in path if isinstance(k, jax.tree_util.DictKey))
            for n in range(len(keys)):
                if keys[n:] in by_path:
                    return by_path[keys[n:]]
            return rep

        return jax.tree_util.tree_map_with_path(pick, jax.eval_shape(self.tx.init, self.trainable0))

    def assemble(self, trainable: Mapping, frozen: Mapping[str, jax.Array]) -> dict[str, jax.Array]:
        """Flat DiT params for the forward: frozen + trainable, LoRA merged, each in its inference dtype."""
        params = {**frozen, **flatten(trainable["params"])}
        lora = flatten(trainable["lora"]) if trainable["lora"] else {}
        if lora:
            params = merge_lora(params, lora, self.lora_scale)
        return {k: v.astype(self._run_dtypes[k]) for k, v in params.items()}

    def merged_params(self, state: Mapping) -> dict[str, np.ndarray]:
        """fp32 flat DiT params with LoRA folded in (what an exported policy loads)."""
        params = {**self.frozen, **flatten(state["trainable"]["params"])}
        lora = flatten(state["trainable"]["lora"]) if state["trainable"]["lora"] else {}
        if lora:
            params = merge_lora(params, lora, self.lora_scale)
        return {k: np.asarray(jax.device_get(v)) for k, v in params.items()}

    # ------------------------------------------------------------------------------ step
    def _loss(self, trainable, frozen, batch: TrainBatch, key):
        params = self.assemble(trainable, frozen)
        dit = nnx.merge(self.graphdef, unflatten(params), self.rest)
        out = teacher_forcing_loss(dit, batch, key, self.schedule)
        return out.loss, out

    def _step(self, state, frozen, batch: TrainBatch):
        bs = batch_sharding(self.mesh)
        batch = jax.tree.map(lambda x: jax.lax.with_sharding_constraint(x, bs), batch)
        key = jax.random.fold_in(state["rng"], 0 if self.cfg.windows.overfit else state["step"])
        (loss, out), grads = jax.value_and_grad(self._loss, has_aux=True)(
            state["trainable"], frozen, batch, key
        )
        updates, opt = self.tx.update(grads, state["opt"], state["trainable"])
        trainable = optax.apply_updates(state["trainable"], updates)
        metrics = {
            "loss": loss,
            "video_loss": out.video_loss,
            "action_loss": out.action_loss,
            "grad_norm": optax.global_norm(grads),
            "lr": self.lr_schedule(state["step"]),
        }
        new = {"trainable": trainable, "opt": opt, "step": state["step"] + 1, "rng": state["rng"]}
        return new, metrics

    def _jitted_step(self, state: dict, batch: TrainBatch):
        if self._step_fn is None:
            state_sh = jax.tree.map(lambda x: x.sharding, state)
            frozen_sh = {k: self._param_sh[k] for k in self.frozen}
            bsh = jax.tree.map(lambda _: batch_sharding(self.mesh), batch)
            self._step_fn = jax.jit(
                self._step,
                in_shardings=(state_sh, frozen_sh, bsh),
                out_shardings=(state_sh, replicated(self.mesh)),
                donate_argnums=(0,),
            )
        return self._step_fn

    def step(self, state: dict, batch: TrainBatch) -> tuple[dict, dict]:
        return self._jitted_step(state, batch)(state, self.frozen, batch)

    def lower_step(self, state: dict, batch: TrainBatch) -> jax.stages.Lowered:
        """The step lowered for (possibly abstract) ``state`` and ``batch``: ``.compile().memory_analysis()``."""
        return self._jitted_step(state, batch).lower(state, self.frozen, batch)


def batch_from_arrays(arrays: Mapping[str, jax.Array]) -> TrainBatch:
    """A TrainBatch from precomputed fields (clip / y absent for models without them)."""
    return TrainBatch(**{k: arrays.get(k) for k in BATCH_FIELDS})
