"""CLIP visual tower: reference (open-clip ``visual.*``) state dict -> :class:`CLIPVisionEncoder` params.

Input keys are the reference's, relative to the visual tower: a DreamZero checkpoint key
``action_head.image_encoder.model.visual.transformer.0.attn.to_qkv.weight`` is passed as
``transformer.0.attn.to_qkv.weight`` (strip :data:`CHECKPOINT_PREFIX`; for the original Wan
``models_clip_*.pth`` file strip ``visual.`` and leave out ``textual.*``). Keys the encoder never uses
(the last block, ``post_norm``, ``head``) are accepted and dropped; any other unknown key is an error.
"""

from __future__ import annotations

import re
from collections.abc import Mapping

import numpy as np

from dreamzero_policy.convert.torch_layout import conv, linear, stack
from dreamzero_policy.models.image_encoder import ImageEncoderConfig

CHECKPOINT_PREFIX = "action_head.image_encoder.model.visual."

# Per-block reference parameter -> (our path under transformer/, layout)
_BLOCK_PARAMS: dict[str, tuple[str, str]] = {
    "norm1.weight": ("norm1/scale", "vector"),
    "norm1.bias": ("norm1/bias", "vector"),
    "attn.to_qkv.weight": ("attn/to_qkv/kernel", "linear"),
    "attn.to_qkv.bias": ("attn/to_qkv/bias", "vector"),
    "attn.proj.weight": ("attn/proj/kernel", "linear"),
    "attn.proj.bias": ("attn/proj/bias", "vector"),
    "norm2.weight": ("norm2/scale", "vector"),
    "norm2.bias": ("norm2/bias", "vector"),
    "mlp.0.weight": ("mlp/0/kernel", "linear"),
    "mlp.0.bias": ("mlp/0/bias", "vector"),
    "mlp.2.weight": ("mlp/2/kernel", "linear"),
    "mlp.2.bias": ("mlp/2/bias", "vector"),
}
_UNUSED_TOP = ("post_norm.weight", "post_norm.bias", "head")


def image_encoder_params_from_torch(
    sd: Mapping[str, np.ndarray], cfg: ImageEncoderConfig
) -> dict[str, np.ndarray]:
    """Reference ``visual.*`` state dict (prefix removed) -> flat NNX params for ``load_flat``."""
    n_run = cfg.num_run_layers
    required = {
        "patch_embedding.weight",
        "cls_embedding",
        "pos_embedding",
        "pre_norm.weight",
        "pre_norm.bias",
    }
    required |= {f"transformer.{i}.{name}" for i in range(n_run) for name in _BLOCK_PARAMS}
    unused = set(_UNUSED_TOP) | {f"transformer.{n_run}.{name}" for name in _BLOCK_PARAMS}
    missing = sorted(required - set(sd))
    unexpected = sorted(set(sd) - required - unused)
    if missing or unexpected:
        raise ValueError(
            f"image encoder state dict does not match a {cfg.num_layers}-layer visual tower; "
            f"missing {missing}; unexpected {unexpected}"
        )

    def arr(key: str) -> np.ndarray:
        return np.asarray(sd[key])

    flat: dict[str, np.ndarray] = {
        "patch_embedding/kernel": conv(arr("patch_embedding.weight")),
        "cls_embedding": arr("cls_embedding"),
        "pos_embedding": arr("pos_embedding"),
        "pre_norm/scale": arr("pre_norm.weight"),
        "pre_norm/bias": arr("pre_norm.bias"),
    }
    for name, (path, layout) in _BLOCK_PARAMS.items():
        per_layer = [arr(f"transformer.{i}.{name}") for i in range(n_run)]
        if layout == "linear":
            per_layer = [linear(w) for w in per_layer]
        flat[f"transformer/{path}"] = stack(per_layer)
    return flat


# transformers CLIPVisionModel (vision_model.*) -> reference names, for parity tests against the peer.
_HF_LAYER = re.compile(r"encoder\.layers\.(\d+)\.(.+)")
_HF_LAYER_RENAME = {
    "layer_norm1": "norm1",
    "layer_norm2": "norm2",
    "self_attn.out_proj": "attn.proj",
    "mlp.fc1": "mlp.0",
    "mlp.fc2": "mlp.2",
}
_HF_TOP_RENAME = {
    "embeddings.patch_embedding.weight": "patch_embedding.weight",
    "pre_layrnorm.weight": "pre_norm.weight",
    "pre_layrnorm.bias": "pre_norm.bias",
    "post_layernorm.weight": "post_norm.weight",
    "post_layernorm.bias": "post_norm.bias",
}


def image_encoder_reference_keys_from_transformers(sd: Mapping[str, np.ndarray]) -> dict[str, np.ndarray]:
    """transformers ``CLIPVisionModel.state_dict()`` -> reference ``visual.*`` keys (prefix removed).

    Separate q/k/v projections are concatenated along the output axis in q, k, v order (the reference
    splits ``to_qkv`` output with ``chunk(3)``); the class embedding (dim,) and position table
    (tokens, dim) gain the reference's leading singleton axes. There is no ``head`` in the peer."""
    out: dict[str, np.ndarray] = {}
    qkv: dict[tuple[int, str], dict[str, np.ndarray]] = {}
    for full_key, value in sd.items():
        if not full_key.startswith("vision_model."):
            raise ValueError(f"not a CLIPVisionModel key: {full_key!r}")
        key = full_key.removeprefix("vision_model.")
        value = np.asarray(value)
        if key == "embeddings.position_ids":
            continue  # index buffer, not a parameter
        if key == "embeddings.class_embedding":
            out["cls_embedding"] = value.reshape(1, 1, -1)
        elif key == "embeddings.position_embedding.weight":
            out["pos_embedding"] = value[None]
        elif key in _HF_TOP_RENAME:
            out[_HF_TOP_RENAME[key]] = value
        elif m := _HF_LAYER.fullmatch(key):
            layer, rest = int(m.group(1)), m.group(2)
            module, _, kind = rest.rpartition(".")
            if module in ("self_attn.q_proj", "self_attn.k_proj", "self_attn.v_proj"):
                qkv.setdefault((layer, kind), {})[module[len("self_attn.")]] = value
            elif module in _HF_LAYER_RENAME:
                out[f"transformer.{layer}.{_HF_LAYER_RENAME[module]}.{kind}"] = value
            else:
                raise ValueError(f"unknown CLIPVisionModel layer key: {full_key!r}")
        else:
            raise ValueError(f"unknown CLIPVisionModel key: {full_key!r}")
    for (layer, kind), parts in qkv.items():
        if set(parts) != {"q", "k", "v"}:
            raise ValueError(f"layer {layer} {kind}: need q, k and v projections, got {sorted(parts)}")
        out[f"transformer.{layer}.attn.to_qkv.{kind}"] = np.concatenate(
            [parts["q"], parts["k"], parts["v"]], axis=0
        )
    return out
