"""Reference (DreamZero ``CausalWanModel``) DiT state dict -> this package's flat NNX paths.

The reference names are kept, with two mechanical changes: torch ``Sequential`` indices fold into the
attribute name (``text_embedding.0`` -> ``text_embedding_0``, ``img_emb.proj.1`` -> ``img_emb/proj_1``)
and per-layer ``blocks.N.*`` tensors are stacked on a leading layer axis (the blocks are scanned).
"""

from __future__ import annotations

import re
from collections.abc import Mapping

import numpy as np

from dreamzero_policy.convert import torch_layout

_SEQUENTIAL = re.compile(r"(text_embedding|time_embedding|time_projection|ffn|proj)\.(\d+)")
_BLOCK = re.compile(r"^blocks\.(\d+)\.(.+)$")


def _leaf(name: str, w: np.ndarray) -> tuple[str, np.ndarray]:
    """Map the last key segment and the tensor layout."""
    stem, _, last = name.rpartition(".")
    if last == "weight":
        if w.ndim == 1:  # LayerNorm / RMSNorm
            return f"{stem}.scale", w
        if w.ndim == 2:  # nn.Linear
            return f"{stem}.kernel", torch_layout.linear(w)
        return f"{stem}.kernel", torch_layout.conv(w)  # nn.Conv3d
    return name, w  # bias, modulation, CategorySpecificLinear W / b (already [cat, in, out])


def _path(name: str) -> str:
    return _SEQUENTIAL.sub(r"\1_\2", name).replace(".", "/")


def dit_params_from_torch(sd: Mapping[str, np.ndarray], num_layers: int) -> dict[str, np.ndarray]:
    """Reference DiT keys (no ``action_head.model.`` prefix) -> flat NNX paths, blocks stacked."""
    flat: dict[str, np.ndarray] = {}
    layers: dict[str, dict[int, np.ndarray]] = {}
    for key, value in sd.items():
        w = np.asarray(value)
        m = _BLOCK.match(key)
        if m:
            idx, rest = int(m.group(1)), m.group(2)
            name, w = _leaf(rest, w)
            layers.setdefault("blocks/" + _path(name), {})[idx] = w
        else:
            name, w = _leaf(key, w)
            flat[_path(name)] = w
    for path, per_layer in layers.items():
        missing = sorted(set(range(num_layers)) - set(per_layer))
        extra = sorted(set(per_layer) - set(range(num_layers)))
        if missing or extra:
            raise ValueError(f"{path}: layers missing {missing} / unexpected {extra} for num_layers={num_layers}")
        flat[path] = torch_layout.stack([per_layer[i] for i in range(num_layers)])
    return flat


_DIFFUSERS_RENAMES: tuple[tuple[str, str], ...] = (
    (r"^condition_embedder\.time_embedder\.linear_1\.", "time_embedding.0."),
    (r"^condition_embedder\.time_embedder\.linear_2\.", "time_embedding.2."),
    (r"^condition_embedder\.time_proj\.", "time_projection.1."),
    (r"^condition_embedder\.text_embedder\.linear_1\.", "text_embedding.0."),
    (r"^condition_embedder\.text_embedder\.linear_2\.", "text_embedding.2."),
    (r"^condition_embedder\.image_embedder\.norm1\.", "img_emb.proj.0."),
    (r"^condition_embedder\.image_embedder\.ff\.net\.0\.proj\.", "img_emb.proj.1."),
    (r"^condition_embedder\.image_embedder\.ff\.net\.2\.", "img_emb.proj.3."),
    (r"^condition_embedder\.image_embedder\.norm2\.", "img_emb.proj.4."),
    (r"^scale_shift_table$", "head.modulation"),
    (r"^proj_out\.", "head.head."),
    (r"\.scale_shift_table$", ".modulation"),
    (r"\.attn1\.to_q\.", ".self_attn.q."),
    (r"\.attn1\.to_k\.", ".self_attn.k."),
    (r"\.attn1\.to_v\.", ".self_attn.v."),
    (r"\.attn1\.to_out\.0\.", ".self_attn.o."),
    (r"\.attn1\.norm_", ".self_attn.norm_"),
    (r"\.attn2\.to_q\.", ".cross_attn.q."),
    (r"\.attn2\.to_k\.", ".cross_attn.k."),
    (r"\.attn2\.to_v\.", ".cross_attn.v."),
    (r"\.attn2\.to_out\.0\.", ".cross_attn.o."),
    (r"\.attn2\.add_k_proj\.", ".cross_attn.k_img."),
    (r"\.attn2\.add_v_proj\.", ".cross_attn.v_img."),
    (r"\.attn2\.norm_added_k\.", ".cross_attn.norm_k_img."),
    (r"\.attn2\.norm_", ".cross_attn.norm_"),
    (r"\.norm2\.", ".norm3."),  # diffusers' affine cross-attention norm is the reference's norm3
    (r"\.ffn\.net\.0\.proj\.", ".ffn.0."),
    (r"\.ffn\.net\.2\.", ".ffn.2."),
)


def dit_reference_keys_from_diffusers(sd: Mapping[str, np.ndarray]) -> dict[str, np.ndarray]:
    """diffusers ``WanTransformer3DModel`` keys -> reference ``CausalWanModel`` keys (video part only)."""
    out = {}
    for key, value in sd.items():
        new = key
        for pat, rep in _DIFFUSERS_RENAMES:
            new = re.sub(pat, rep, new)
        out[new] = value
    return out
