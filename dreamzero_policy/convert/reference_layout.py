"""Where every parameter of :class:`DreamZeroModel` lives in a reference (PyTorch DreamZero) checkpoint.

The map is built from our side: for each flat NNX path (``dit/blocks/self_attn/q/kernel``) it names the
reference key(s) it comes from (``action_head.model.blocks.{0..L-1}.self_attn.q.weight``), the layout
change between them and the reference shape. One table therefore serves three uses: the streaming
converter (reference -> ours, one output tensor at a time), the strict report (the exact set of keys
and shapes a checkpoint must hold) and the inverse (ours -> reference) used by round-trip tests.

The naming rules are the inverse of the per-model converters in ``convert/{dit,text_encoder,
image_encoder,vae}.py``; tests check that both directions agree tensor for tensor.
"""

from __future__ import annotations

import re
from collections.abc import Iterable, Mapping
from dataclasses import dataclass

import numpy as np
from flax import nnx

from dreamzero_policy.convert.image_encoder import _BLOCK_PARAMS as _CLIP_BLOCK
from dreamzero_policy.convert.state_io import path_str
from dreamzero_policy.convert.text_encoder import _BLOCK_KEYS as _T5_BLOCK
from dreamzero_policy.models.dit import CausalWanDiT
from dreamzero_policy.models.image_encoder import CLIPVisionEncoder
from dreamzero_policy.models.presets import ModelConfig
from dreamzero_policy.models.text_encoder import UMT5Encoder
from dreamzero_policy.models.vae import WanVAE

# part name -> (DreamZeroModel attribute, reference key prefix)
PARTS: dict[str, tuple[str, str]] = {
    "dit": ("dit", "action_head.model."),
    "text": ("text_encoder", "action_head.text_encoder."),
    "image": ("image_encoder", "action_head.image_encoder.model.visual."),
    "vae": ("vae", "action_head.vae.model."),
}
ALL_PARTS: tuple[str, ...] = tuple(PARTS)
# Reference tensors the JAX model never uses: the CLIP logit scale, the text tower of a full CLIP file.
_IMAGE_UNUSED_OUTSIDE = re.compile(r"^action_head\.image_encoder\.model\.(log_scale|logit_bias|textual\..+)$")


@dataclass(frozen=True)
class Entry:
    """One of our parameters and the reference tensor(s) it is made of."""

    path: str  # full flat NNX path, e.g. "dit/blocks/self_attn/q/kernel"
    sources: tuple[str, ...]  # full reference keys; one per layer when ``stacked``
    kind: str  # "same" | "linear" | "conv" | "gamma" | "conv1x1"
    stacked: bool
    shape: tuple[int, ...]  # our shape (with the layer axis when stacked)
    ref_shape: tuple[int, ...]  # the shape of each source tensor

    @property
    def part(self) -> str:
        return next(p for p, (attr, _) in PARTS.items() if self.path.startswith(attr + "/"))


def _ref_shape(kind: str, shape: tuple[int, ...], vae_attention_norm: bool = False) -> tuple[int, ...]:
    if kind == "linear":
        return (shape[1], shape[0])
    if kind == "conv":
        return (shape[-1], shape[-2], *shape[:-2])
    if kind == "gamma":
        return (shape[0], 1, 1) if vae_attention_norm else (shape[0], 1, 1, 1)
    if kind == "conv1x1":
        return (shape[1], shape[0], 1, 1)
    return shape


def to_ours(kind: str, w: np.ndarray) -> np.ndarray:
    """One reference tensor -> our layout (a copy in the same dtype)."""
    if kind == "linear":
        return np.ascontiguousarray(w.T)
    if kind == "conv":
        return np.ascontiguousarray(np.moveaxis(w, (0, 1), (-1, -2)))
    if kind == "gamma":
        return np.ascontiguousarray(w.reshape(-1))
    if kind == "conv1x1":
        return np.ascontiguousarray(w.reshape(w.shape[0], w.shape[1]).T)
    return np.ascontiguousarray(w)


