"""PyTorch -> JAX tensor layouts (channels-last, (in, out) kernels)."""

from __future__ import annotations

import numpy as np


def linear(w: np.ndarray) -> np.ndarray:
    """nn.Linear weight (out, in) -> kernel (in, out)."""
    return np.ascontiguousarray(w.T)


def conv(w: np.ndarray) -> np.ndarray:
    """nn.ConvNd weight (out, in, *k) -> (*k, in, out) for channels-last convolutions."""
    return np.ascontiguousarray(np.moveaxis(w, (0, 1), (-1, -2)))


def stack(arrays: list[np.ndarray]) -> np.ndarray:
    """Per-layer tensors -> one stacked tensor with a leading layer axis (scanned blocks)."""
    return np.stack(arrays, axis=0)
