"""``dreamzero-convert``: a reference (PyTorch) DreamZero checkpoint -> a ``dreamzero_jax`` pretrained
directory, with LeRobot-style flags::

    dreamzero-convert --src=CKPT_DIR --out=OUT_DIR [--parts=dit,vae,text,image] [--lora=merge|keep]
        [--lora_alpha=4] [--preset=wan21_14b] [--embodiment=oxe_droid] [--no_stats=true]
        [--tokenizer_dir=DIR] [--allow_nonfinite=true] [--quiet=true]
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

from dreamzero_policy.cli_args import parse_cli

PROG = "dreamzero-convert"


@dataclass
class ConvertConfig:
    """Convert a reference (PyTorch) DreamZero checkpoint into a dreamzero_jax pretrained directory."""

    src: str = ""  # checkpoint directory (model.safetensors or a sharded index, config.json, experiment_cfg/)
    out: str = ""  # output directory: new, empty, or an earlier conversion output (replaced); outside src
    parts: str = "dit,vae,text,image"  # parts to convert; the others are left out and recorded as such
    lora: str = "merge"  # merge: fold W + alpha/r * B@A into the weights; keep: write the adapters apart
    lora_alpha: float | None = None  # LoRA alpha when config.json lacks lora_alpha
    preset: str | None = None  # model preset; None: inferred from the tensor shapes
    embodiment: str | None = None  # embodiment tag in metadata.json when it holds several
    no_stats: bool = False  # convert without experiment_cfg/metadata.json (no normalisation statistics)
    tokenizer_dir: str | None = None  # local tokenizer directory (umT5: google/umt5-xxl) for the policy
    allow_nonfinite: bool = False  # convert tensors holding NaN/inf instead of refusing
    quiet: bool = False  # no progress bar


def main(argv: Sequence[str] | None = None) -> None:
    from dreamzero_policy.convert.checkpoint import convert_checkpoint

    a = parse_cli(ConvertConfig, argv, PROG)
    if not a.src or not a.out:
        raise SystemExit(f"{PROG}: --src=CHECKPOINT_DIR and --out=OUTPUT_DIR are required (see --help)")
    try:
        report = convert_checkpoint(
            a.src,
            a.out,
            parts=a.parts,
            lora=a.lora,
            lora_alpha=a.lora_alpha,
            preset=a.preset,
            embodiment=a.embodiment,
            require_stats=not a.no_stats,
            tokenizer_dir=a.tokenizer_dir,
            allow_nonfinite=a.allow_nonfinite,
            progress=not a.quiet,
        )
    except (ValueError, OSError) as e:  # StateMismatchError is a ValueError, FileNotFoundError an OSError
        raise SystemExit(f"{PROG}: {e}") from None
    lora_note = f", LoRA {report.lora} (scale {report.lora_scale:g})" if report.lora else ""
    print(
        f"wrote {a.out}: preset {report.preset}, parts {','.join(report.parts)}, "
        f"{report.converted} tensors{lora_note}; {len(report.skipped)} reference tensors not used"
    )
    for w in report.warnings:
        print(f"warning: {w}")


if __name__ == "__main__":
    main()