def to_reference(kind: str, w: np.ndarray, ref_shape: tuple[int, ...]) -> np.ndarray:
    """Inverse of :func:`to_ours` for one (unstacked) tensor."""
    if kind == "linear":
        out = w.T
    elif kind == "conv":
        out = np.moveaxis(w, (-1, -2), (0, 1))
    elif kind == "conv1x1":
        out = w.T.reshape(ref_shape)
    else:
        out = w.reshape(ref_shape)
    return np.ascontiguousarray(out)


# ---------------------------------------------------------------------------- per-part naming rules
_DIT_SEQ = re.compile(r"(text_embedding|time_embedding|time_projection|ffn|proj)_(\d+)")


def _dit_rule(local: str, per_layer_ndim: int) -> tuple[str, str]:
    stem, _, leaf = local.rpartition("/")
    name = _DIT_SEQ.sub(r"\1.\2", stem).replace("/", ".")
    if leaf == "kernel":
        return f"{name}.weight", "linear" if per_layer_ndim == 2 else "conv"
    if leaf == "scale":
        return f"{name}.weight", "same"
    return f"{name}.{leaf}" if name else leaf, "same"


_T5_BY_PATH = {
    path: (suffix, "linear" if is_linear else "same") for suffix, (path, is_linear) in _T5_BLOCK.items()
}
_T5_TOP = {"token_embedding/embedding": "token_embedding.weight", "norm/scale": "norm.weight"}
_CLIP_BY_PATH = {
    path: (name, "linear" if layout == "linear" else "same") for name, (path, layout) in _CLIP_BLOCK.items()
}
_CLIP_TOP = {
    "patch_embedding/kernel": ("patch_embedding.weight", "conv"),
    "cls_embedding": ("cls_embedding", "same"),
    "pos_embedding": ("pos_embedding", "same"),
    "pre_norm/scale": ("pre_norm.weight", "same"),
    "pre_norm/bias": ("pre_norm.bias", "same"),
}
_VAE_RESIDUAL = {"norm1": "residual.0", "conv1": "residual.2", "norm2": "residual.3", "conv2": "residual.6"}
_VAE_RENAME = {"head_norm": "head.0", "head_conv": "head.2", "resample": "resample.1"}


def _vae_rule(local: str) -> tuple[str, str, bool]:
    parts = local.split("/")
    leaf, stem = parts[-1], parts[:-1]
    out = []
    for i, seg in enumerate(stem):
        parent = stem[i - 1] if i else ""
        if seg in _VAE_RESIDUAL and i > 0 and parent not in ("encoder", "decoder"):
            out.append(_VAE_RESIDUAL[seg])
        else:
            out.append(_VAE_RENAME.get(seg, seg))
    name = ".".join(out)
    if leaf == "gamma":
        return f"{name}.gamma", "gamma", stem[-1] == "norm"  # attention norms are 2D (C, 1, 1)
    if leaf == "kernel":
        return f"{name}.weight", "conv1x1" if stem[-1] in ("to_qkv", "proj") else "conv", False
    if leaf == "bias":
        return f"{name}.bias", "same", False
    raise ValueError(f"no reference name for VAE parameter {local!r}")


def _entry(part: str, local: str, shape: tuple[int, ...]) -> Entry:
    attr, prefix = PARTS[part]
    stacked, attn_norm = False, False
    if part == "dit":
        stacked = local.startswith("blocks/")
        name, kind = _dit_rule(local.removeprefix("blocks/"), len(shape) - stacked)
        template = ("blocks.{i}." if stacked else "") + name
    elif part == "text":
        stacked = local.startswith("blocks/")
        name, kind = _T5_BY_PATH[local.removeprefix("blocks/")] if stacked else (_T5_TOP[local], "same")
        template = ("blocks.{i}." if stacked else "") + name
    elif part == "image":
        stacked = local.startswith("transformer/")
        name, kind = _CLIP_BY_PATH[local.removeprefix("transformer/")] if stacked else _CLIP_TOP[local]
        template = ("transformer.{i}." if stacked else "") + name
    else:
        template, kind, attn_norm = _vae_rule(local)
    per = shape[1:] if stacked else shape
    sources = (
        tuple(prefix + template.format(i=i) for i in range(shape[0])) if stacked else (prefix + template,)
    )
    return Entry(f"{attr}/{local}", sources, kind, stacked, shape, _ref_shape(kind, per, attn_norm))


