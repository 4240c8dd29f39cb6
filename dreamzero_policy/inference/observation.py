"""Camera views -> the one tiled frame the model sees; shared by training and the policy rollout.

Views are resized with torch's antialiased bilinear filter (``F.interpolate(antialias=True)``, the
PIL-style triangle filter when shrinking): a 480p camera shrunk to 32 px must average its pixels, not
sample a few of them. Training (numpy views from the data loader) and inference (torch views from
LeRobot) go through the same function, so the model sees the same pixels in both.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

import numpy as np
import torch
import torch.nn.functional as F

if TYPE_CHECKING:
    from dreamzero_policy.configuration_dreamzero import DreamZeroJaxConfig


def resize_views(images: np.ndarray | torch.Tensor, height: int, width: int) -> np.ndarray:
    """(..., H, W, C) float -> (..., height, width, C) float32 numpy, antialiased bilinear."""
    x = torch.as_tensor(np.asarray(images) if not isinstance(images, torch.Tensor) else images)
    x = x.detach().to("cpu", torch.float32)
    *lead, h, w, c = x.shape
    if (h, w) == (height, width):
        return x.numpy()
    flat = x.reshape(-1, h, w, c).permute(0, 3, 1, 2)
    out = F.interpolate(flat, size=(height, width), mode="bilinear", align_corners=False, antialias=True)
    return out.permute(0, 2, 3, 1).reshape(*lead, height, width, c).contiguous().numpy()


def crop_views(views: list[np.ndarray], crop: float, rng: np.random.Generator | None = None) -> list[np.ndarray]:
    """Keep a ``crop`` fraction of each side of every (..., H, W, C) view: centred (inference and the
    eval transform, as the reference), or at a random offset drawn from ``rng`` (training augmentation),
    the same for every frame of a view. Resizing back happens in :func:`tile_views`."""
    if not 0.0 < crop <= 1.0:
        raise ValueError(f"crop must be in (0, 1], got {crop}")
    out = []
    for v in views:
        h, w = v.shape[-3:-1]
        ch, cw = max(1, round(h * crop)), max(1, round(w * crop))
        if rng is None:
            y0, x0 = (h - ch) // 2, (w - cw) // 2
        else:
            y0, x0 = int(rng.integers(0, h - ch + 1)), int(rng.integers(0, w - cw + 1))
        out.append(v[..., y0 : y0 + ch, x0 : x0 + cw, :])
    return out


def tile_views(views: list, cfg: DreamZeroJaxConfig) -> np.ndarray:
    """Camera views, each (B, H, W, 3) float in [0, 1] in ``cfg.camera_keys`` order -> (B, H', W', 3).

    Each view may have any size. "row": each view resized to view_height x view_width, side by side.
    "droid": the first view stretched across the top (view_height x (n-1)*view_width), the others below
    it side by side.
    """
    if not views:
        raise ValueError("tile_views needs at least one camera view")
    vh, vw = cfg.view_height, cfg.view_width
    if cfg.tiling == "row" or len(views) == 1:
        return np.concatenate([resize_views(v, vh, vw) for v in views], axis=-2)
    if cfg.tiling != "droid":
        raise ValueError(f"tiling must be 'row' or 'droid', got {cfg.tiling!r}")
    top = resize_views(views[0], vh, vw * (len(views) - 1))
    bottom = np.concatenate([resize_views(v, vh, vw) for v in views[1:]], axis=-2)
    return np.concatenate([top, bottom], axis=-3)
