"""Reference DreamZero checkpoint directory -> this policy's pretrained directory (``dreamzero-convert``).

Reads ``model.safetensors`` or a sharded ``*.safetensors.index.json`` (or, only through
``torch.load(weights_only=True)``, a ``.pt``/``.pth``/``.bin`` file), ``config.json`` and
``experiment_cfg/{metadata.json,conf.yaml}``; writes ``config.json`` (``DreamZeroJaxConfig`` with the
reference's run settings, see ``policy_settings``), ``model.safetensors`` (flat NNX paths), the LeRobot
processor files holding the normalisation statistics and ``conversion.json`` (provenance). The output
is staged and moved into place at the end (``output_dir``); tensors holding NaN/inf are refused.

Memory: the output file is planned from the headers alone, then written one output tensor at a time
(a stacked block tensor is filled layer by layer), in the stored dtype, so the peak is about one
output tensor plus one layer, whatever the checkpoint size. LoRA: ``merge`` (default) folds
``W + (alpha / r) * B @ A`` into the base weights, because inference has no adapter path and the
merged model is exact and costs nothing at run time; ``keep`` writes the base weights unmerged and the
adapters to ``adapter_model.safetensors`` (``<path>/lora_a`` (.., in, r), ``<path>/lora_b`` (.., r, out),
alpha and rank in the metadata) for further LoRA fine-tuning.
"""

from __future__ import annotations

import json
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
from tqdm import tqdm

from dreamzero_policy.convert import lora as lora_mod
from dreamzero_policy.convert.infer_config import infer_model_config
from dreamzero_policy.convert.reference_layout import (
    ALL_PARTS,
    Entry,
    is_unused_reference_key,
    part_of_reference_key,
    reference_entries,
    to_ours,
)
from dreamzero_policy.convert.source import CheckpointSource
from dreamzero_policy.convert.state_io import StateMismatchError
from dreamzero_policy.models.presets import ModelConfig
from dreamzero_policy.weights_io import MISSING_PARTS_KEY, WEIGHTS_NAME, StreamingWriter

ADAPTER_NAME = "adapter_model.safetensors"
_PART_ALIASES = {
    "dit": "dit",
    "vae": "vae",
    "text": "text",
    "text_encoder": "text",
    "image": "image",
    "image_encoder": "image",
}


@dataclass
class _Key:
    """A reference parameter as found in the checkpoint: its raw key(s) and LoRA factors, if any."""

    raw: str | None = None
    lora_a: str | None = None
    lora_b: str | None = None


@dataclass
class ConversionReport:
    preset: str | None
    parts: tuple[str, ...]
    converted: int  # output tensors written
    skipped: list[str] = field(default_factory=list)  # reference keys of parts left out, and unused keys
    lora: str | None = None  # None, "merge" or "keep"
    lora_scale: float | None = None
    warnings: list[str] = field(default_factory=list)  # reference settings the output could not match


def parse_parts(parts: str | Iterable[str]) -> tuple[str, ...]:
    items = [p.strip() for p in (parts.split(",") if isinstance(parts, str) else parts) if p.strip()]
    bad = [p for p in items if p not in _PART_ALIASES]
    if bad or not items:
        raise ValueError(f"unknown parts {bad or items}; choose from dit, vae, text, image")
    return tuple(p for p in ALL_PARTS if p in {_PART_ALIASES[i] for i in items})


def _index_keys(source: CheckpointSource) -> dict[str, _Key]:
    """Normalised full reference keys -> where they are. A bare DiT layout gets ``action_head.model.``."""
    normal = {raw: lora_mod.normalise_key(raw) for raw in source.keys()}
    bare = not any(k.startswith("action_head.") for k, _ in normal.values())
    out: dict[str, _Key] = {}
    for raw, (key, role) in normal.items():
        key = "action_head.model." + key if bare else key
        slot = out.setdefault(key, _Key())
        if role == "A":
            slot.lora_a = raw
        elif role == "B":
            slot.lora_b = raw
        else:
            slot.raw = raw
    return out


