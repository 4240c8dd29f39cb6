"""``dreamzero-train``: train, resume, fine-tune, precompute encoder outputs, or export a checkpoint.

    dreamzero-train --dataset.repo_id=local/dz_reach --dataset.root=data/dz_reach --policy.preset=small \\
        --output_dir=outputs/train --steps=1000 --batch_size=16
    dreamzero-train --config_path=configs/train_tiny_reach.yaml --dataset.root=data/dz_reach
    dreamzero-train --policy.path=outputs/train/pretrained_model --policy.num_embodiments=3 ...  (fine-tune)
    dreamzero-train ... --precompute.dir=out/pre --precompute.only=true
    dreamzero-train --export_from=outputs/train --export_to=outputs/train/pretrained_model

A finished run exports its policy to ``<output_dir>/pretrained_model`` (what ``lerobot-eval
--policy.path`` loads and ``--policy.repo_id`` pushes). Multi-host: the same command on every host with
``--mesh.distributed=true`` (``jax.distributed.initialize`` reads the coordinator from the cluster
environment) and a mesh whose data*fsdp*tensor equals the global device count.
"""

from __future__ import annotations

import json
import sys
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import draccus

from dreamzero_policy.training.config import TrainConfig


@dataclass
class ExportConfig:
    export_from: str  # a run's output_dir (holds checkpoints/)
    export_to: str | None = None  # default: <export_from>/pretrained_model
    step: int | None = None  # default: the newest checkpoint


def parse_train_config(argv: Sequence[str]) -> TrainConfig:
    """draccus over TrainConfig; ``--policy.path=DIR`` loads that saved policy config, with any other
    ``--policy.*`` flags applied on top (as ``lerobot-train`` does)."""
    from lerobot.configs import parser

    argv = list(argv)
    path = parser.get_path_arg("policy", argv)
    if not path:
        return draccus.parse(TrainConfig, args=argv)
    from dreamzero_policy.training.export import load_pretrained_config

    # A recipe's `policy:` section applies on top of the saved config too, before the command line's.
    recipe = parser.parse_arg("config_path", argv)
    overrides = _flags(_yaml_section(recipe, "policy")) if recipe else []
    policy = load_pretrained_config(path, overrides + parser.get_cli_overrides("policy", argv))
    policy.pretrained_path = Path(path)
    cfg = draccus.parse(TrainConfig, args=parser.filter_path_args("policy", argv))
    cfg.policy = policy
    return cfg


def _yaml_section(path: str, key: str) -> dict:
    import yaml

    with open(path) as f:
        data = yaml.safe_load(f) or {}
    return data.get(key) or {}


def _flags(d: dict, prefix: str = "") -> list[str]:
    """{"a": {"b": 1}, "c": [x, y]} -> ["--a.b=1", '--c=["x", "y"]'] (over a saved JSON config, draccus
    reads list values as JSON)."""
    out = []
    for k, v in d.items():
        name = f"{prefix}{k}"
        if isinstance(v, dict):
            out += _flags(v, f"{name}.")
        elif isinstance(v, list):
            out.append(f"--{name}={json.dumps(v)}")
        elif isinstance(v, bool):
            out.append(f"--{name}={str(v).lower()}")
        elif v is not None:
            out.append(f"--{name}={v}")
    return out


def _fail(e: BaseException) -> SystemExit:
    return SystemExit(f"dreamzero-train: {e}")


def main(argv: Sequence[str] | None = None) -> None:
    argv = list(sys.argv[1:] if argv is None else argv)
    if any(a == "--export_from" or a.startswith("--export_from=") for a in argv):
        from dreamzero_policy.training.export import export_pretrained

        ex = draccus.parse(ExportConfig, args=argv)
        try:
            dst = export_pretrained(ex.export_from, ex.export_to or f"{ex.export_from}/pretrained_model", ex.step)
        except (ValueError, FileNotFoundError) as e:
            raise _fail(e) from None
        print(f"exported to {dst}")
        return
    try:
        cfg = parse_train_config(argv)
    except draccus.utils.ParsingError as e:  # a config's own check failed while draccus built it
        raise _fail(e.__cause__ or e) from None
    except (ValueError, FileNotFoundError) as e:
        raise _fail(e) from None
    from dreamzero_policy.training.run import precompute_only, preflight, train

    try:
        preflight(cfg)  # everything that can be checked before building a model
    except (ValueError, OSError) as e:
        raise _fail(e) from None
    if cfg.precompute.only:
        print(f"wrote {precompute_only(cfg)}")
        return
    recs = train(cfg)
    if recs:
        print(f"done: step {recs[-1]['step']} loss {recs[-1]['loss']:.5f} -> {cfg.output_dir}")


if __name__ == "__main__":
    main()
