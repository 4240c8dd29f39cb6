"""A tiny numpy rasteriser for the top-down reach scenes (no pygame, no OpenGL).

World coordinates: x to the right, y up, the arena is the square [-1, 1]^2. A camera is an axis-aligned
square window (centre, half extent) sampled at pixel centres, so a view is a pure function of the scene
and the same scene always renders the same bytes.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

ARENA_HALF = 1.0
BACKGROUND = np.array([32, 32, 36], dtype=np.uint8)
OUTSIDE = np.array([0, 0, 0], dtype=np.uint8)


@dataclass(frozen=True)
class Camera:
    """A square top-down window onto the world."""

    center: tuple[float, float]
    half_extent: float
    size: int

    def grid(self) -> tuple[np.ndarray, np.ndarray]:
        """World (x, y) of every pixel centre, each (size, size); row 0 is the top (largest y)."""
        if self.size < 1:
            raise ValueError(f"camera size must be >= 1, got {self.size}")
        if self.half_extent <= 0:
            raise ValueError(f"camera half_extent must be > 0, got {self.half_extent}")
        offsets = (np.arange(self.size, dtype=np.float64) + 0.5) / self.size * 2.0 - 1.0
        offsets *= self.half_extent
        xs = self.center[0] + offsets
        ys = self.center[1] - offsets
        return np.meshgrid(xs, ys, indexing="xy")


class Canvas:
    """An RGB uint8 image plus the world coordinates of its pixels; shapes paint in call order."""

    def __init__(self, camera: Camera) -> None:
        self.x, self.y = camera.grid()
        inside = (np.abs(self.x) <= ARENA_HALF) & (np.abs(self.y) <= ARENA_HALF)
        self.image = np.where(inside[..., None], BACKGROUND, OUTSIDE).astype(np.uint8)

    def disc(self, center: np.ndarray, radius: float, color: np.ndarray) -> None:
        mask = (self.x - center[0]) ** 2 + (self.y - center[1]) ** 2 <= radius**2
        self.image[mask] = color

    def segment(self, start: np.ndarray, end: np.ndarray, half_width: float, color: np.ndarray) -> None:
        """A thick line: pixels within `half_width` of the segment start-end."""
        d = np.asarray(end, dtype=np.float64) - np.asarray(start, dtype=np.float64)
        length_sq = float(d @ d)
        px, py = self.x - start[0], self.y - start[1]
        if length_sq == 0.0:
            t = np.zeros_like(px)
        else:
            t = np.clip((px * d[0] + py * d[1]) / length_sq, 0.0, 1.0)
        mask = (px - t * d[0]) ** 2 + (py - t * d[1]) ** 2 <= half_width**2
        self.image[mask] = color
