"""Language-conditioned reaching: coloured targets on a table, the instruction names the one to reach.

`ReachEnv` owns everything that does not depend on the embodiment: the scene (target positions and
colours), the instruction, success, observations, rendering of the targets and the gymnasium API.
Subclasses (`dreamzero_envs.reach_point`, `dreamzero_envs.reach_arm`) supply the state, the action semantics, kinematics,
drawing of the body and a privileged proportional controller used by the scripted expert.

Observations follow the gym-pusht / gym-aloha layout that `lerobot.envs.utils.preprocess_observation`
understands: ``{"agent_pos": float32 (state_dim,), "pixels": {camera: uint8 (H, W, 3)}}``, which LeRobot
turns into ``observation.state`` and ``observation.images.<camera>``. The instruction is exposed as the
``task_description`` (and ``task``) attribute that ``lerobot-eval`` reads with ``env.call``.
"""

from __future__ import annotations

import abc
from collections.abc import Sequence
from typing import Any

import gymnasium as gym
import numpy as np
from gymnasium import spaces

from dreamzero_envs.render import Camera, Canvas

PALETTE: dict[str, np.ndarray] = {
    "red": np.array([220, 40, 40], dtype=np.uint8),
    "green": np.array([40, 200, 60], dtype=np.uint8),
    "blue": np.array([50, 90, 235], dtype=np.uint8),
    "yellow": np.array([235, 210, 40], dtype=np.uint8),
}
INSTRUCTION = "move to the {color} target"
CAMERAS = ("top", "wrist")
# Targets are kept apart so that the instruction, not proximity, decides which one is reached.
MIN_TARGET_SEPARATION = 0.45
MIN_START_DISTANCE = 0.35
WRIST_HALF_EXTENT = 0.35
# Target layouts, easiest first. "fixed": every colour has its own slot (plus a small jitter), so the
# instruction alone decides where to go; "slots": the same slots with the colours shuffled per episode, so
# the policy must also find the named colour in the image; "random": positions anywhere, which needs far
# more demonstrations than a CPU run can record to generalise.
LAYOUTS = ("fixed", "slots", "random")
SLOT_JITTER = 0.04


def parse_cameras(cameras: str | Sequence[str]) -> tuple[str, ...]:
    """'top,wrist' or ['top', 'wrist'] -> ('top', 'wrist'), validated against the known cameras."""
    names = cameras.split(",") if isinstance(cameras, str) else list(cameras)
    parsed = tuple(n.strip() for n in names if n.strip())
    if not parsed:
        raise ValueError("at least one camera is required (choose from 'top', 'wrist')")
    unknown = [n for n in parsed if n not in CAMERAS]
    if unknown or len(set(parsed)) != len(parsed):
        raise ValueError(f"cameras must be distinct names from {CAMERAS}, got {parsed}")
    return parsed


