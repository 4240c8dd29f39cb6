"""Strict, name-addressed reads and writes of an NNX module's parameters.

Parameters are addressed by "/"-joined paths ("blocks/self_attn/q/kernel"). Every converter builds a
flat {path: array} dict and calls :func:`load_flat`, which reports missing, unexpected and
wrongly-shaped entries by name in one error instead of loading silently wrong weights.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping

import jax
import numpy as np
from flax import nnx


class StateMismatchError(ValueError):
    """Raised when a flat parameter dict does not match a module's parameters exactly."""


def path_str(path: tuple) -> str:
    return "/".join(str(p) for p in path)


def flat_params(model: nnx.Module) -> dict[str, jax.Array]:
    """{path: array}; ShapeDtypeStructs for an abstract (``nnx.eval_shape``) model."""
    return {path_str(p): v.get_value() for p, v in nnx.to_flat_state(nnx.state(model, nnx.Param))}


def _shape(given: Mapping[str, np.ndarray], key: str) -> tuple[int, ...]:
    """A lazy mapping (weights_io) answers shapes from its header without reading the tensor."""
    shape = getattr(given, "shape", None)
    return tuple(shape(key)) if callable(shape) else tuple(np.shape(given[key]))


def check_flat(
    expected: Mapping[str, tuple[int, ...]], given: Mapping[str, np.ndarray], *, allow_missing: bool = False
) -> None:
    missing = sorted(set(expected) - set(given))
    unexpected = sorted(set(given) - set(expected))
    shapes = sorted(
        f"{k}: expected {tuple(expected[k])}, got {_shape(given, k)}"
        for k in set(expected) & set(given)
        if tuple(expected[k]) != _shape(given, k)
    )
    problems = []
    if missing and not allow_missing:
        problems.append(f"missing {len(missing)}: {missing}")
    if unexpected:
        problems.append(f"unexpected {len(unexpected)}: {unexpected}")
    if shapes:
        problems.append(f"shape mismatch {len(shapes)}: {shapes}")
    if problems:
        raise StateMismatchError("parameter mismatch; " + "; ".join(problems))


def load_flat(
    model: nnx.Module,
    flat: Mapping[str, np.ndarray],
    *,
    allow_missing: bool = False,
    device_of: Callable[[str], jax.Device | None] | None = None,
) -> None:
    """Write ``flat`` into ``model`` in place, each tensor cast to its parameter's dtype. Strict by default.

    ``model`` may be abstract (``nnx.eval_shape``): then nothing was allocated before and each tensor goes
    straight to ``device_of(path)`` (JAX's default device when None) in the parameter's dtype, so a bf16
    file loaded into a bf16 model is never widened. ``flat`` is read one key at a time, so a lazy mapping
    keeps one tensor in host memory.
    """
    state = nnx.state(model, nnx.Param)
    items = nnx.to_flat_state(state)
    check_flat({path_str(p): v.get_value().shape for p, v in items}, flat, allow_missing=allow_missing)
    for p, var in items:
        key = path_str(p)
        if key in flat:
            host = np.asarray(flat[key])
            want = np.dtype(var.get_value().dtype)
            device = device_of(key) if device_of is not None else None
            var.set_value(jax.device_put(host if host.dtype == want else host.astype(want), device))
    nnx.update(model, state)
