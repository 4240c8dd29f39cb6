"""Strict, name-addressed reads and writes of an NNX module's parameters.

Parameters are addressed by "/"-joined paths ("blocks/self_attn/q/kernel"). Every converter builds a
flat {path: array} dict and calls :func:`load_flat`, which reports missing, unexpected and
wrongly-shaped entries by name in one error instead of loading silently wrong weights.
"""

from __future__ import annotations

from collections.abc import Mapping

import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx


class StateMismatchError(ValueError):
    """Raised when a flat parameter dict does not match a module's parameters exactly."""


def path_str(path: tuple) -> str:
    return "/".join(str(p) for p in path)


def flat_params(model: nnx.Module) -> dict[str, jax.Array]:
    return {path_str(p): v[...] for p, v in nnx.to_flat_state(nnx.state(model, nnx.Param))}


def check_flat(
    expected: Mapping[str, tuple[int, ...]], given: Mapping[str, np.ndarray], *, allow_missing: bool = False
) -> None:
    missing = sorted(set(expected) - set(given))
    unexpected = sorted(set(given) - set(expected))
    shapes = sorted(
        f"{k}: expected {tuple(expected[k])}, got {tuple(np.shape(given[k]))}"
        for k in set(expected) & set(given)
        if tuple(expected[k]) != tuple(np.shape(given[k]))
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


def load_flat(model: nnx.Module, flat: Mapping[str, np.ndarray], *, allow_missing: bool = False) -> None:
    """Write ``flat`` into ``model`` in place, keeping each parameter's dtype. Strict by default."""
    state = nnx.state(model, nnx.Param)
    items = nnx.to_flat_state(state)
    check_flat({path_str(p): v[...].shape for p, v in items}, flat, allow_missing=allow_missing)
    for p, var in items:
        key = path_str(p)
        if key in flat:
            var.set_value(jnp.asarray(flat[key], dtype=var[...].dtype))
    nnx.update(model, state)
