"""Per-step cost of MetaWorld through LeRobot's stock env vs `dz_metaworld`, side by side in one run.

Both step the same task with MetaWorld's expert from the same seed: LeRobot's `MetaworldEnv` renders
480x480 with the scene's 4096-texel shadows, a reflective floor and 4x MSAA; `DzMetaworldEnv` renders
`--image_size` with no MSAA, once with its defaults (no shadow, no reflection) and once with 512-texel shadows
and reflections on. Physics alone (no rendering) is timed on the underlying MetaWorld env.

    MUJOCO_GL=egl uv run --frozen --all-extras python -m eval.bench_metaworld --image_size=64
"""

from __future__ import annotations

import os

os.environ.setdefault("MUJOCO_GL", "egl")

import time
from collections.abc import Sequence
from dataclasses import dataclass

import draccus
import numpy as np
from lerobot.envs.metaworld import MetaworldEnv

from dreamzero_envs.metaworld_env import DzMetaworldEnv


@dataclass
class BenchConfig:
    task: str = "button-press-v3"
    image_size: int = 64
    steps: int = 40  # the button-press expert succeeds after ~60: keep below any task's episode
    seed: int = 0


def _expert_actions(env: DzMetaworldEnv, steps: int, seed: int) -> list[np.ndarray]:
    env.reset(seed=seed)
    actions = []
    for _ in range(steps):
        actions.append(env.expert_action())
        env.step(actions[-1])
    return actions


def _ms_per_step(step, reset, actions: list[np.ndarray]) -> float:
    """Mean wall time of `step(action)` over `actions`, after `reset()`."""
    reset()
    start = time.perf_counter()
    for action in actions:
        step(action)
    return 1000 * (time.perf_counter() - start) / len(actions)


def main(argv: Sequence[str] | None = None) -> None:
    cfg = draccus.parse(BenchConfig, args=argv)
    stock = MetaworldEnv(task=cfg.task, obs_type="pixels_agent_pos")
    ours = DzMetaworldEnv(cfg.task, image_size=cfg.image_size)
    shaded = DzMetaworldEnv(cfg.task, image_size=cfg.image_size, shadows=True, reflections=True)
    try:
        # Replay one expert trajectory (shorter than the episode, so no env resets mid-way) in each.
        actions = _expert_actions(ours, cfg.steps, cfg.seed)
        ms_stock = _ms_per_step(stock.step, lambda: stock.reset(seed=cfg.seed), actions)
        ms_ours = _ms_per_step(ours.step, lambda: ours.reset(seed=cfg.seed), actions)
        ms_shaded = _ms_per_step(shaded.step, lambda: shaded.reset(seed=cfg.seed), actions)
        raw = ours._env  # the MetaWorld env itself: stepping it skips LeRobot's render
        ms_physics = _ms_per_step(raw.step, lambda: ours.reset(seed=cfg.seed), actions)
    finally:
        stock.close()
        ours.close()
        shaded.close()
    print(f"{cfg.task}, {cfg.steps} expert steps, ms/step:")
    print(f"  lerobot MetaworldEnv (480 px, shadows 4096, 4x MSAA): {ms_stock:7.1f}")
    print(f"  dz_metaworld ({cfg.image_size} px, shadows {shaded.shadow_size} + reflections, no MSAA):"
          f" {ms_shaded:7.1f}  ({ms_stock / ms_shaded:.1f}x faster)")
    print(f"  dz_metaworld ({cfg.image_size} px, defaults: no shadow, no reflection, no MSAA):"
          f" {ms_ours:7.1f}  ({ms_stock / ms_ours:.1f}x faster)")
    print(f"  physics only:                                         {ms_physics:7.2f}")


if __name__ == "__main__":
    main()
