"""PEFT LoRA checkpoints of the DreamZero DiT: key normalisation and the merge rule.

The reference wraps the DiT with ``peft.get_peft_model`` (``LoraConfig(r=lora_rank, lora_alpha=lora_alpha,
target_modules="q,k,v,o,ffn.0,ffn.2")``), so a saved checkpoint has keys such as
``action_head.model.base_model.model.blocks.3.self_attn.q.base_layer.weight`` (the frozen base) and
``...self_attn.q.lora_A.default.weight`` (r, in) / ``lora_B.default.weight`` (out, r). PEFT computes
``base(x) + (alpha / r) * B(A(x))`` (no rsLoRA in the reference), so the merged weight is
``W + (alpha / r) * B @ A``. alpha and r come from the checkpoint's ``config.json``
(``action_head_cfg.config.lora_alpha`` / ``lora_rank``); r is cross-checked with ``lora_A``'s shape.
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from dataclasses import dataclass

import numpy as np

_LORA = re.compile(r"^(?P<module>.+)\.lora_(?P<ab>[AB])(?:\.default)?\.weight$")


def normalise_key(key: str) -> tuple[str, str | None]:
    """A checkpoint key -> (plain reference key, None) or (the target's ``.weight`` key, "A" | "B").

    Strips PEFT's ``base_model.model.`` wrapper and ``.base_layer`` segments. Any other LoRA tensor
    (DoRA magnitudes, LoRA embeddings) keeps its name and is reported as unexpected downstream.
    """
    key = key.replace("base_model.model.", "").replace(".base_layer.", ".")
    m = _LORA.match(key)
    if m:
        return f"{m['module']}.weight", m["ab"]
    return key, None


@dataclass(frozen=True)
class LoraScale:
    alpha: float
    rank: int

    @property
    def scale(self) -> float:
        return self.alpha / self.rank


def find_config_value(tree: object, name: str) -> object | None:
    """The first value named ``name`` anywhere in a nested config.json (depth first), or None."""
    if isinstance(tree, Mapping):
        if name in tree:
            return tree[name]
        for v in tree.values():
            found = find_config_value(v, name)
            if found is not None:
                return found
    elif isinstance(tree, list):
        for v in tree:
            found = find_config_value(v, name)
            if found is not None:
                return found
    return None


def lora_scale(
    ranks: Mapping[str, int], config_json: Mapping | None, alpha_override: float | None
) -> LoraScale:
    """alpha and rank for a checkpoint whose adapters have ``ranks`` (target key -> lora_A rows)."""
    distinct = sorted(set(ranks.values()))
    if len(distinct) != 1:
        raise ValueError(f"LoRA adapters of different ranks {distinct} are not supported")
    rank = distinct[0]
    cfg_rank = find_config_value(config_json or {}, "lora_rank")
    if cfg_rank is not None and int(cfg_rank) != rank:
        raise ValueError(f"config.json says lora_rank={cfg_rank} but the lora_A tensors have rank {rank}")
    alpha = (
        alpha_override if alpha_override is not None else find_config_value(config_json or {}, "lora_alpha")
    )
    if alpha is None:
        raise ValueError(
            "LoRA checkpoint without lora_alpha in config.json: pass the alpha it was trained with "
            "(--lora_alpha=ALPHA; the reference default is 4 with rank 4)"
        )
    return LoraScale(float(alpha), rank)


def merge(base: np.ndarray, a: np.ndarray, b: np.ndarray, scale: float) -> np.ndarray:
    """W + scale * B @ A in float32, returned in the base weight's stored dtype."""
    if a.ndim != 2 or b.ndim != 2 or b.shape[1] != a.shape[0] or base.shape != (b.shape[0], a.shape[1]):
        raise ValueError(f"LoRA shapes do not fit: base {base.shape}, A {a.shape}, B {b.shape}")
    merged = base.astype(np.float32) + scale * (b.astype(np.float32) @ a.astype(np.float32))
    return merged.astype(base.dtype)
