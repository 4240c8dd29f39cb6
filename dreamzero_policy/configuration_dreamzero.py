"""``DreamZeroJaxConfig``: the LeRobot face of the policy (``--policy.type=dreamzero_jax``).

Every field has a default so ``--policy.type=dreamzero_jax`` parses alone. The model itself is a named
preset (``dreamzero_policy.models.presets``) plus the few fields a fine-tune may change.
"""

from __future__ import annotations

import sys
from dataclasses import dataclass, field, replace
from pathlib import Path

from lerobot.configs.policies import PreTrainedConfig
from lerobot.configs.types import FeatureType, NormalizationMode
from lerobot.optim.optimizers import OptimizerConfig
from lerobot.optim.schedulers import LRSchedulerConfig

from dreamzero_policy.models.presets import ModelConfig, get_preset
from dreamzero_policy.nn.attention import available_kernels

# The standard Wan2.1 negative prompt used by the reference for classifier-free guidance.
WAN_NEGATIVE_PROMPT = (
    "色调艳丽，过曝，静态，细节模糊不清，字幕，风格，作品，画作，画面，静止，整体发灰，最差质量，低质量，JPEG压缩残留，"
    "丑陋的，残缺的，多余的手指，画得不好的手部，画得不好的脸部，畸形的，毁容的，形态畸形的肢体，手指融合，静止不动的画面，"
    "杂乱的背景，三条腿，背景人很多，倒着走"
)
REFERENCE_DIT_STEPS = (0, 1, 2, 6, 10, 13, 14, 15)


# lerobot-train flags that dreamzero-train reads with the same meaning (the rest are named as unused).
_TRAIN_FLAGS = ("--dataset.", "--policy.", "--output_dir", "--steps", "--batch_size", "--save_freq", "--log_freq",
                "--resume", "--seed", "--num_workers", "--wandb.", "--config_path")


def equivalent_train_command(argv: list[str]) -> tuple[str, list[str]]:
    """A ``lerobot-train`` command line -> (the ``dreamzero-train`` one, the flags it drops)."""
    keep, drop = [], []
    for a in argv:
        if a.startswith("--policy.type"):
            continue
        (keep if a.startswith(_TRAIN_FLAGS) else drop).append(a)
    return " ".join(["dreamzero-train", *keep]), drop


class TrainWithDreamZeroTrain(RuntimeError):
    """``lerobot-train`` cannot train this policy: it trains in JAX with ``dreamzero-train``."""

    def __init__(self, argv: list[str] | None = None) -> None:
        cmd, dropped = equivalent_train_command(list(sys.argv[1:] if argv is None else argv))
        note = f" (not used by dreamzero-train: {' '.join(dropped)})" if dropped else ""
        super().__init__(
            "dreamzero_jax trains in JAX with its own trainer, not with lerobot-train's torch loop. "
            f"The same run with dreamzero-train:\n  {cmd}\n{note}".rstrip()
        )


def _launched_by_lerobot_train() -> bool:
    main = sys.modules.get("__main__")
    spec = getattr(main, "__spec__", None)
    return Path(sys.argv[0]).name == "lerobot-train" or getattr(spec, "name", "") == "lerobot.scripts.lerobot_train"


