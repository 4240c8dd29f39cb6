"""Peak memory of a checkpoint conversion, as a ratio to the checkpoint's size.

Writes a synthetic reference-layout bf16 DiT checkpoint with the real 14B widths (dim 5120, ffn 13824)
and ``--layers`` blocks (2 blocks: about 2.1 GiB) under /tmp, converts it in a fresh subprocess and
reports that process's peak RSS: total, and above the RSS it had after importing everything. The
synthetic file and the output are deleted afterwards.

    uv run --frozen python -m eval.bench_convert --layers=2
"""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
import tempfile
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import draccus

_CHILD = r"""
import json, resource, sys
from dreamzero_policy.convert.checkpoint import convert_weights
from dreamzero_policy.convert.source import CheckpointSource
from dreamzero_policy.models.presets import get_preset
cfg = get_preset("wan21_14b", num_layers=int(sys.argv[3]))
from dreamzero_policy.convert.reference_layout import reference_entries
reference_entries(cfg, ("dit",))  # build the plan once so its imports/tracing count in the baseline
base = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
with CheckpointSource(sys.argv[1]) as src:
    convert_weights(src, sys.argv[2], cfg, ("dit",), progress=False)
peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
print(json.dumps({"baseline_kib": base, "peak_kib": peak}))
"""


def write_synthetic(path: Path, layers: int) -> int:
    import ml_dtypes
    import numpy as np

    from dreamzero_policy.convert.reference_layout import reference_entries
    from dreamzero_policy.models.presets import get_preset
    from dreamzero_policy.weights_io import StreamingWriter

    cfg = get_preset("wan21_14b", num_layers=layers)
    plan = [
        (s, np.dtype(ml_dtypes.bfloat16), e.ref_shape)
        for e in reference_entries(cfg, ("dit",))
        for s in e.sources
    ]
    tile = np.random.default_rng(0).standard_normal(1 << 20).astype(ml_dtypes.bfloat16)
    with StreamingWriter(path, plan) as w:
        for name, _dt, shape in plan:
            n = int(np.prod(shape, dtype=np.int64))
            w.write(name, np.resize(tile, n).reshape(shape))
    return path.stat().st_size


@dataclass
class ConvertBenchConfig:
    layers: int = 2  # DiT blocks of the synthetic 14B-width checkpoint (2: about 2.1 GiB)


def main(argv: Sequence[str] | None = None) -> None:
    args = draccus.parse(ConvertBenchConfig, args=argv)
    tmp = Path(tempfile.mkdtemp(prefix="bench_convert_", dir="/tmp"))
    try:
        src = tmp / "src" / "model.safetensors"
        size = write_synthetic(src, args.layers)
        out = subprocess.run(
            [sys.executable, "-c", _CHILD, str(src), str(tmp / "out"), str(args.layers)],
            check=True,
            capture_output=True,
            text=True,
        )
        r = json.loads(out.stdout.strip().splitlines()[-1])
        peak, base = r["peak_kib"] * 1024, r["baseline_kib"] * 1024
        print(f"checkpoint {size / 2**30:.2f} GiB (bf16, {args.layers} blocks of the 14B DiT)")
        print(
            f"peak RSS {peak / 2**30:.2f} GiB = {peak / size:.2f} x checkpoint; "
            f"above the post-import baseline ({base / 2**30:.2f} GiB): {(peak - base) / 2**30:.2f} GiB "
            f"= {(peak - base) / size:.2f} x checkpoint"
        )
    finally:
        shutil.rmtree(tmp, ignore_errors=True)


if __name__ == "__main__":
    main()
