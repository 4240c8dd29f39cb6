"""Optional Weights & Biases logging (``--wandb.*``, LeRobot's ``WandBConfig``), safe without a network.

wandb is not a dependency: ``--wandb.enable=true`` without it installed is an error before training.
``--wandb.mode`` unset means ``offline`` (the run is written under ``<output_dir>/wandb`` and can be
uploaded later with ``wandb sync``), so a robot PC without internet never blocks on a login or upload;
pass ``--wandb.mode=online`` to stream. No checkpoints are uploaded as artifacts.
"""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from dreamzero_policy.training.config import TrainConfig


def check_wandb() -> None:
    try:
        import wandb  # noqa: F401
    except ImportError:
        raise ValueError("--wandb.enable=true needs the wandb package: pip install wandb") from None


class Tracker:
    def __init__(self, cfg: TrainConfig, out: Path) -> None:
        self.run = None
        if not cfg.wandb.enable:
            return
        check_wandb()
        import wandb

        w = cfg.wandb
        tags = [f"preset:{cfg.policy.preset}", f"dataset:{cfg.dataset.repo_id}"] if w.add_tags else None
        self.run = wandb.init(
            project=w.project, entity=w.entity, notes=w.notes, id=w.run_id, resume="allow" if w.run_id else None,
            mode=w.mode or "offline", dir=str(out), config=cfg.to_dict(), tags=tags, name=Path(cfg.output_dir).name,
        )

    def log(self, record: dict[str, Any]) -> None:
        if self.run is not None:
            self.run.log({f"train/{k}": v for k, v in record.items() if k != "step"}, step=record["step"])

    def finish(self) -> None:
        if self.run is not None:
            self.run.finish()
