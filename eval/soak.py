"""Soak: the guarded asynchronous control loop driving the tiny policy in the PointReach sim.

Runs ``--steps`` control steps at ``--hz`` with background re-plans and episode resets; reports resident
memory at start (after warm-up) and end, XLA compilations after warm-up (must be 0) and period jitter.

    uv run --frozen python -m eval.soak --steps=2000 --hz=10
"""

from __future__ import annotations

import json
import time
from collections.abc import Sequence
from dataclasses import dataclass

import draccus
import jax
import numpy as np
import psutil
import torch
from lerobot.configs.types import FeatureType, PolicyFeature

import dreamzero_envs as envs
from dreamzero_policy.configuration_dreamzero import DreamZeroJaxConfig
from dreamzero_policy.modeling_dreamzero import DreamZeroJaxPolicy
from dreamzero_policy.serving.async_exec import ChunkExecutor
from dreamzero_policy.serving.guards import ActionGuard
from dreamzero_policy.serving.planner import PolicyPlanner
from eval.robot_loop import LoopStats, run_loop


class CompileCounter:
    def __init__(self) -> None:
        self.n = 0
        jax.monitoring.register_event_duration_secs_listener(self._cb)

    def _cb(self, name: str, _secs: float, **_kw: object) -> None:
        if name.endswith("backend_compile_duration"):
            self.n += 1


class SimDriver:
    """PointReach as a robot: observe -> policy batch, act -> env.step; episodes end on success/time."""

    def __init__(self, image_size: int, seed: int) -> None:
        self.env = envs.make("reach", image_size=image_size, cameras="top")
        self.seed = seed
        self.done = False
        self.reset()

    def reset(self) -> None:
        self._obs, _ = self.env.reset(seed=self.seed)
        self.seed += 1
        self.done = False

    def observe(self) -> tuple[dict, bool]:
        img = torch.from_numpy(self._obs["pixels"]["top"]).permute(2, 0, 1)[None].float() / 255.0
        batch = {
            "observation.state": torch.from_numpy(self._obs["agent_pos"])[None].float(),
            "observation.images.top": img,
            "task": [self.env.unwrapped.task_description],
        }
        return batch, self.done

    def act(self, action: np.ndarray) -> None:
        self._obs, _, term, trunc, _ = self.env.step(action)
        self.done = bool(term or trunc)


@dataclass
class SoakConfig:
    steps: int = 2000  # measured control steps (after warm-up)
    hz: float = 10.0  # control rate
    warmup: int = 40  # control steps before measuring (compiles, a context block, one reset)
    image_size: int = 32  # sim camera size (pixels, square)
    execute_k: int = 0  # actions used from each chunk (0: all)
    threshold: int = 2  # start the next plan when this many queued actions or fewer remain
    deadline_ms: float = 0.0  # plan deadline; 0: wait for late plans
    episode_steps: int = 60  # control steps before an episode is reset


def main(argv: Sequence[str] | None = None) -> dict:
    a = draccus.parse(SoakConfig, args=argv)

    counter = CompileCounter()
    s = a.image_size
    cfg = DreamZeroJaxConfig(
        input_features={
            "observation.state": PolicyFeature(FeatureType.STATE, (2,)),
            "observation.images.top": PolicyFeature(FeatureType.VISUAL, (3, s, s)),
        },
        output_features={"action": PolicyFeature(FeatureType.ACTION, (2,))},
        num_inference_steps=2,
        cfg_scale=1.0,
        device="cpu",
        view_height=s,
        view_width=s,
    )
    planner = PolicyPlanner(DreamZeroJaxPolicy(cfg))
    stats_ds = {"action": {"min": np.full(2, -1.0), "max": np.full(2, 1.0)}}  # the sim's action bounds
    guard = ActionGuard.from_stats(stats_ds, deadline_s=a.deadline_ms / 1e3 or None, on_deadline="hold")
    ex = ChunkExecutor(
        planner.plan,
        guard,
        execute_k=a.execute_k,
        threshold=a.threshold,
        record_fn=planner.record,
        reset_fn=planner.reset,
    )
    sim = SimDriver(s, seed=0)
    steps_in_episode = [0]

    def observe():
        batch, done = sim.observe()
        steps_in_episode[0] += 1
        return batch, done or steps_in_episode[0] > a.episode_steps

    def new_episode():
        sim.reset()
        steps_in_episode[0] = 0

    # warm-up: first chunk (ahead-of-time compiles), a context block, and one reset
    run_loop(ex, observe, sim.act, a.hz, a.warmup, on_episode_end=new_episode)
    new_episode()
    ex.reset()
    compiles0, plans0 = counter.n, len(ex.handovers)
    proc = psutil.Process()
    rss0 = proc.memory_info().rss
    t0 = time.perf_counter()
    st = run_loop(ex, observe, sim.act, a.hz, a.steps, on_episode_end=new_episode, stats=LoopStats(a.hz))
    wall = time.perf_counter() - t0
    ex.close()
    lat = [h.latency_s * 1e3 for h in ex.handovers[plans0:]]
    report = {
        "steps": st.steps,
        "hz": a.hz,
        "wall_s": round(wall, 1),
        "episodes_reset": st.episodes,
        "replans": len(ex.handovers) - plans0,
        "held_steps": ex.held_steps,
        "guard_events": st.guard_events,
        "clamped": guard.clamped,
        "late": guard.late,
        "plan_latency_ms": {
            "mean": float(np.mean(lat)),
            "p99": float(np.percentile(lat, 99)),
            "max": float(np.max(lat)),
        },
        "stale_dropped_mean": float(np.mean([h.dropped for h in ex.handovers[plans0:]])),
        "rss_start_mb": round(rss0 / 2**20, 1),
        "rss_end_mb": round(proc.memory_info().rss / 2**20, 1),
        "compiles_during_warmup": compiles0,
        "compiles_after_warmup": counter.n - compiles0,
        "jitter": st.jitter(),
        "jitter_without_reset_steps": st.jitter(skip_resets=True),
    }
    print(json.dumps(report, indent=2))
    return report


if __name__ == "__main__":
    main()
