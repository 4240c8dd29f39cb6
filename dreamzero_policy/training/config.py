"""``dreamzero-train`` configuration (draccus dataclasses); named recipes live in ``configs/*.yaml``."""

from __future__ import annotations

from dataclasses import asdict, dataclass, field

from dreamzero_policy.configuration_dreamzero import DreamZeroJaxConfig


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


@dataclass
class LoraConfig:
    rank: int = 0  # 0 = full fine-tune of the DiT; >0 = LoRA adapters + trainable register encoders
    alpha: float = 4.0
    targets: list[str] = field(default_factory=lambda: ["q", "k", "v", "o", "ffn_0", "ffn_2"])


@dataclass
class TrainConfig:
    dataset_root: str = ""  # local LeRobotDataset v3 root
    repo_id: str = "local/dataset"
    output_dir: str = "outputs/train"
    init_from: str | None = None  # a policy pretrained directory (config.json + model.safetensors)
    precomputed: str | None = None  # directory written by `dreamzero-train --precompute_only`
    # policy / model
    preset: str = "tiny"
    embodiment_id: int = 0
    num_embodiments: int | None = None  # grow the category-specific layers when fine-tuning
    copy_embodiment_from: int = 0  # new embodiment slots start as copies of this one
    action_dim: int | None = None  # padded widths of the DiT; None = the preset's
    state_dim: int | None = None
    # VAE latent normalisation (see training/latent_stats.py): explicit values, or estimated from this many
    # training clips when > 0 (for randomly initialised VAEs); both unset = the preset's.
    latents_mean: list[float] | None = None
    latents_std: list[float] | None = None
    latent_stats_frames: int = 0
    relative_action_dims: list[int] = field(default_factory=list)
    cameras: list[str] | None = None
    view_height: int = 32
    view_width: int = 32
    tiling: str = "row"
    # execution
    compute_dtype: str = "float32"  # "bfloat16": bf16 compute over fp32 master weights
    remat: bool = False
    distributed: bool = False  # jax.distributed.initialize() (multi-host)
    mesh: MeshConfig = field(default_factory=MeshConfig)
    # schedule / data
    steps: int = 100  # length of the LR schedule
    stop_at_step: int | None = None  # stop early (e.g. time-sliced jobs); resume continues the schedule
    batch_size: int = 4  # global
    num_chunks: int = 2
    num_workers: int = 0
    augment: bool = True
    crop: float = 0.95
    jitter: float = 0.1
    overfit: bool = False  # one fixed batch and fixed noise every step (sanity check that the model fits)
    seed: int = 0
    optim: OptimConfig = field(default_factory=OptimConfig)
    lora: LoraConfig = field(default_factory=LoraConfig)
    # checkpoints / logs
    save_every: int = 100
    keep_last: int = 3
    resume: bool = True  # continue from the newest checkpoint in output_dir if there is one
    log_every: int = 1
    progress: bool = True
    precompute_only: bool = False  # write the precomputed encoder outputs to `precomputed` and exit

    def policy_config(self) -> DreamZeroJaxConfig:
        return DreamZeroJaxConfig(
            preset=self.preset,
            embodiment_id=self.embodiment_id,
            num_embodiments=self.num_embodiments,
            action_dim=self.action_dim,
            state_dim=self.state_dim,
            latents_mean=self.latents_mean,
            latents_std=self.latents_std,
            relative_action_dims=list(self.relative_action_dims),
            cameras=self.cameras,
            view_height=self.view_height,
            view_width=self.view_width,
            tiling=self.tiling,
            dtype="float32",
            device="cpu",
        )

    def to_dict(self) -> dict:
        return asdict(self)

    @classmethod
    def from_dict(cls, d: dict) -> TrainConfig:
        d = dict(d)
        d["mesh"] = MeshConfig(**d.get("mesh", {}))
        d["optim"] = OptimConfig(**d.get("optim", {}))
        d["lora"] = LoraConfig(**d.get("lora", {}))
        return cls(**d)
