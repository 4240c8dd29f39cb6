"""Model construction for training (random init or a pretrained directory, with embodiment growth) and
export of any checkpoint to the policy's pretrained directory.

Fine-tuning onto a new embodiment (documented recipe)::

    dreamzero-train --config_path=configs/finetune_new_embodiment.yaml \\
        --policy.path=outputs/tiny_reach/pretrained_model --dataset.root=data/dz_reach_arm \\
        --dataset.repo_id=local/dz_reach_arm --policy.num_embodiments=3 --policy.embodiment_id=2
    (the run exports to <output_dir>/pretrained_model when it finishes)

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

from dreamzero_policy.configuration_dreamzero import DreamZeroJaxConfig
from dreamzero_policy.convert.state_io import flat_params, load_flat
from dreamzero_policy.inference.device import device_name_of_backend
from dreamzero_policy.models.world_model import DreamZeroModel
from dreamzero_policy.training.config import TrainConfig
from dreamzero_policy.weights_io import WEIGHTS_NAME, read_weights, save_flat

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


def load_pretrained_config(path: str | Path, cli_overrides: list[str] | None = None) -> DreamZeroJaxConfig:
    if not (Path(path) / "config.json").is_file():
        raise FileNotFoundError(f"--policy.path={path}: no config.json there (a directory written by save_pretrained)")
    cfg = PreTrainedConfig.from_pretrained(str(path), cli_overrides=cli_overrides or [])
    if not isinstance(cfg, DreamZeroJaxConfig):
        raise ValueError(f"{path} holds a {type(cfg).__name__}, not a dreamzero_jax policy")
    return cfg


def build_model(cfg: TrainConfig) -> DreamZeroModel:
    """The model to train: the saved policy of ``--policy.path`` (its embodiments grown to
    ``--policy.num_embodiments``) or a seeded random init of ``--policy.preset``."""
    policy = cfg.policy
    if not policy.pretrained_path:
        return DreamZeroModel(policy.model_config(master_weights=True), rngs=nnx.Rngs(cfg.seed))
    path = Path(policy.pretrained_path)
    saved = load_pretrained_config(path).model_config()
    mc = policy.model_config(master_weights=True)
    if saved.name != mc.name:
        raise ValueError(f"--policy.path {path} is preset {saved.name!r}; the run asks for {mc.name!r}")
    for name in ("action_dim", "state_dim"):
        if getattr(saved.dit, name) != getattr(mc.dit, name):
            raise ValueError(f"--policy.path {path} has {name}={getattr(saved.dit, name)}; the run asks for "
                             f"{getattr(mc.dit, name)} (the padded widths of a trained model are fixed)")
    model = DreamZeroModel(mc, rngs=nnx.Rngs(cfg.seed))
    flat = grow_embodiments(read_weights(path / WEIGHTS_NAME), saved.dit.num_embodiments, mc.dit.num_embodiments,
                            cfg.copy_embodiment_from)
    load_flat(model, flat)
    return model


def export_pretrained(output_dir: str | Path, export_to: str | Path, step: int | None = None) -> Path:
    """Checkpoint (latest, or ``step``) of a run in ``output_dir`` -> config.json + model.safetensors +
    processor files with the run's normalisation statistics + a model card: what ``lerobot-eval
    --policy.path`` loads and what a push uploads."""
    from dreamzero_policy.processor_dreamzero import make_dreamzero_jax_pre_post_processors
    from dreamzero_policy.training.hub import write_model_card
    from dreamzero_policy.training.run import CKPT_DIR, checkpoint_manager, restore, stats_from_json
    from dreamzero_policy.training.sharding import make_mesh
    from dreamzero_policy.training.trainer import DiTTrainer

    if not (Path(output_dir) / CKPT_DIR).is_dir():  # checked first: the manager would create the directory
        raise FileNotFoundError(f"no training run at {output_dir} (no {CKPT_DIR}/ directory)")
    mgr = checkpoint_manager(output_dir, keep_last=None)
    if mgr.latest_step() is None:
        raise ValueError(f"no checkpoint under {output_dir}")
    step = step or mgr.latest_step()
    meta = mgr.restore(step, args=ocp.args.Composite(meta=ocp.args.JsonRestore()))["meta"]
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
    model.dit.cfg = replace(model.dit.cfg, remat=False)

    export_to = Path(export_to)
    export_to.mkdir(parents=True, exist_ok=True)
    # Widths and embodiments come from the weights (a fine-tune inherits its source's padded dims).
    policy = replace(cfg.policy, num_embodiments=model.cfg.dit.num_embodiments, action_dim=model.cfg.dit.action_dim,
                     state_dim=model.cfg.dit.state_dim, device=device_name_of_backend(), pretrained_path=None)
    policy._save_pretrained(export_to)
    # Stored as the policy runs (a bf16 policy gets bf16 DiT/umT5/CLIP weights), not as trained (fp32 masters).
    runs_as = nnx.eval_shape(lambda: DreamZeroModel(policy.model_config(), rngs=nnx.Rngs(0)))
    dtypes = {k: v.dtype for k, v in flat_params(runs_as).items()}
    save_flat({k: np.asarray(jax.device_get(v)).astype(dtypes[k]) for k, v in flat_params(model).items()},
              export_to / WEIGHTS_NAME)
    stats = {
        k: {s: torch.as_tensor(v) for s, v in d.items()} for k, d in stats_from_json(meta["stats"]).items()
    }
    pre, post = make_dreamzero_jax_pre_post_processors(policy, stats)
    pre.save_pretrained(export_to)
    post.save_pretrained(export_to)
    (export_to / "train_meta.json").write_text(json.dumps({"source": str(output_dir), "step": step}))
    write_model_card(export_to, policy, dataset_repo_id=cfg.dataset.repo_id, steps=step)
    return export_to
