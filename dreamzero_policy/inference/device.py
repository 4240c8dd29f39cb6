"""``--policy.device`` -> the JAX device the model runs on.

LeRobot names torch devices (``cpu``, ``cuda``, ``cuda:N``, ``mps``, ``xpu``); the model is JAX, so the
name is mapped to a JAX device and everything (parameters, compiled rollout, inputs) is placed there.
A device JAX has no backend for is an error that says what to install or pass instead.
"""

from __future__ import annotations

import logging

import jax

log = logging.getLogger(__name__)


def jax_device_for(device: str | None) -> jax.Device:
    """``cpu`` -> the host CPU; ``cuda[:N]`` -> JAX GPU N; ``None`` -> JAX's default device."""
    if device is None:
        return jax.devices()[0]
    kind, _, index = str(device).partition(":")
    platform = {"cpu": "cpu", "cuda": "gpu"}.get(kind)
    if platform is None:
        raise ValueError(f"--policy.device={device}: JAX has no {kind!r} backend; use cpu or cuda[:N]")
    try:
        devices = jax.devices(platform)
    except RuntimeError:
        raise ValueError(
            f"--policy.device={device} but this JAX has no {platform.upper()} backend "
            f"(JAX sees {[d.platform for d in jax.devices()]}): install jax[cuda12] or pass --policy.device=cpu"
        ) from None
    i = int(index) if index else 0
    if not 0 <= i < len(devices):
        raise ValueError(f"--policy.device={device}: JAX sees {len(devices)} {platform} device(s)")
    log.info("dreamzero_jax runs on JAX device %s (--policy.device=%s)", devices[i], device)
    return devices[i]


def device_name_of_backend() -> str:
    """The ``--policy.device`` value naming JAX's default backend (written into exported configs)."""
    return "cuda" if jax.default_backend() == "gpu" else "cpu"