def _check(
    source: CheckpointSource,
    keys: Mapping[str, _Key],
    entries: Sequence[Entry],
    cfg: ModelConfig,
    parts: tuple[str, ...],
) -> list[str]:
    """One StateMismatchError naming every missing, unexpected and wrongly shaped tensor; returns the
    reference keys that are deliberately not converted (other parts, tensors the model never uses)."""
    expected = {src: (e.ref_shape, e.kind) for e in entries for src in e.sources}
    missing, unexpected, shapes, skipped = [], [], [], []
    for key, (ref_shape, kind) in expected.items():
        k = keys.get(key)
        if k is None or k.raw is None:
            missing.append(key)
        elif source.shape(k.raw) != ref_shape:
            shapes.append(f"{k.raw}: expected {ref_shape}, got {source.shape(k.raw)}")
        if k is not None and (k.lora_a or k.lora_b):
            if not (k.lora_a and k.lora_b) or kind != "linear":
                unexpected += [r for r in (k.lora_a, k.lora_b) if r]
            else:
                ra, rb = source.shape(k.lora_a), source.shape(k.lora_b)
                if len(ra) != 2 or len(rb) != 2 or ra[1] != ref_shape[1] or rb != (ref_shape[0], ra[0]):
                    shapes.append(f"{k.lora_a} {ra} / {k.lora_b} {rb} do not fit the base weight {ref_shape}")
    for key, k in keys.items():
        if key in expected:
            continue
        raws = [r for r in (k.raw, k.lora_a, k.lora_b) if r]
        part = part_of_reference_key(key)
        if is_unused_reference_key(key, cfg) or (part is not None and part not in parts):
            skipped += raws
        else:
            unexpected += raws
    problems = []
    if missing:
        problems.append(f"missing {len(missing)}: {sorted(missing)}")
    if unexpected:
        problems.append(f"unexpected {len(unexpected)}: {sorted(unexpected)}")
    if shapes:
        problems.append(f"shape mismatch {len(shapes)}: {sorted(shapes)}")
    if problems:
        hint = " (convert fewer parts with --parts if the checkpoint lacks some)" if missing else ""
        raise StateMismatchError(
            f"{source.name} does not match the {cfg.name} model{hint}; " + "; ".join(problems)
        )
    return skipped


def _finite(name: str, w: np.ndarray, block: int = 1 << 24) -> np.ndarray:
    """``w`` if it holds no NaN/inf, checked in blocks so the mask stays small for huge tensors."""
    if w.dtype.kind in "biu":
        return w
    flat = w.reshape(-1)
    bad = sum(int(np.count_nonzero(~np.isfinite(flat[i : i + block]))) for i in range(0, flat.size, block))
    if bad:
        raise ValueError(
            f"{name}: {bad} of {flat.size} values are NaN or inf; refusing to convert a broken checkpoint "
            "(--allow_nonfinite=true converts it anyway)"
        )
    return w


def _output_dtype(source: CheckpointSource, keys: Mapping[str, _Key], e: Entry) -> np.dtype:
    dtypes = {source.dtype(keys[s].raw) for s in e.sources}
    if len(dtypes) != 1:
        raise ValueError(f"{e.path}: its layers are stored in different dtypes {sorted(map(str, dtypes))}")
    return dtypes.pop()


def convert_weights(
    source: CheckpointSource,
    out_dir: str | Path,
    cfg: ModelConfig,
    parts: Iterable[str] = ALL_PARTS,
    *,
    lora: str = "merge",
    lora_alpha: float | None = None,
    config_json: Mapping | None = None,
    progress: bool = True,
    allow_nonfinite: bool = False,
) -> ConversionReport:
    """Stream the selected parts of ``source`` into ``out_dir/model.safetensors`` (+ adapters for keep).

    A tensor holding NaN or inf raises ValueError naming it unless ``allow_nonfinite``: such weights
    only ever produce NaN actions, and a robot must not receive a policy that looks loaded but is not.
    """
    if lora not in ("merge", "keep"):
        raise ValueError(f"lora must be 'merge' or 'keep', got {lora!r}")
    parts = parse_parts(parts)
    entries = reference_entries(cfg, parts)
    keys = _index_keys(source)
    skipped = _check(source, keys, entries, cfg, parts)
    adapted = {s: keys[s] for e in entries for s in e.sources if keys[s].lora_a}
    scale = None
    if adapted:
        ranks = {s: source.shape(k.lora_a)[0] for s, k in adapted.items()}
        scale = lora_mod.lora_scale(ranks, config_json, lora_alpha)
    out_dir = Path(out_dir)
    left_out = [p for p in ALL_PARTS if p not in parts]
    meta = {MISSING_PARTS_KEY: ",".join(left_out)} if left_out else None
    plan = [(e.path, _output_dtype(source, keys, e), e.shape) for e in entries]
    total = sum(int(np.prod(s, dtype=np.int64)) * np.dtype(d).itemsize for _, d, s in plan)
    read = source.read if allow_nonfinite else lambda raw: _finite(raw, source.read(raw))
    with (
        StreamingWriter(out_dir / WEIGHTS_NAME, plan, meta) as writer,
        tqdm(total=total, unit="B", unit_scale=True, desc="convert", disable=not progress) as bar,
    ):
        for e, (_, dtype, shape) in zip(entries, plan, strict=True):
            out = np.empty(shape, dtype)
            for i, src in enumerate(e.sources):
                k = keys[src]
                w = read(k.raw)
                if k.lora_a and lora == "merge":
                    w = lora_mod.merge(w, read(k.lora_a), read(k.lora_b), scale.scale)
                    w = w if allow_nonfinite else _finite(f"{k.raw} merged with its LoRA", w)
                layer = to_ours(e.kind, w)
                if e.stacked:
                    out[i] = layer
                else:
                    out = layer
                del w, layer
            writer.write(e.path, out)
            bar.update(out.nbytes)
            del out
    if adapted and lora == "keep":
        _write_adapters(read, keys, entries, out_dir / ADAPTER_NAME, scale)
    return ConversionReport(
        preset=cfg.name,
        parts=parts,
        converted=len(plan),
        skipped=sorted(skipped),
        lora=lora if adapted else None,
        lora_scale=scale.scale if scale else None,
    )


