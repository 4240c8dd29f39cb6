"""Real-scale memory and FLOPs per device, compiled from abstract shapes on a faked CPU mesh (no weights).

    uv run --frozen python -m eval.plan_scale
    uv run --frozen python -m eval.plan_scale --presets='[wan21_14b]' --cases='[inference]'

Cases: ``inference`` (the KV-cached DROID rollout of one chunk on 1 device, bf16, CFG 2, 4-chunk cache),
``lora`` and ``full`` (one training step, FSDP over each of ``--fsdp`` devices, remat, fp32 masters).
Writes ``plan.json`` and ``plan.md`` under ``--output_dir``.
"""

from __future__ import annotations

import os

# Set before JAX starts: the faked mesh (a device count already in XLA_FLAGS, as tests give, is kept), and
# no LLVM optimisation: nothing here ever runs, and buffer assignment (memory_analysis) does not depend on it.
_FLAGS = {"xla_force_host_platform_device_count": "32", "xla_backend_optimization_level": "0",
          "xla_llvm_disable_expensive_passes": "true"}
_xla = os.environ.get("XLA_FLAGS", "")
os.environ["XLA_FLAGS"] = " ".join([_xla, *(f"--{k}={v}" for k, v in _FLAGS.items() if k not in _xla)]).strip()
os.environ["JAX_PLATFORMS"] = "cpu"

import json  # noqa: E402
from collections.abc import Sequence  # noqa: E402
from dataclasses import dataclass, field  # noqa: E402
from pathlib import Path  # noqa: E402

import draccus  # noqa: E402
import jax  # noqa: E402

from dreamzero_policy.scale_plan import CHIPS, CaseResult, droid_policy, inference_cases, training_case  # noqa: E402

CASES = ("inference", "lora", "full")


@dataclass
class PlanScaleConfig:
    presets: list[str] = field(default_factory=lambda: ["wan22_5b", "wan21_14b"])
    cases: list[str] = field(default_factory=lambda: list(CASES))
    fsdp: list[int] = field(default_factory=lambda: [8, 32])  # training mesh sizes (one sample per device)
    lora_rank: int = 4  # configs/finetune_new_embodiment.yaml
    num_chunks: int = 4  # chunks per training window (the reference samples up to 4)
    remat: bool = True
    # "xla": the dense kernel (the policy's default); "xla_chunked": query blocks, memory-bounded like a flash
    # kernel; "splash": TPU flash attention (its Pallas interpreter on CPU). cuDNN does not compile on CPU.
    attention: str = "xla"
    view_height: int | None = None  # None: the converted DROID policy's view size
    view_width: int | None = None
    output_dir: str = "outputs/plan_scale"


GB = 1e9


def _fmt_bytes(n: int) -> str:
    return f"{n / GB:.2f}"


def markdown(rows: list[CaseResult]) -> str:
    chips = " | ".join(f"{c.name} ideal ms | fits {c.name}" for c in CHIPS)
    head = (f"| preset | case | devices | params GB | args GB | out GB | aliased GB | temp GB | total GB | TFLOP | "
            f"{chips} | compile s |")
    out = [head, "|" + "---|" * (head.count("|") - 1)]
    for r in rows:
        per_chip = " | ".join(
            ("-" if r.flops is None else f"{r.ideal_s(c) * 1e3:.0f}") + f" | {'yes' if r.fits(c) else 'NO'}"
            for c in CHIPS)
        tflop = "-" if r.flops is None else f"{r.flops / 1e12:.1f}"
        out.append(f"| {r.preset} | {r.case} | {r.devices} | {_fmt_bytes(r.param_bytes)} | "
                   f"{_fmt_bytes(r.argument_bytes)} | {_fmt_bytes(r.output_bytes)} | {_fmt_bytes(r.alias_bytes)} | "
                   f"{_fmt_bytes(r.temp_bytes)} | "
                   f"{_fmt_bytes(r.total_bytes)} | {tflop} | {per_chip} | {r.compile_s:.0f} |")
    notes = list(dict.fromkeys(f"- {r.preset} {r.case}: {r.note}" for r in rows if r.note))  # row order
    return "\n".join(out + [""] + notes) + "\n"


def run(args: PlanScaleConfig) -> list[CaseResult]:
    unknown = set(args.cases) - set(CASES)
    if unknown:
        raise ValueError(f"unknown cases {sorted(unknown)}; choose from {CASES}")
    if max(args.fsdp) > jax.device_count():
        raise ValueError(f"--fsdp={args.fsdp} needs {max(args.fsdp)} devices; JAX sees {jax.device_count()}")
    view = None if args.view_height is None else (args.view_height, args.view_width or args.view_height)
    out = Path(args.output_dir)
    out.mkdir(parents=True, exist_ok=True)
    rows: list[CaseResult] = []

    def add(new: list[CaseResult]) -> None:
        rows.extend(new)
        for r in new:
            print(f"{r.preset} | {r.case} | {r.devices} dev | total {r.total_bytes / GB:.3f} GB | "
                  f"compile {r.compile_s:.0f} s", flush=True)
        # rewritten after every case: a long run that dies keeps what it measured
        (out / "plan.json").write_text(json.dumps([r.to_dict() for r in rows], indent=1))
        (out / "plan.md").write_text(markdown(rows))

    for preset in args.presets:
        policy = droid_policy(preset, attention=args.attention, view=view)
        if "inference" in args.cases:
            add(inference_cases(policy))
        for kind in ("lora", "full"):
            if kind in args.cases:
                for n in args.fsdp:
                    add([training_case(policy, fsdp=n, lora_rank=args.lora_rank if kind == "lora" else 0,
                                       num_chunks=args.num_chunks, remat=args.remat)])
    return rows


def main(argv: Sequence[str] | None = None) -> None:
    args = draccus.parse(PlanScaleConfig, args=argv)
    rows = run(args)
    print(markdown(rows))
    print(f"wrote {Path(args.output_dir) / 'plan.json'} and plan.md")


if __name__ == "__main__":
    main()