@PreTrainedConfig.register_subclass("dreamzero_jax")
@dataclass
class DreamZeroJaxConfig(PreTrainedConfig):
    # model
    preset: str = "tiny"
    num_embodiments: int | None = None  # None: the preset's; raise it to add embodiments when fine-tuning
    embodiment_id: int = 0
    # Padded action/state widths of the DiT; None = the preset's (8 for tiny/small, 32 for the real ones).
    # Raise them for robots with more joints (aloha: 14).
    action_dim: int | None = None
    state_dim: int | None = None
    # Per-channel VAE latent normalisation; None = the preset's. Real Wan VAEs ship theirs; for the randomly
    # initialised VAEs of tiny/small, `dreamzero-train --windows.latent_stats_frames=N` estimates them from the data.
    latents_mean: list[float] | None = None
    latents_std: list[float] | None = None
    tokenizer_dir: str | None = None  # local HF tokenizer directory (real checkpoints); None: byte tokenizer
    # Storage and compute dtype of the DiT, umT5 and CLIP ("bfloat16" as the reference runs on GPUs); the
    # VAE, norms, modulation, softmax, RoPE and the timestep embedding stay float32. Training keeps float32
    # master weights of the DiT and computes in this dtype.
    dtype: str = "float32"
    text_encoder_on_host: bool = False  # run umT5 on the host CPU (once per task): its weights stay off the device
    # "xla" (dense reference), "xla_chunked" (dense, queries in blocks: long sequences on any backend),
    # "cudnn" (GPU, computes in bf16) or "splash" (TPU)
    attention_impl: str = "xla"

    # action chunking
    n_action_steps: int = 0  # actions executed before re-planning; 0 = the whole chunk
    relative_action_dims: list[int] = field(default_factory=list)  # action dims predicted relative to state
    max_chunks_before_reset: int = 4  # the context resets after this many chunks (reference: 4)

    # sampling
    num_inference_steps: int = 16
    dit_steps: list[int] | None = None  # steps that run the DiT (others reuse the last velocity); None = all
    sigma_shift: float = 5.0
    cfg_scale: float = 5.0  # guidance on video only; actions come from the conditional branch
    negative_prompt: str = WAN_NEGATIVE_PROMPT
    blank_instruction: bool = False  # ablation: condition on an empty prompt instead of the task
    default_task: str | None = None  # used when an env gives no instruction (e.g. PushT: "push the T")
    # lerobot-eval writes the imagined video (videos/<task>/pred_episode_N.mp4) beside each eval video.
    save_predicted_video: bool = False
    seed: int = 0

    # cameras: which image features, in which order, tiled into one frame of tile_height x tile_width
    cameras: list[str] | None = None  # None: every image feature, sorted by key
    view_height: int = 32
    view_width: int = 32
    tiling: str = "row"  # "row": views side by side; "droid": first view stretched on top, others below
    # Fraction of each side kept by the centre crop applied to every view before resizing (the reference's
    # eval transform; training crops the same size at random offsets).
    crop: float = 0.95

    normalization_mapping: dict[str, NormalizationMode] = field(
        default_factory=lambda: {
            "VISUAL": NormalizationMode.IDENTITY,
            "STATE": NormalizationMode.QUANTILES,
            "ACTION": NormalizationMode.QUANTILES,
        }
    )

    def __post_init__(self) -> None:
        if _launched_by_lerobot_train():  # stop at once, before LeRobot builds datasets or a torch optimiser
            raise SystemExit(str(TrainWithDreamZeroTrain()))
        super().__post_init__()
        mc = self.model_config()  # raises for an unknown preset
        if self.attention_impl not in available_kernels():
            raise ValueError(f"attention_impl={self.attention_impl!r} is not one of {available_kernels()}")
        if self.n_action_steps < 0 or self.n_action_steps > self.chunk_size:
            raise ValueError(f"n_action_steps={self.n_action_steps} must be in [0, chunk_size={self.chunk_size}]")
        if not 0 <= self.embodiment_id < mc.dit.num_embodiments:
            raise ValueError(f"embodiment_id={self.embodiment_id} not in [0, {mc.dit.num_embodiments})")
        if self.dit_steps is not None and (
            not self.dit_steps or 0 not in self.dit_steps
            or any(not 0 <= s < self.num_inference_steps for s in self.dit_steps)
        ):
            raise ValueError(f"dit_steps must include step 0 and lie in [0, {self.num_inference_steps}): {self.dit_steps}")
        if self.tiling not in ("row", "droid"):
            raise ValueError(f"tiling must be 'row' or 'droid', got {self.tiling!r}")
        if not 0.0 < self.crop <= 1.0:
            raise ValueError(f"crop must be in (0, 1], got {self.crop}")
        if self.max_chunks_before_reset < 1:
            raise ValueError("max_chunks_before_reset must be >= 1")

    # ------------------------------------------------------------------ derived
    def model_config(self, *, master_weights: bool = False) -> ModelConfig:
        """The model this policy runs; ``master_weights``: the DiT stored in float32 (for training)."""
        overrides = {"attention": self.attention_impl}
        if self.num_embodiments is not None:
            overrides["num_embodiments"] = self.num_embodiments
        if self.action_dim is not None:
            overrides["action_dim"] = self.action_dim
        if self.state_dim is not None:
            overrides["state_dim"] = self.state_dim
        mc = get_preset(self.preset, **overrides).with_dtype(self.dtype, master_weights=master_weights)
        if (self.latents_mean is None) != (self.latents_std is None):
            raise ValueError("latents_mean and latents_std must be given together")
        if self.latents_mean is not None:
            if min(self.latents_std) <= 0:
                raise ValueError(f"latents_std must be positive, got {self.latents_std}")
            vae = replace(mc.vae, latents_mean=tuple(map(float, self.latents_mean)),
                          latents_std=tuple(map(float, self.latents_std)))  # validated on construction
            mc = replace(mc, vae=vae)
        return mc

    @property
    def chunk_size(self) -> int:
        return get_preset(self.preset).dit.actions_per_block

    @property
    def actions_per_plan(self) -> int:
        return self.n_action_steps or self.chunk_size

    @property
    def camera_keys(self) -> list[str]:
        keys = sorted(self.image_features)
        if self.cameras is None:
            return keys
        return [c if c.startswith("observation.") else f"observation.images.{c}" for c in self.cameras]

    @property
    def frame_size(self) -> tuple[int, int]:
        n = max(1, len(self.camera_keys))
        if self.tiling == "row":
            return self.view_height, self.view_width * n
        return (self.view_height * 2, self.view_width * max(1, n - 1)) if n > 1 else (self.view_height, self.view_width)

    def validate_features(self) -> None:
        mc = self.model_config()
        if not self.image_features:
            raise ValueError("dreamzero_jax needs at least one camera (an image input feature)")
        missing = [c for c in self.camera_keys if c not in self.image_features]
        if missing:
            raise ValueError(f"cameras {missing} are not image features; have {sorted(self.image_features)}")
        if self.robot_state_feature is None:
            raise ValueError("dreamzero_jax needs the robot state feature 'observation.state'")
        if self.action_feature is None:
            raise ValueError("dreamzero_jax needs an 'action' output feature")
        a, s = self.action_feature.shape[0], self.robot_state_feature.shape[0]
        if a > mc.dit.action_dim:
            raise ValueError(f"action dim {a} exceeds the model's padded action_dim {mc.dit.action_dim} "
                             f"(set --policy.action_dim={a} or more)")
        if s > mc.dit.state_dim:
            raise ValueError(f"state dim {s} exceeds the model's padded state_dim {mc.dit.state_dim} "
                             f"(set --policy.state_dim={s} or more)")
        bad = [d for d in self.relative_action_dims if not (0 <= d < min(a, s))]
        if bad:
            raise ValueError(f"relative_action_dims {bad} must index both action (dim {a}) and state (dim {s})")
        for key in self.camera_keys:
            ft = self.image_features[key]
            if ft.type is not FeatureType.VISUAL or len(ft.shape) != 3:
                raise ValueError(f"{key} must be a (C, H, W) visual feature, got {ft}")

    # ------------------------------------------------------------------ LeRobot hooks
    # lerobot-train asks for these first (TrainPipelineConfig.validate); the policy trains in JAX with its
    # own optimiser (`dreamzero-train --optim.*`), so torch presets would be fields that do nothing.
    def get_optimizer_preset(self) -> OptimizerConfig:
        raise TrainWithDreamZeroTrain()

    def get_scheduler_preset(self) -> LRSchedulerConfig | None:
        raise TrainWithDreamZeroTrain()

    @property
    def observation_delta_indices(self) -> None:
        return None

    @property
    def action_delta_indices(self) -> list[int]:
        return list(range(self.chunk_size))

    @property
    def reward_delta_indices(self) -> None:
        return None
