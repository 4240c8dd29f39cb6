"""The policy settings a converted reference checkpoint runs with, as the reference runs it.

``DreamZeroJaxConfig``'s defaults are the toy's (32x32 views side by side, fp32, byte tokenizer); a real
checkpoint needs what it was trained and evaluated with:

* cameras and tiling: DROID embodiments tile the wrist view stretched across the top and the two
  exterior views below (``_prepare_video`` of the reference's DreamZero transform). Cameras are
  matched by name: the one whose name contains ``wrist`` goes on top, the others below in name order
  (``exterior_image_1_left`` left, ``exterior_image_2_left`` right, as the reference stacks them).
  Other multi-camera embodiments use a 2x2 grid in the reference that this policy does not implement:
  they get side-by-side views and a warning.
* view size, first found of: ``target_video_height/width`` in config.json (the action head resizes the
  whole tiled frame to it: the 5B model), ``image_resolution_height/width`` in experiment_cfg/conf.yaml
  (each view is resized to it), the reference's settings for the preset (14B: 176x320 per view; 5B:
  a 160x320 frame), the cameras' own resolution from metadata.json when they all agree.
* tokenizer: ``--tokenizer_dir``, else one shipped in the checkpoint directory (itself, ``tokenizer/``
  or ``umt5-xxl/``), else a local ``tokenizer_path`` of conf.yaml.
* dtype: bfloat16 when the checkpoint stores its DiT in bf16 (the reference runs bf16), else fp32.
* sampling: 16 UniPC steps with the DiT on ``REFERENCE_DIT_STEPS``, shift 5, CFG 5, context reset
  after 4 chunks. Actions executed per plan: ``4 * frames_per_block`` (8 of 24 for the real presets,
  as the reference's sim eval ``open_loop_horizon=8``): each re-plan then receives exactly the frames of
  one latent block (one frame per executed action), so none is dropped or repeated.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import yaml

from dreamzero_policy.configuration_dreamzero import REFERENCE_DIT_STEPS
from dreamzero_policy.convert.lora import find_config_value
from dreamzero_policy.models.presets import ModelConfig

REFERENCE_VIEW_SIZE = {"wan21_14b": (176, 320)}  # per view: image_resolution_height/width of its data configs
REFERENCE_FRAME_SIZE = {"wan22_5b": (160, 320)}  # whole tiled frame: target_video_height/width of the 5B head
REFERENCE_SAMPLING = {
    "num_inference_steps": 16,
    "dit_steps": list(REFERENCE_DIT_STEPS),
    "sigma_shift": 5.0,
    "cfg_scale": 5.0,
    "max_chunks_before_reset": 4,
}
TOKENIZER_FILES = ("tokenizer.json", "tokenizer_config.json", "spiece.model")
TOKENIZER_SUBDIRS = (".", "tokenizer", "umt5-xxl")


@dataclass
class PolicySettings:
    fields: dict[str, object] = field(default_factory=dict)  # DreamZeroJaxConfig fields
    warnings: list[str] = field(default_factory=list)  # settings the reference uses that could not be matched


def read_conf_yaml(path: Path) -> Mapping | None:
    """experiment_cfg/conf.yaml (the reference's Hydra config), or None when absent."""
    if not path.is_file():
        return None
    try:
        conf = yaml.safe_load(path.read_text())
    except (OSError, UnicodeDecodeError, yaml.YAMLError) as e:
        raise ValueError(f"cannot read {path}: {e}") from e
    if not isinstance(conf, Mapping):
        raise ValueError(f"{path}: expected a YAML mapping, got {type(conf).__name__}")
    return conf


def _int_pair(tree: object, h_name: str, w_name: str) -> tuple[int, int] | None:
    h, w = find_config_value(tree, h_name), find_config_value(tree, w_name)
    ok = all(isinstance(v, int) and not isinstance(v, bool) and v > 0 for v in (h, w))
    return (h, w) if ok else None  # interpolations ("${...}") and nulls do not count


def camera_layout(cameras: Sequence[str], embodiment: str, warnings: list[str]) -> tuple[list[str] | None, str]:
    """(camera order or None for sorted, tiling) for the policy's image keys."""
    name = {k: k.rsplit(".", 1)[-1] for k in cameras}
    wrist = [k for k in cameras if "wrist" in name[k].lower()]
    others = sorted((k for k in cameras if k not in wrist), key=lambda k: name[k])
    if len(cameras) <= 1:
        return None, "row"
    if "droid" in embodiment.lower() and len(wrist) == 1 and len(others) == 2:
        return [wrist[0], *others], "droid"
    warnings.append(
        f"cameras {sorted(name.values())} of embodiment {embodiment!r}: the reference tiles these views "
        "differently (DROID layout needs one wrist and two other cameras; other embodiments use a 2x2 grid "
        "this policy does not implement); they are placed side by side ('row')"
    )
    return None, "row"


def _grid(tiling: str, n: int) -> tuple[int, int]:
    """(rows, columns) of views in the tiled frame."""
    if n <= 1 or tiling == "row":
        return 1, max(n, 1)
    return 2, n - 1


def view_size(
    preset: str,
    grid: tuple[int, int],
    config_json: Mapping | None,
    conf: Mapping | None,
    camera_shapes: Sequence[tuple[int, int, int]],
    warnings: list[str],
) -> tuple[int, int] | None:
    frame = _int_pair(config_json or {}, "target_video_height", "target_video_width")
    view = _int_pair(conf or {}, "image_resolution_height", "image_resolution_width")
    if frame is None and view is None:
        frame, view = REFERENCE_FRAME_SIZE.get(preset), REFERENCE_VIEW_SIZE.get(preset)
    if frame is not None:
        (fh, fw), (rows, cols) = frame, grid
        if fh % rows or fw % cols:
            warnings.append(f"frame {fh}x{fw} does not split into {rows}x{cols} views; views rounded down")
        return fh // rows, fw // cols
    if view is not None:
        return view
    sizes = {tuple(s[1:]) for s in camera_shapes}
    if len(sizes) == 1:
        return sizes.pop()  # type: ignore[return-value]
    if camera_shapes:
        warnings.append("no view size in config.json, conf.yaml or the cameras: the policy's default is kept")
    return None


def find_tokenizer(src_dir: Path, explicit: str | None, conf: Mapping | None) -> Path | None:
    def is_tokenizer(d: Path) -> bool:
        return d.is_dir() and any((d / f).is_file() for f in TOKENIZER_FILES)

    if explicit:
        d = Path(explicit).expanduser()
        if not is_tokenizer(d):
            raise ValueError(
                f"--tokenizer_dir={explicit} is not a tokenizer directory (it needs one of {list(TOKENIZER_FILES)})"
            )
        return d.resolve()
    candidates = [src_dir / s for s in TOKENIZER_SUBDIRS]
    conf_path = find_config_value(conf or {}, "tokenizer_path")
    if isinstance(conf_path, str) and Path(conf_path).is_absolute():
        candidates.append(Path(conf_path))  # hub names ("google/umt5-xxl") are never fetched
    return next((d.resolve() for d in candidates if is_tokenizer(d)), None)


def policy_settings(
    preset: str,
    cfg: ModelConfig,
    *,
    cameras: Mapping[str, tuple[int, int, int]],
    embodiment: str,
    config_json: Mapping | None,
    conf: Mapping | None,
    dit_dtypes: Sequence[np.dtype],
    src_dir: Path,
    tokenizer_dir: str | None,
) -> PolicySettings:
    out = PolicySettings(fields=dict(REFERENCE_SAMPLING))
    dit = cfg.dit
    out.fields["n_action_steps"] = min(4 * dit.frames_per_block, dit.actions_per_block)
    order, tiling = camera_layout(list(cameras), embodiment, out.warnings)
    out.fields["tiling"] = tiling
    if order is not None:
        out.fields["cameras"] = order
    size = view_size(preset, _grid(tiling, len(cameras)), config_json, conf, list(cameras.values()), out.warnings)
    if size is not None:
        out.fields["view_height"], out.fields["view_width"] = size
    bf16 = bool(dit_dtypes) and all(np.dtype(d).name == "bfloat16" for d in dit_dtypes)
    out.fields["dtype"] = "bfloat16" if bf16 else "float32"
    tok = find_tokenizer(src_dir, tokenizer_dir, conf)
    if tok is not None:
        out.fields["tokenizer_dir"] = str(tok)
    elif cfg.tokenizer != "byte":
        out.warnings.append(
            f"no tokenizer found: the {preset} model needs the {cfg.tokenizer} tokenizer; convert with "
            "--tokenizer_dir=DIR or load the policy with --policy.tokenizer_dir=DIR"
        )
    return out
