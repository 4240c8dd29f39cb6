"""Device mesh (data, fsdp, tensor) and the logical rules that give every parameter its sharding.

Rules (Megatron-style for the DiT blocks, ZeRO-3-style fsdp for the rest):
  * column-parallel kernels (q, k, v, k_img, v_img, ffn_0) split their output axis over ``tensor``,
    row-parallel kernels (o, ffn_2) their input axis; the matching biases follow;
  * then the largest remaining axis divisible by the fsdp size goes over ``fsdp`` (never the stacked
    layer axis of ``blocks/...``, which ``lax.scan`` walks);
  * the batch is split over (data, fsdp). Everything else is replicated.

Multi-host: call ``jax.distributed.initialize()`` (``--distributed`` in ``dreamzero-train``) on every host
before building the mesh; ``jax.devices()`` then spans all hosts and each host feeds its own slice of the
batch through ``jax.make_array_from_process_local_data``.
"""

from __future__ import annotations

from collections.abc import Mapping

import jax
import numpy as np
from jax.sharding import Mesh, NamedSharding, PartitionSpec

AXES = ("data", "fsdp", "tensor")
BATCH_AXES = ("data", "fsdp")
COLUMN_PARALLEL = {"q", "k", "v", "k_img", "v_img", "ffn_0"}
ROW_PARALLEL = {"o", "ffn_2"}


def make_mesh(data: int = 1, fsdp: int = 1, tensor: int = 1, devices: list | None = None) -> Mesh:
    devices = list(jax.devices() if devices is None else devices)
    n = data * fsdp * tensor
    if n != len(devices):
        raise ValueError(
            f"mesh data*fsdp*tensor = {data}*{fsdp}*{tensor} = {n} but {len(devices)} devices are used"
        )
    return Mesh(np.asarray(devices).reshape(data, fsdp, tensor), AXES)


def param_spec(path: str, shape: tuple[int, ...], mesh: Mesh) -> PartitionSpec:
    parts = path.split("/")
    spec: list[str | None] = [None] * len(shape)
    tp, fs = mesh.shape["tensor"], mesh.shape["fsdp"]
    layer_axis = 0 if parts[0] == "blocks" else None
    module = parts[-2] if len(parts) >= 2 else ""
    leaf = parts[-1]
    if tp > 1 and parts[0] == "blocks" and module in COLUMN_PARALLEL | ROW_PARALLEL:
        if leaf in ("kernel", "a", "b") or (leaf == "bias" and module in COLUMN_PARALLEL):
            axis = -1 if (module in COLUMN_PARALLEL or leaf == "bias") else -2
            if leaf == "a":  # LoRA down-projection (L, in, r): only the row-parallel input axis splits
                axis = -2 if module in ROW_PARALLEL else None
            if leaf == "b":  # LoRA up-projection (L, r, out)
                axis = -1 if module in COLUMN_PARALLEL else None
            if axis is not None and shape[axis] % tp == 0:
                spec[axis % len(shape)] = "tensor"
    if fs > 1:
        free = [i for i in range(len(shape)) if spec[i] is None and i != layer_axis and shape[i] % fs == 0]
        if free:
            spec[max(free, key=lambda i: (shape[i], i))] = "fsdp"
    return PartitionSpec(*spec)


def param_shardings(
    flat: Mapping[str, jax.Array | jax.ShapeDtypeStruct], mesh: Mesh
) -> dict[str, NamedSharding]:
    return {k: NamedSharding(mesh, param_spec(k, tuple(v.shape), mesh)) for k, v in flat.items()}


def batch_sharding(mesh: Mesh) -> NamedSharding:
    return NamedSharding(mesh, PartitionSpec(BATCH_AXES))


def replicated(mesh: Mesh) -> NamedSharding:
    return NamedSharding(mesh, PartitionSpec())


def global_batch(local: Mapping[str, np.ndarray], mesh: Mesh) -> dict[str, jax.Array]:
    """This host's numpy slice of the batch -> global jax arrays split over (data, fsdp)."""
    sh = batch_sharding(mesh)
    return {k: jax.make_array_from_process_local_data(sh, np.asarray(v)) for k, v in local.items()}
