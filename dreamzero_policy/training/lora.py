"""LoRA as separate parameters merged into the frozen kernels inside the forward.

For a stacked block kernel W (L, in, out) the adapter is a (L, in, r) and b (L, r, out), and the forward
uses W + (alpha / r) * a @ b. Targets follow the reference (peft ``target_modules`` q, k, v, o, ffn.0,
ffn.2: the q/k/v/o of both self- and cross-attention, not k_img/v_img). a is Kaiming-uniform, b zero,
so training starts from the pretrained function exactly.
"""

from __future__ import annotations

from collections.abc import Mapping

import jax
import jax.numpy as jnp

DEFAULT_TARGETS = ("q", "k", "v", "o", "ffn_0", "ffn_2")
# Trained next to the adapters (the reference's trainable state/action encoder and decoder).
REGISTER_PREFIXES = ("state_encoder/", "action_encoder/", "action_decoder/")


def lora_target_paths(flat: Mapping[str, jax.Array], targets: tuple[str, ...]) -> list[str]:
    out = []
    for path in flat:
        parts = path.split("/")
        if parts[0] == "blocks" and parts[-1] == "kernel" and parts[-2] in targets:
            out.append(path)
    if not out:
        raise ValueError(f"no DiT kernels match LoRA targets {targets}")
    return sorted(out)


def init_lora(flat: Mapping[str, jax.Array], targets: tuple[str, ...], rank: int, key: jax.Array) -> dict:
    if rank < 1:
        raise ValueError(f"LoRA rank must be >= 1, got {rank}")
    lora = {}
    for i, path in enumerate(lora_target_paths(flat, targets)):
        layers, fan_in, fan_out = flat[path].shape
        bound = (3.0 / fan_in) ** 0.5  # kaiming_uniform(a=sqrt(5)) as torch/peft
        a = jax.random.uniform(jax.random.fold_in(key, i), (layers, fan_in, rank), jnp.float32, -bound, bound)
        lora[path.removesuffix("/kernel") + "/a"] = a
        lora[path.removesuffix("/kernel") + "/b"] = jnp.zeros((layers, rank, fan_out), jnp.float32)
    return lora


def merge_lora(flat: Mapping[str, jax.Array], lora: Mapping[str, jax.Array], scale: float) -> dict:
    """Base params with every adapted kernel replaced by W + scale * a @ b."""
    out = dict(flat)
    for key in lora:
        if key.endswith("/a"):
            base = key.removesuffix("/a")
            delta = jnp.einsum("lir,lro->lio", lora[key], lora[base + "/b"])
            out[base + "/kernel"] = flat[base + "/kernel"] + scale * delta.astype(
                flat[base + "/kernel"].dtype
            )
    return out