def _write_adapters(
    read: Callable[[str], np.ndarray],
    keys: Mapping[str, _Key],
    entries: Sequence[Entry],
    path: Path,
    scale: lora_mod.LoraScale,
) -> None:
    """Adapters in our layout: kernel (in, out) gets ``scale * lora_a @ lora_b``; layers without one
    get zeros (no change), so a stacked entry keeps one tensor per parameter."""
    flat: dict[str, np.ndarray] = {}
    for e in entries:
        if not any(keys[s].lora_a for s in e.sources):
            continue
        a_list, b_list = [], []
        for s in e.sources:
            k = keys[s]
            if k.lora_a:
                a_list.append(np.ascontiguousarray(read(k.lora_a).T))
                b_list.append(np.ascontiguousarray(read(k.lora_b).T))
            else:
                a_list.append(None)
                b_list.append(None)
        like_a = next(a for a in a_list if a is not None)
        like_b = next(b for b in b_list if b is not None)
        a_list = [np.zeros_like(like_a) if a is None else a for a in a_list]
        b_list = [np.zeros_like(like_b) if b is None else b for b in b_list]
        flat[e.path + "/lora_a"] = np.stack(a_list) if e.stacked else a_list[0]
        flat[e.path + "/lora_b"] = np.stack(b_list) if e.stacked else b_list[0]
    from dreamzero_policy.weights_io import save_flat

    save_flat(
        flat, path, {"lora_alpha": str(scale.alpha), "lora_rank": str(scale.rank), "scale": str(scale.scale)}
    )


def _read_config_json(src_dir: Path) -> dict | None:
    path = src_dir / "config.json"
    if not path.is_file():
        return None
    try:
        config = json.loads(path.read_text())
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as e:
        raise ValueError(f"cannot read {path}: {e}") from e
    if not isinstance(config, dict):
        raise ValueError(f"{path}: expected a JSON object (the reference model config), got {type(config).__name__}")
    return config


