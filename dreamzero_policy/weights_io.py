"""Model weights on disk: one safetensors file of "/"-joined NNX parameter paths, loaded strictly."""

from __future__ import annotations

from pathlib import Path

import numpy as np
from flax import nnx
from safetensors import SafetensorError
from safetensors.numpy import load_file, save_file

from dreamzero_policy.convert.state_io import flat_params, load_flat

WEIGHTS_NAME = "model.safetensors"


def save_weights(model: nnx.Module, path: str | Path) -> None:
    import jax

    flat = {k: np.asarray(jax.device_get(v)) for k, v in flat_params(model).items()}
    # bfloat16 has no numpy dtype in safetensors.numpy; store such tensors as float32.
    flat = {k: (v.astype(np.float32) if v.dtype.name == "bfloat16" else v) for k, v in flat.items()}
    Path(path).parent.mkdir(parents=True, exist_ok=True)
    save_file(flat, str(path))


def read_weights(path: str | Path) -> dict[str, np.ndarray]:
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"weights file not found: {path}")
    try:
        return load_file(str(path))
    except (SafetensorError, OSError, ValueError) as e:
        raise ValueError(f"cannot read weights from {path}: {e}") from e


def load_weights(model: nnx.Module, path: str | Path, *, allow_missing: bool = False) -> None:
    """Strict by default: missing, unexpected and wrongly shaped tensors are named in one error."""
    load_flat(model, read_weights(path), allow_missing=allow_missing)