def _module_shapes(cfg: ModelConfig, part: str) -> dict[str, tuple[int, ...]]:
    build = {
        "dit": lambda: CausalWanDiT(cfg.dit, rngs=nnx.Rngs(0)),
        "text": lambda: UMT5Encoder(cfg.text, rngs=nnx.Rngs(0)),
        "image": lambda: CLIPVisionEncoder(cfg.image, rngs=nnx.Rngs(0)),
        "vae": lambda: WanVAE(cfg.vae, rngs=nnx.Rngs(0)),
    }[part]
    abstract = nnx.eval_shape(build)
    return {
        path_str(p): tuple(v.get_value().shape) for p, v in nnx.to_flat_state(nnx.state(abstract, nnx.Param))
    }


def reference_entries(cfg: ModelConfig, parts: Iterable[str] = ALL_PARTS) -> list[Entry]:
    """Every parameter of the selected parts with its reference source keys, in a stable order."""
    entries = []
    for part in parts:
        if part not in PARTS:
            raise ValueError(f"unknown part {part!r}; choose from {list(PARTS)}")
        entries += [_entry(part, local, shape) for local, shape in sorted(_module_shapes(cfg, part).items())]
    return entries


def unused_reference_shapes(cfg: ModelConfig, entries: Iterable[Entry]) -> dict[str, tuple[int, ...]]:
    """Reference tensors a real checkpoint holds that the JAX model drops: the last CLIP block (the
    reference runs all blocks but the last), CLIP's ``post_norm`` and logit scale. Used to write
    realistic test checkpoints; :func:`is_unused_reference_key` accepts them when converting."""
    prefix = PARTS["image"][1]
    out: dict[str, tuple[int, ...]] = {}
    for e in entries:
        if e.part == "image" and e.stacked:
            first = e.sources[0].removeprefix(prefix + "transformer.0.")
            for i in range(cfg.image.num_run_layers, cfg.image.num_layers):
                out[f"{prefix}transformer.{i}.{first}"] = e.ref_shape
    if any(e.part == "image" for e in entries):
        out[prefix + "post_norm.weight"] = (cfg.image.dim,)
        out[prefix + "post_norm.bias"] = (cfg.image.dim,)
        out["action_head.image_encoder.model.log_scale"] = ()
    return out


def is_unused_reference_key(key: str, cfg: ModelConfig) -> bool:
    if _IMAGE_UNUSED_OUTSIDE.match(key):
        return True
    prefix = PARTS["image"][1]
    if not key.startswith(prefix):
        return False
    local = key.removeprefix(prefix)
    if local.startswith(("post_norm.", "head")):
        return True
    m = re.match(r"transformer\.(\d+)\.", local)
    return bool(m) and cfg.image.num_run_layers <= int(m.group(1)) < cfg.image.num_layers


def part_of_reference_key(key: str) -> str | None:
    """Which part a (normalised, full) reference key belongs to, or None."""
    for part, (_, prefix) in PARTS.items():
        if key.startswith(prefix):
            return part
    if key.startswith("action_head.image_encoder."):
        return "image"
    return None


def reference_state_dict(flat: Mapping[str, np.ndarray], entries: Iterable[Entry]) -> dict[str, np.ndarray]:
    """Ours -> reference layout (the inverse converter): flat NNX params -> reference-named tensors."""
    out: dict[str, np.ndarray] = {}
    for e in entries:
        w = np.asarray(flat[e.path])
        if tuple(w.shape) != e.shape:
            raise ValueError(f"{e.path}: expected {e.shape}, got {tuple(w.shape)}")
        layers = list(w) if e.stacked else [w]
        for key, layer in zip(e.sources, layers, strict=True):
            out[key] = to_reference(e.kind, layer, e.ref_shape)
    return out