def convert_checkpoint(
    src: str | Path,
    out_dir: str | Path,
    *,
    parts: str | Iterable[str] = ALL_PARTS,
    lora: str = "merge",
    lora_alpha: float | None = None,
    preset: str | None = None,
    embodiment: str | None = None,
    require_stats: bool = True,
    tokenizer_dir: str | None = None,
    allow_nonfinite: bool = False,
    progress: bool = True,
) -> ConversionReport:
    """Reference checkpoint directory (or file) -> a pretrained directory ``DreamZeroJaxPolicy`` loads.

    The model config is inferred from the DiT shapes (cross-checked with ``config.json``) unless
    ``preset`` names it; ``experiment_cfg/metadata.json`` supplies the normalisation statistics and the
    state/action/camera features (``require_stats=False`` converts without them); the policy's run
    settings (cameras, view size, tiling, tokenizer, dtype, sampling) are the reference's
    (``policy_settings``). ``out_dir`` must be new, empty or an earlier conversion output, outside the
    checkpoint's directory; it is written all-or-nothing (``output_dir``).
    """
    from lerobot.configs.types import FeatureType, PolicyFeature

    from dreamzero_policy.configuration_dreamzero import DreamZeroJaxConfig
    from dreamzero_policy.convert.normalization_stats import read_reference_stats
    from dreamzero_policy.convert.output_dir import check_output_dir, staged_output
    from dreamzero_policy.convert.policy_settings import policy_settings, read_conf_yaml
    from dreamzero_policy.models.presets import get_preset
    from dreamzero_policy.processor_dreamzero import make_dreamzero_jax_pre_post_processors

    src, out_dir = Path(src), Path(out_dir)
    if not src.exists():
        raise FileNotFoundError(f"checkpoint source {src} does not exist")
    src_dir = src if src.is_dir() else src.parent
    check_output_dir(src_dir, out_dir)  # before any reading: fail fast
    config_json = _read_config_json(src_dir)
    conf = read_conf_yaml(src_dir / "experiment_cfg" / "conf.yaml")
    meta_path = src_dir / "experiment_cfg" / "metadata.json"
    ref_stats = None
    if meta_path.is_file():
        ref_stats = read_reference_stats(meta_path, embodiment)
    elif require_stats:
        raise FileNotFoundError(
            f"{meta_path} not found: the policy needs normalisation statistics (--no_stats=true to skip)"
        )
    marker = {"source": str(src.resolve()), "parts": list(parse_parts(parts)), "lora": lora}
    with CheckpointSource(src) as source, staged_output(src_dir, out_dir, marker) as tmp:
        index = _index_keys(source)
        shapes = {k: source.shape(r.raw) for k, r in index.items() if r.raw}
        if any(k.startswith("action_head.model.") for k in shapes):
            preset_name, cfg = infer_model_config(shapes, config_json, preset)
        elif preset is None:
            raise ValueError(f"{source.name} has no DiT tensors to infer the model from: pass --preset")
        else:
            preset_name, cfg = preset, get_preset(preset)
        report = convert_weights(
            source,
            tmp,
            cfg,
            parts,
            lora=lora,
            lora_alpha=lora_alpha,
            config_json=config_json,
            progress=progress,
            allow_nonfinite=allow_nonfinite,
        )
        dit = [source.dtype(r.raw) for k, r in index.items() if r.raw and k.startswith("action_head.model.")]
        settings = policy_settings(
            preset_name,
            cfg,
            cameras=ref_stats.cameras if ref_stats else {},
            embodiment=ref_stats.embodiment if ref_stats else "",
            config_json=config_json,
            conf=conf,
            dit_dtypes=[d for d in dit if d.kind not in "biu"],
            src_dir=src_dir,
            tokenizer_dir=tokenizer_dir,
        )
        report.warnings = settings.warnings
        fields: dict = {"preset": preset_name, **settings.fields}
        if cfg.dit.num_embodiments != get_preset(preset_name).dit.num_embodiments:
            fields["num_embodiments"] = cfg.dit.num_embodiments
        if ref_stats is not None:
            n_state = len(ref_stats.stats["observation.state"]["mean"])
            n_action = len(ref_stats.stats["action"]["mean"])
            fields["input_features"] = {
                **{k: PolicyFeature(type=FeatureType.VISUAL, shape=s) for k, s in ref_stats.cameras.items()},
                "observation.state": PolicyFeature(type=FeatureType.STATE, shape=(n_state,)),
            }
            fields["output_features"] = {"action": PolicyFeature(type=FeatureType.ACTION, shape=(n_action,))}
            fields["relative_action_dims"] = [d for d in ref_stats.relative_action_dims if d < n_state]
        config = DreamZeroJaxConfig(**fields)
        config._save_pretrained(tmp)
        pre, post = make_dreamzero_jax_pre_post_processors(config, ref_stats.stats if ref_stats else None)
        pre.save_pretrained(tmp)
        post.save_pretrained(tmp)
    return report


def main(argv: Sequence[str] | None = None) -> None:
    """``dreamzero-convert``: see ``dreamzero_policy.convert.cli``."""
    from dreamzero_policy.convert.cli import main as cli_main

    cli_main(argv)


def write_reference_checkpoint(
    flat: Mapping[str, np.ndarray], cfg: ModelConfig, path: str | Path, parts: Iterable[str] = ALL_PARTS
) -> dict[str, np.ndarray]:
    """The inverse converter on disk: flat NNX params -> one reference-layout safetensors file.

    Returns the reference state dict it wrote (tensors the JAX model never uses are not written)."""
    from dreamzero_policy.convert.reference_layout import reference_state_dict
    from dreamzero_policy.weights_io import save_flat

    sd = reference_state_dict(flat, reference_entries(cfg, parse_parts(parts)))
    save_flat(sd, path)
    return sd


if __name__ == "__main__":
    main()