class ReachEnv(gym.Env, abc.ABC):
    """Base class; see the module docstring. Episodes terminate on success; time limits come from
    gymnasium's TimeLimit wrapper (`gym.make(..., max_episode_steps=N)`)."""

    metadata = {"render_modes": ["rgb_array"], "render_fps": 10}

    # Set by subclasses.
    state_names: tuple[str, ...] = ()
    action_names: tuple[str, ...] = ()
    robot_type: str = ""

    def __init__(
        self,
        image_size: int = 64,
        cameras: str | Sequence[str] = "top",
        n_targets: int = 3,
        success_radius: float = 0.1,
        target_radius: float = 0.11,
        render_mode: str | None = "rgb_array",
        render_size: int = 128,
        layout: str = "fixed",
    ) -> None:
        if image_size < 16:
            raise ValueError(f"image_size must be >= 16, got {image_size}")
        if not 2 <= n_targets <= len(PALETTE):
            raise ValueError(f"n_targets must be in [2, {len(PALETTE)}], got {n_targets}")
        if success_radius <= 0 or target_radius <= 0:
            raise ValueError("success_radius and target_radius must be positive")
        if layout not in LAYOUTS:
            raise ValueError(f"layout must be one of {LAYOUTS}, got {layout!r}")
        if render_mode not in (None, "rgb_array"):
            raise ValueError(f"render_mode must be 'rgb_array' or None, got {render_mode!r}")
        self.image_size = int(image_size)
        self.cameras = parse_cameras(cameras)
        self.n_targets = int(n_targets)
        self.success_radius = float(success_radius)
        self.target_radius = float(target_radius)
        self.render_mode = render_mode
        self.render_size = int(render_size)
        self.layout = layout
        self.target_colors: tuple[str, ...] = tuple(PALETTE)[: self.n_targets]

        low, high = self.state_bounds()
        self.observation_space = spaces.Dict(
            {
                "agent_pos": spaces.Box(low=low, high=high, dtype=np.float32),
                "pixels": spaces.Dict(
                    {
                        cam: spaces.Box(0, 255, (self.image_size, self.image_size, 3), dtype=np.uint8)
                        for cam in self.cameras
                    }
                ),
            }
        )
        self.action_space = spaces.Box(-1.0, 1.0, (self.action_dim,), dtype=np.float32)

        self.targets = np.zeros((self.n_targets, 2))
        self.goal_index = 0
        self._instruction = ""

    # ---- embodiment hooks -------------------------------------------------------------------------
    @property
    def state_dim(self) -> int:
        return len(self.state_names)

    @property
    def action_dim(self) -> int:
        return len(self.action_names)

    @abc.abstractmethod
    def state_bounds(self) -> tuple[np.ndarray, np.ndarray]:
        """float32 (low, high) of `agent_pos`."""

    @abc.abstractmethod
    def sample_targets(self, rng: np.random.Generator) -> np.ndarray:
        """(n_targets, 2) target centres reachable by this embodiment."""

    @abc.abstractmethod
    def target_slots(self) -> np.ndarray:
        """(n_targets, 2) slot centres of the "fixed" and "slots" layouts, pairwise MIN_TARGET_SEPARATION apart."""

    @abc.abstractmethod
    def sample_start(self, rng: np.random.Generator) -> None:
        """Set the initial body state (targets are already placed)."""

    @abc.abstractmethod
    def end_effector(self) -> np.ndarray:
        """(2,) world position that must reach the instructed target."""

    @abc.abstractmethod
    def get_state(self) -> np.ndarray:
        """float32 (state_dim,) proprioceptive state."""

    @abc.abstractmethod
    def apply_action(self, action: np.ndarray) -> None:
        """Advance the body by one validated, clipped action in [-1, 1]^action_dim."""

    @abc.abstractmethod
    def draw_body(self, canvas: Canvas) -> None:
        """Paint the embodiment over the targets."""

    @abc.abstractmethod
    def expert_action(self, noise: np.ndarray) -> np.ndarray:
        """Privileged proportional controller towards the goal, plus `noise` in action units."""

    # ---- scene ------------------------------------------------------------------------------------
    def sample_separated(
        self, rng: np.random.Generator, low: np.ndarray, high: np.ndarray, accept: Any = None
    ) -> np.ndarray:
        """Rejection-sample `n_targets` points in the box [low, high], pairwise MIN_TARGET_SEPARATION apart
        and satisfying the optional predicate `accept(point)`."""
        points: list[np.ndarray] = []
        for _ in range(10_000):
            p = rng.uniform(low, high)
            if accept is not None and not accept(p):
                continue
            if all(np.linalg.norm(p - q) >= MIN_TARGET_SEPARATION for q in points):
                points.append(p)
                if len(points) == self.n_targets:
                    return np.stack(points)
        raise RuntimeError(f"could not place {self.n_targets} separated targets; lower n_targets")

    def far_from_targets(self, point: np.ndarray) -> bool:
        return bool(np.min(np.linalg.norm(self.targets - point, axis=1)) >= MIN_START_DISTANCE)

    @property
    def goal(self) -> np.ndarray:
        return self.targets[self.goal_index]

    @property
    def goal_color(self) -> str:
        return self.target_colors[self.goal_index]

    @property
    def task_description(self) -> str:
        """The natural-language instruction of the current episode (read by lerobot-eval)."""
        return self._instruction

    @property
    def task(self) -> str:
        return self._instruction

    def goal_distance(self) -> float:
        return float(np.linalg.norm(self.end_effector() - self.goal))

    # ---- gymnasium API ----------------------------------------------------------------------------
    def reset(
        self, *, seed: int | None = None, options: dict[str, Any] | None = None
    ) -> tuple[dict[str, Any], dict[str, Any]]:
        """`options={"target": colour}` overrides the instructed colour while keeping the scene that
        `seed` draws (the draw order does not depend on options); other option keys are ignored."""
        super().reset(seed=seed)
        rng = self.np_random
        if self.layout in ("fixed", "slots"):
            order = rng.permutation(self.n_targets) if self.layout == "slots" else np.arange(self.n_targets)
            self.targets = self.target_slots()[order] + rng.uniform(-SLOT_JITTER, SLOT_JITTER, (self.n_targets, 2))
        else:
            self.targets = self.sample_targets(rng)
        self.goal_index = int(rng.integers(self.n_targets))
        self.sample_start(rng)
        forced = (options or {}).get("target")
        if forced is not None:
            if forced not in self.target_colors:
                raise ValueError(f"options['target'] must be one of {self.target_colors}, got {forced!r}")
            self.goal_index = self.target_colors.index(forced)
        self._instruction = INSTRUCTION.format(color=self.goal_color)
        return self._observation(), self._info()

    def step(self, action: Any) -> tuple[dict[str, Any], float, bool, bool, dict[str, Any]]:
        a = np.asarray(action, dtype=np.float64)
        if a.shape != (self.action_dim,):
            raise ValueError(
                f"{type(self).__name__} expects an action of shape ({self.action_dim},) "
                f"({', '.join(self.action_names)}), got shape {a.shape}"
            )
        if not np.all(np.isfinite(a)):
            raise ValueError(f"action must be finite, got {a}")
        self.apply_action(np.clip(a, -1.0, 1.0))
        success = self.goal_distance() <= self.success_radius
        return self._observation(), float(success), success, False, self._info()

    def render(self) -> np.ndarray | None:
        if self.render_mode is None:
            return None
        return self._draw(Camera((0.0, 0.0), 1.0, self.render_size))

    # ---- internals --------------------------------------------------------------------------------
    def _camera(self, name: str) -> Camera:
        if name == "top":
            return Camera((0.0, 0.0), 1.0, self.image_size)
        ee = self.end_effector()
        return Camera((float(ee[0]), float(ee[1])), WRIST_HALF_EXTENT, self.image_size)

    def _draw(self, camera: Camera) -> np.ndarray:
        canvas = Canvas(camera)
        for color, center in zip(self.target_colors, self.targets, strict=True):
            canvas.disc(center, self.target_radius, PALETTE[color])
        self.draw_body(canvas)
        return canvas.image

    def _observation(self) -> dict[str, Any]:
        return {
            "agent_pos": self.get_state().astype(np.float32),
            "pixels": {cam: self._draw(self._camera(cam)) for cam in self.cameras},
        }

    def _info(self) -> dict[str, Any]:
        distance = self.goal_distance()
        return {"is_success": distance <= self.success_radius, "distance": distance}
