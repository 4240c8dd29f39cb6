"""Pieces every main job shares: timed stages, console scripts of this environment, subprocess env."""

from __future__ import annotations

import json
import os
import sys
import time
from pathlib import Path


class Stage:
    """``with Stage(timings, "train"):`` prints the stage and records its wall-clock seconds."""

    def __init__(self, timings: dict[str, float], name: str) -> None:
        self.timings, self.name = timings, name

    def __enter__(self) -> None:
        print(f"\n=== {self.name} ===", flush=True)
        self.t = time.perf_counter()

    def __exit__(self, *exc) -> None:
        self.timings[self.name] = round(time.perf_counter() - self.t, 1)
        print(f"=== {self.name}: {self.timings[self.name]} s ===", flush=True)


class SecondsLedger(dict):
    """Seconds of a job's training stages in a JSON file kept across runs: a stage skipped because it
    finished in an earlier run keeps the time it took then."""

    def __init__(self, path: str | Path) -> None:
        self.path = Path(path)
        super().__init__(json.loads(self.path.read_text()) if self.path.exists() else {})

    def account(self, timings: dict[str, float], name: str, ran: bool) -> None:
        """After the stage's ``with Stage`` block (which timed it): keep its time if it ran in this run."""
        if ran:
            self[name] = timings[name]
            self.path.write_text(json.dumps(self))


def console_script(name: str) -> str:
    """A console script of the running interpreter's environment (dreamzero-train, lerobot-eval, ...)."""
    return str(Path(sys.executable).parent / name)


def subprocess_env(out: str | Path) -> dict[str, str]:
    """Offline, headless, and one persistent XLA cache for every stage: the evaluations compile the same
    rollout executables, so later ones load them instead of recompiling."""
    return dict(os.environ, HF_HUB_OFFLINE="1", MUJOCO_GL=os.environ.get("MUJOCO_GL", "egl"),
                JAX_COMPILATION_CACHE_DIR=str(Path(out).resolve() / "xla_cache"),
                JAX_PERSISTENT_CACHE_MIN_COMPILE_TIME_SECS="0.5")
