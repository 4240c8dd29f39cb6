"""Model construction for training (random init or a pretrained directory, with embodiment growth) and
export of any checkpoint to the policy's pretrained directory.

Fine-tuning onto a new embodiment (documented recipe)::

    dreamzero-train --config_path configs/finetune_new_embodiment.yaml \\
        --init_from outputs/pretrained --dataset_root data/dz_reach_arm --repo_id local/dz_reach_arm \\
        --num_embodiments 3 --embodiment_id 2 --output_dir outputs/ft_arm
    dreamzero-train --export_from outputs/ft_arm --export_to outputs/ft_arm/pretrained

The dataset's action/state dims may differ from the pretraining data's: both are zero-padded to the
model's ``action_dim`` / ``state_dim`` with a loss mask. The new embodiment's category-specific
weights (state/action encoder and action decoder) start as copies of ``copy_embodiment_from``.
"""

from __future__ import annotations

import json
from dataclasses import replace
from pathlib import Path

import jax
import numpy as np
import orbax.checkpoint as ocp
import torch
from flax import nnx
from lerobot.configs.policies import PreTrainedConfig
from lerobot.datasets.lerobot_dataset import LeRobotDatasetMetadata
from lerobot.utils.feature_utils import dataset_to_policy_features

from dreamzero_policy.configuration_dreamzero import DreamZeroJaxConfig
from dreamzero_policy.convert.state_io import flat_params, load_flat
from dreamzero_policy.models.world_model import DreamZeroModel
from dreamzero_policy.training.config import TrainConfig
from dreamzero_policy.weights_io import WEIGHTS_NAME, read_weights, save_weights

CATEGORY_PREFIXES = ("dit/state_encoder/", "dit/action_encoder/", "dit/action_decoder/")


def grow_embodiments(
    flat: dict[str, np.ndarray], old: int, new: int, copy_from: int
) -> dict[str, np.ndarray]:
    """Extend every category-specific tensor (leading axis = embodiments) from ``old`` to ``new`` rows."""
    if new < old:
        raise ValueError(f"num_embodiments can only grow: {old} -> {new}")
    if not 0 <= copy_from < old:
        raise ValueError(f"copy_embodiment_from={copy_from} not in [0, {old})")
    out = dict(flat)
    for k, v in flat.items():
        if k.startswith(CATEGORY_PREFIXES) and v.shape[0] == old and new > old:
            out[k] = np.concatenate([v, np.repeat(v[copy_from : copy_from + 1], new - old, axis=0)], axis=0)
    return out


def load_pretrained_config(path: str | Path) -> DreamZeroJaxConfig:
    cfg = PreTrainedConfig.from_pretrained(str(path))
    if not isinstance(cfg, DreamZeroJaxConfig):
        raise ValueError(f"{path} holds a {type(cfg).__name__}, not a dreamzero_jax policy")
    return cfg


def build_model(cfg: TrainConfig) -> DreamZeroModel:
    """The model to train: a pretrained directory's (embodiments grown if asked) or a seeded random init."""
    if not cfg.init_from:
        return DreamZeroModel(cfg.policy_config().model_config(), rngs=nnx.Rngs(cfg.seed))
    src = load_pretrained_config(cfg.init_from)
    if src.preset != cfg.preset:
        raise ValueError(
            f"init_from {cfg.init_from} is preset {src.preset!r} but the run asks for {cfg.preset!r}"
        )
    for name in ("action_dim", "state_dim"):
        want, have = getattr(cfg, name), getattr(src.model_config().dit, name)
        if want is not None and want != have:
            raise ValueError(f"init_from {cfg.init_from} has {name}={have}; the run asks for {want}")
    old = src.model_config().dit.num_embodiments
    new = cfg.num_embodiments or old
    mc = src.model_config()
    model = DreamZeroModel(replace(mc, dit=replace(mc.dit, num_embodiments=new)), rngs=nnx.Rngs(cfg.seed))
    flat = grow_embodiments(
        read_weights(Path(cfg.init_from) / WEIGHTS_NAME), old, new, cfg.copy_embodiment_from
    )
    load_flat(model, flat)
    return model


def export_pretrained(output_dir: str | Path, export_to: str | Path, step: int | None = None) -> Path:
    """Checkpoint (latest, or ``step``) of a run in ``output_dir`` -> config.json + model.safetensors +
    processor files with the run's normalisation statistics."""
    from dreamzero_policy.processor_dreamzero import make_dreamzero_jax_pre_post_processors
    from dreamzero_policy.training.run import checkpoint_manager, restore, stats_from_json
    from dreamzero_policy.training.sharding import make_mesh
    from dreamzero_policy.training.trainer import DiTTrainer

    mgr = checkpoint_manager(output_dir, TrainConfig())
    if mgr.latest_step() is None:
        raise ValueError(f"no checkpoint under {output_dir}")
    meta = mgr.restore(step or mgr.latest_step(), args=ocp.args.Composite(meta=ocp.args.JsonRestore()))[
        "meta"
    ]
    cfg = TrainConfig.from_dict(meta["train_config"])
    model = build_model(cfg)
    trainer = DiTTrainer(model, cfg, make_mesh(devices=jax.devices()[:1]))
    state, _ = restore(mgr, trainer.init_state(), step)
    mgr.close()
    dit_flat = trainer.merged_params(state)
    load_flat(
        model,
        {
            **{k: np.asarray(v) for k, v in flat_params(model).items()},
            **{f"dit/{k}": v for k, v in dit_flat.items()},
        },
    )
    model.dit.cfg = replace(model.dit.cfg, dtype="float32", remat=False)

    export_to = Path(export_to)
    export_to.mkdir(parents=True, exist_ok=True)
    policy = cfg.policy_config()
    if cfg.num_embodiments is None:
        policy = replace(policy, num_embodiments=model.cfg.dit.num_embodiments)
    # Widths come from the weights (a fine-tune inherits its source's padded dims).
    policy = replace(policy, action_dim=model.cfg.dit.action_dim, state_dim=model.cfg.dit.state_dim)
    if cfg.dataset_root:
        feats = dataset_to_policy_features(
            LeRobotDatasetMetadata(cfg.repo_id, root=cfg.dataset_root).features
        )
        policy.input_features = {k: v for k, v in feats.items() if k.startswith("observation.")}
        policy.output_features = {k: v for k, v in feats.items() if k == "action"}
    policy._save_pretrained(export_to)
    save_weights(model, export_to / WEIGHTS_NAME)
    stats = {
        k: {s: torch.as_tensor(v) for s, v in d.items()} for k, d in stats_from_json(meta["stats"]).items()
    }
    pre, post = make_dreamzero_jax_pre_post_processors(policy, stats)
    pre.save_pretrained(export_to)
    post.save_pretrained(export_to)
    (export_to / "train_meta.json").write_text(
        json.dumps({"source": str(output_dir), "step": step or "latest"})
    )
    return export_to
