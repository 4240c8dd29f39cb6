"""Training curves a person can read: loss vs step on a log scale, video and action loss as their own
curves, labelled axes with ticks, and the closed-loop success marked at the steps where it was measured."""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

import numpy as np


def save_training_curves(records: Sequence[dict], path: str | Path,
                         success: Sequence[tuple[int, float, str]] = ()) -> Path:
    """``records``: metrics.jsonl rows (step, loss, video_loss, action_loss); ``success``: (step, %, label)
    evaluations, drawn on a second axis."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    steps = np.array([r["step"] for r in records])
    fig, ax = plt.subplots(figsize=(8, 4.5), dpi=120)
    for key, label, style in (("loss", "total loss", "-"), ("video_loss", "video loss", "--"),
                              ("action_loss", "action loss", ":")):
        vals = np.array([r.get(key, np.nan) for r in records], np.float64)
        if np.isfinite(vals).any():
            ax.plot(steps, np.maximum(vals, 1e-8), style, lw=1.2, label=label)
    ax.set_yscale("log")
    ax.set_xlabel("training step")
    ax.set_ylabel("flow-matching loss (log scale)")
    ax.grid(True, which="both", alpha=0.3)
    handles, labels = ax.get_legend_handles_labels()
    if success:
        ax2 = ax.twinx()
        for i, (step, pct, label) in enumerate(success):
            h = ax2.scatter([step], [pct], marker="*", s=140, color=f"C{3 + i}", zorder=5, label=f"{label}: {pct:.0f} %")
            handles.append(h)
            labels.append(h.get_label())
        ax2.set_ylim(0, 100)
        ax2.set_ylabel("closed-loop success (%)")
    ax.legend(handles, labels, loc="upper right", fontsize=8)
    ax.set_title("dreamzero-train")
    fig.tight_layout()
    path = Path(path)
    fig.savefig(path)
    plt.close(fig)
    return path
