"""umT5 text encoder: PyTorch state dicts -> flat NNX parameters of ``UMT5Encoder``.

``text_encoder_params_from_torch`` reads the reference (Wan ``WanTextEncoder``) key layout, i.e. the
``models_t5_umt5-xxl-enc-bf16.pth`` file or the ``action_head.text_encoder.`` part of a DreamZero
checkpoint with that prefix removed:

    token_embedding.weight                        (vocab, dim)
    blocks.N.norm1.weight / norm2.weight          (dim,)
    blocks.N.attn.{q,k,v,o}.weight                nn.Linear (out, in)
    blocks.N.ffn.gate.0.weight / fc1 / fc2        nn.Linear (out, in)
    blocks.N.pos_embedding.embedding.weight       (num_buckets, num_heads)
    norm.weight                                   (dim,)

``text_encoder_reference_keys_from_transformers`` renames a transformers ``UMT5EncoderModel`` state
dict into that layout, so peer parity tests exercise the real converter.
"""

from __future__ import annotations

import re
from collections.abc import Mapping

import numpy as np

from dreamzero_policy.convert.torch_layout import linear, stack
from dreamzero_policy.models.text_encoder import TextEncoderConfig

# reference per-block suffix -> (our path under blocks/, is an nn.Linear weight)
_BLOCK_KEYS: dict[str, tuple[str, bool]] = {
    "norm1.weight": ("norm1/scale", False),
    "norm2.weight": ("norm2/scale", False),
    "attn.q.weight": ("attn/q/kernel", True),
    "attn.k.weight": ("attn/k/kernel", True),
    "attn.v.weight": ("attn/v/kernel", True),
    "attn.o.weight": ("attn/o/kernel", True),
    "ffn.gate.0.weight": ("ffn/gate/kernel", True),
    "ffn.fc1.weight": ("ffn/fc1/kernel", True),
    "ffn.fc2.weight": ("ffn/fc2/kernel", True),
    "pos_embedding.embedding.weight": ("pos_embedding/embedding", False),
}


def text_encoder_params_from_torch(
    sd: Mapping[str, np.ndarray], cfg: TextEncoderConfig
) -> dict[str, np.ndarray]:
    """Reference-layout state dict -> flat {"/"-joined NNX path: array} for ``load_flat``.

    Strict: a missing key, a key that is not part of the encoder, or a block index outside
    ``cfg.num_layers`` raises ValueError. Shapes are checked later by ``load_flat``.
    """
    expected = {"token_embedding.weight", "norm.weight"}
    expected |= {f"blocks.{i}.{s}" for i in range(cfg.num_layers) for s in _BLOCK_KEYS}
    missing = sorted(expected - set(sd))
    unexpected = sorted(set(sd) - expected)
    if missing or unexpected:
        raise ValueError(
            f"text encoder state dict does not match {cfg.num_layers} umT5 layers; "
            f"missing {len(missing)}: {missing[:8]}; unexpected {len(unexpected)}: {unexpected[:8]}"
        )

    out: dict[str, np.ndarray] = {
        "token_embedding/embedding": np.asarray(sd["token_embedding.weight"]),
        "norm/scale": np.asarray(sd["norm.weight"]),
    }
    for suffix, (path, is_linear) in _BLOCK_KEYS.items():
        per_layer = [np.asarray(sd[f"blocks.{i}.{suffix}"]) for i in range(cfg.num_layers)]
        out[f"blocks/{path}"] = stack([linear(w) if is_linear else w for w in per_layer])
    return out


# transformers UMT5 encoder key (after "encoder.block.N.") -> reference key (after "blocks.N.")
_HF_BLOCK_KEYS: dict[str, str] = {
    "layer.0.layer_norm.weight": "norm1.weight",
    "layer.0.SelfAttention.q.weight": "attn.q.weight",
    "layer.0.SelfAttention.k.weight": "attn.k.weight",
    "layer.0.SelfAttention.v.weight": "attn.v.weight",
    "layer.0.SelfAttention.o.weight": "attn.o.weight",
    "layer.0.SelfAttention.relative_attention_bias.weight": "pos_embedding.embedding.weight",
    "layer.1.layer_norm.weight": "norm2.weight",
    "layer.1.DenseReluDense.wi_0.weight": "ffn.gate.0.weight",  # the activated (gate) branch
    "layer.1.DenseReluDense.wi_1.weight": "ffn.fc1.weight",
    "layer.1.DenseReluDense.wo.weight": "ffn.fc2.weight",
}
_HF_BLOCK_RE = re.compile(r"encoder\.block\.(\d+)\.(.+)")


def text_encoder_reference_keys_from_transformers(sd: Mapping[str, np.ndarray]) -> dict[str, np.ndarray]:
    """transformers ``UMT5EncoderModel`` (gated-gelu) state dict -> reference ``WanTextEncoder`` keys.

    ``shared.weight`` and ``encoder.embed_tokens.weight`` are the same tied table; either is used.
    Any other unrecognised key (e.g. a non-gated FFN's ``wi``) raises ValueError.
    """
    out: dict[str, np.ndarray] = {}
    unknown: list[str] = []
    for key, value in sd.items():
        if key in ("shared.weight", "encoder.embed_tokens.weight"):
            out["token_embedding.weight"] = np.asarray(value)
        elif key == "encoder.final_layer_norm.weight":
            out["norm.weight"] = np.asarray(value)
        elif (m := _HF_BLOCK_RE.fullmatch(key)) and m.group(2) in _HF_BLOCK_KEYS:
            out[f"blocks.{m.group(1)}.{_HF_BLOCK_KEYS[m.group(2)]}"] = np.asarray(value)
        else:
            unknown.append(key)
    if unknown:
        raise ValueError(
            f"unrecognised transformers UMT5 encoder keys ({len(unknown)}): {sorted(unknown)[:8]}"
        )
    if "token_embedding.weight" not in out:
        raise ValueError("transformers state dict has neither shared.weight nor encoder.embed_tokens.weight")
    return out
