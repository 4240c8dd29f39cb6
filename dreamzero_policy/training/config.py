"""``dreamzero-train`` configuration, in ``lerobot-train``'s shape.

    dreamzero-train --dataset.repo_id=local/dz_reach --dataset.root=data/dz_reach \\
        --policy.preset=small --output_dir=outputs/train --steps=1000 --batch_size=16

``--dataset.*`` is LeRobot's own ``DatasetConfig``; ``--policy.*`` is ``DreamZeroJaxConfig`` itself, the one
owner of every policy field (``--policy.path=DIR`` starts from a saved policy, its fields overridable by
``--policy.*``); the run fields mirror ``lerobot-train`` (``--output_dir``, ``--steps``, ``--batch_size``,
``--save_freq``, ``--log_freq``, ``--resume``, ``--seed``, ``--wandb.*``). What only this JAX trainer has
stays in its own groups: ``--windows.*`` (how training windows are cut and augmented), ``--optim.*``
(optax), ``--lora.*``, ``--mesh.*``, ``--precompute.*`` and ``--video_only.*`` (a dataset trained for its
video alone, mixed in at a ratio). Named recipes live in ``configs/*.yaml``.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field

import draccus
from lerobot.configs.default import DatasetConfig, WandBConfig

from dreamzero_policy.configuration_dreamzero import DreamZeroJaxConfig


@dataclass
class WindowConfig:
    num_chunks: int = 2  # chunks per training window (the reference samples up to 4)
    augment: bool = True  # random crop (--policy.crop of each side) + colour jitter; off: centre crop
    jitter: float = 0.1
    overfit: bool = False  # one fixed batch and fixed noise every step (sanity check that the model fits)
    # Estimate the VAE latent statistics from this many training clips (for randomly initialised VAEs);
    # they are written into --policy.latents_mean / latents_std of the run and its export.
    latent_stats_frames: int = 0


@dataclass
class OptimConfig:
    lr: float = 1e-4  # reference: 1e-4 with LoRA, 1e-5 full fine-tune
    warmup_ratio: float = 0.05
    end_lr_ratio: float = 0.0  # cosine decays to lr * end_lr_ratio
    weight_decay: float = 1e-5
    b1: float = 0.95
    b2: float = 0.999
    clip_norm: float = 1.0


@dataclass
class MeshConfig:
    data: int = 1
    fsdp: int = 1
    tensor: int = 1
    distributed: bool = False  # jax.distributed.initialize() (multi-host)


@dataclass
class LoraConfig:
    rank: int = 0  # 0 = full fine-tune of the DiT; >0 = LoRA adapters + trainable register encoders
    alpha: float = 4.0
    targets: list[str] = field(default_factory=lambda: ["q", "k", "v", "o", "ffn_0", "ffn_2"])


@dataclass
class PrecomputeConfig:
    dir: str | None = None  # train from (or, with only=true, write) precomputed frozen-encoder outputs
    only: bool = False  # write them to `dir` and exit
    # Every Nth anchor only: neighbouring anchors share most of their frames, and encoding is the cost
    # (a MetaWorld demo has ~80 anchors; at stride 4 the windows still start at every latent frame).
    anchor_stride: int = 1


@dataclass
class VideoOnlyConfig:
    """A second LeRobotDataset trained for its video only: episodes with frames and an instruction but no
    action labels (a dataset without an `action` feature; any actions it has are ignored). Its windows
    train the video loss alone; statistics come from --dataset only. Off unless root or repo_id is set."""

    repo_id: str | None = None  # default local/video_only with a root
    root: str | None = None
    episodes: list[int] | None = None
    ratio: float = 0.5  # fraction of every batch drawn from it, in (0, 1) (exact over the run: training.mixing)

    @property
    def enabled(self) -> bool:
        return bool(self.root or self.repo_id)


# LeRobot DatasetConfig fields this trainer reads; the others must keep their defaults (checked).
DATASET_FIELDS_READ = ("repo_id", "root", "episodes", "revision", "video_backend")


@dataclass
class TrainConfig:
    dataset: DatasetConfig
    policy: DreamZeroJaxConfig = field(default_factory=DreamZeroJaxConfig)
    output_dir: str = "outputs/train"
    resume: bool = False  # continue from the newest checkpoint in output_dir (false: refuse a used output_dir)
    seed: int = 0
    steps: int = 100  # length of the LR schedule
    batch_size: int = 4  # global
    num_workers: int = 0
    log_freq: int = 1
    save_freq: int = 100
    wandb: WandBConfig = field(default_factory=WandBConfig)
    # trainer-only
    stop_at_step: int | None = None  # stop early (time-sliced jobs); --resume=true continues the schedule
    keep_last: int = 3  # checkpoints kept
    progress: bool = True
    remat: bool = False  # rematerialise DiT blocks in the backward pass
    copy_embodiment_from: int = 0  # with --policy.path and a larger --policy.num_embodiments: new slots copy this one
    windows: WindowConfig = field(default_factory=WindowConfig)
    optim: OptimConfig = field(default_factory=OptimConfig)
    lora: LoraConfig = field(default_factory=LoraConfig)
    mesh: MeshConfig = field(default_factory=MeshConfig)
    precompute: PrecomputeConfig = field(default_factory=PrecomputeConfig)
    video_only: VideoOnlyConfig = field(default_factory=VideoOnlyConfig)

    def __post_init__(self) -> None:
        unsupported = {
            f.name: getattr(self.dataset, f.name)
            for f in dataclasses.fields(DatasetConfig)
            if f.name not in DATASET_FIELDS_READ + ("image_transforms", "use_imagenet_stats", "depth_output_unit")
            and getattr(self.dataset, f.name) != _dataset_default(f)
        }
        if self.dataset.image_transforms.enable:
            unsupported["image_transforms.enable"] = True
        if unsupported:
            raise ValueError(
                f"dreamzero-train does not support --dataset.{', --dataset.'.join(unsupported)} (it reads "
                f"{', '.join(DATASET_FIELDS_READ)}; augmentation is --windows.*)"
            )
        if not 0.0 < self.video_only.ratio < 1.0:
            raise ValueError(f"--video_only.ratio must be in (0, 1), got {self.video_only.ratio} "
                             "(the fraction of every batch drawn from the video-only dataset)")
        if self.video_only.episodes is not None and not self.video_only.enabled:
            raise ValueError("--video_only.episodes needs --video_only.root (or --video_only.repo_id)")
        for name in ("steps", "batch_size", "save_freq", "log_freq"):
            if getattr(self, name) < 1:
                raise ValueError(f"--{name} must be >= 1, got {getattr(self, name)}")

    def to_dict(self) -> dict:
        return draccus.encode(self)

    @classmethod
    def from_dict(cls, d: dict) -> TrainConfig:
        return draccus.decode(cls, d)


def _dataset_default(f: dataclasses.Field) -> object:
    if f.default is not dataclasses.MISSING:
        return f.default
    return f.default_factory() if f.default_factory is not dataclasses.MISSING else None
