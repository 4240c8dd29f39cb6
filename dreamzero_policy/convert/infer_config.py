"""The model config of a reference checkpoint, read from its tensor shapes and its config.json.

Shapes give dim, ffn, layers, in/out channels, patch, freq/text/image dims, the action/state register
sizes and the number of embodiments. The number of heads and the block sizes (frames/actions/states
per block) are not in any shape: they come from config.json when present, else from the preset. The
result must match one named preset (the policy's config stores a preset name), up to the number of
embodiments, which the policy config can override.
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from dataclasses import fields

from dreamzero_policy.convert.lora import find_config_value
from dreamzero_policy.models.presets import PRESETS, ModelConfig, get_preset

_P = "action_head.model."

# reference config name (diffusion_model_cfg / action head) -> DiTConfig field
_CONFIG_NAMES = {
    "dim": "dim",
    "ffn_dim": "ffn_dim",
    "num_heads": "num_heads",
    "num_layers": "num_layers",
    "in_dim": "in_dim",
    "out_dim": "out_dim",
    "freq_dim": "freq_dim",
    "text_dim": "text_dim",
    "num_frame_per_block": "frames_per_block",
    "num_action_per_block": "actions_per_block",
    "num_state_per_block": "states_per_block",
    "max_action_dim": "action_dim",
    "max_state_dim": "state_dim",
}


def dit_fields_from_shapes(shapes: Mapping[str, tuple[int, ...]]) -> dict[str, object]:
    """DiTConfig fields readable from the DiT tensor shapes (full ``action_head.model.`` keys)."""

    def shape(name: str) -> tuple[int, ...]:
        try:
            return tuple(shapes[_P + name])
        except KeyError:
            raise ValueError(f"cannot infer the DiT config: the checkpoint has no {_P + name}") from None

    pe = shape("patch_embedding.weight")
    if len(pe) != 5:
        raise ValueError(f"{_P}patch_embedding.weight should be a 5D Conv3d weight, got {pe}")
    patch = tuple(pe[2:])
    head_out = shape("head.head.weight")[0]
    npatch = patch[0] * patch[1] * patch[2]
    if head_out % npatch:
        raise ValueError(f"head.head.weight rows {head_out} are not a multiple of the patch volume {npatch}")
    layers = {int(m.group(1)) for k in shapes if (m := re.match(re.escape(_P) + r"blocks\.(\d+)\.", k))}
    if not layers or layers != set(range(max(layers) + 1)):
        raise ValueError(f"DiT block indices are not 0..N-1: {sorted(layers)[:8]}...")
    s1 = shape("state_encoder.layer1.W")
    out: dict[str, object] = {
        "dim": pe[0],
        "in_dim": pe[1],
        "patch_size": patch,
        "out_dim": head_out // npatch,
        "ffn_dim": shape("blocks.0.ffn.0.weight")[0],
        "num_layers": len(layers),
        "freq_dim": shape("time_embedding.0.weight")[1],
        "text_dim": shape("text_embedding.0.weight")[1],
        "image_dim": shape("img_emb.proj.1.weight")[1] if _P + "img_emb.proj.1.weight" in shapes else 0,
        "num_embodiments": s1[0],
        "state_dim": s1[1],
        "register_hidden": s1[2],
        "action_dim": shape("action_encoder.W1.W")[1],
    }
    return out


def dit_fields_from_config_json(config_json: Mapping | None) -> dict[str, object]:
    """DiTConfig fields stated in a reference config.json (nested ``diffusion_model_cfg`` first)."""
    if not config_json:
        return {}
    dmc = find_config_value(config_json, "diffusion_model_cfg")
    out: dict[str, object] = {}
    for ref, ours in _CONFIG_NAMES.items():
        v = dmc.get(ref) if isinstance(dmc, Mapping) and ref in dmc else find_config_value(config_json, ref)
        if isinstance(v, int | float) and not isinstance(v, bool):
            out[ours] = int(v)
    return out


def infer_model_config(
    shapes: Mapping[str, tuple[int, ...]], config_json: Mapping | None = None, preset: str | None = None
) -> tuple[str, ModelConfig]:
    """(preset name, ModelConfig with the checkpoint's number of embodiments) for a DiT checkpoint.

    A disagreement between shapes and config.json, or a checkpoint that matches no preset, raises
    ValueError naming every differing field.
    """
    from_shapes = dit_fields_from_shapes(shapes)
    from_json = dit_fields_from_config_json(config_json)
    clash = {k: (from_shapes[k], v) for k, v in from_json.items() if k in from_shapes and from_shapes[k] != v}
    if clash:
        detail = ", ".join(f"{k}: tensors {a} vs config.json {b}" for k, (a, b) in sorted(clash.items()))
        raise ValueError(f"checkpoint tensors disagree with its config.json: {detail}")
    wanted = {**from_json, **from_shapes}
    wanted.pop("num_embodiments")
    candidates = [preset] if preset else list(PRESETS)
    diffs: dict[str, list[str]] = {}
    for name in candidates:
        dit = get_preset(name).dit
        names = {f.name for f in fields(dit)}
        diff = [
            f"{k}={v} (preset {getattr(dit, k)})"
            for k, v in wanted.items()
            if k in names and getattr(dit, k) != v
        ]
        if not diff:
            return name, get_preset(name, num_embodiments=int(from_shapes["num_embodiments"]))
        diffs[name] = diff
    detail = "; ".join(f"{n}: {', '.join(d)}" for n, d in diffs.items())
    raise ValueError(f"the checkpoint's DiT matches no preset ({detail})")
