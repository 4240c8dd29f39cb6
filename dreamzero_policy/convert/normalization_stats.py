"""Reference ``experiment_cfg/metadata.json`` -> LeRobot dataset statistics and policy features.

The reference trainer dumps ``{embodiment_tag: DatasetMetadata}`` where ``statistics.state`` and
``statistics.action`` map each sub-key (``joint_position``, ``gripper_position``, ...) to
``{max, min, mean, std, q01, q99}`` and ``modalities`` gives each sub-key's shape (and the cameras'
``resolution`` as (width, height)). The policy sees one concatenated ``observation.state`` and one
``action`` vector, so the sub-keys are concatenated in the file's order (the order the reference
concatenates them in when it builds the state/action tensors).
"""

from __future__ import annotations

import json
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path

import numpy as np

STAT_NAMES = ("mean", "std", "min", "max", "q01", "q99")


@dataclass(frozen=True)
class ReferenceStats:
    embodiment: str
    stats: dict[
        str, dict[str, np.ndarray]
    ]  # LeRobot style: {"observation.state": {"q01": ...}, "action": ...}
    cameras: dict[str, tuple[int, int, int]]  # "observation.images.<name>" -> (C, H, W)
    relative_action_dims: list[int]  # action dims the reference stores relative to the state


def _concat(path: Path, group: str, per_key: Mapping[str, Mapping]) -> dict[str, np.ndarray]:
    if not per_key:
        raise ValueError(f"{path}: statistics.{group} is empty")
    out = {}
    for stat in STAT_NAMES:
        try:
            parts = [np.atleast_1d(np.asarray(v[stat], np.float32)) for v in per_key.values()]
        except KeyError:
            missing = [k for k, v in per_key.items() if stat not in v]
            raise ValueError(f"{path}: statistics.{group} {missing} have no {stat!r}") from None
        except (TypeError, ValueError) as e:
            raise ValueError(f"{path}: statistics.{group} {stat!r} are not numbers ({e})") from None
        if any(x.ndim != 1 for x in parts):  # per-horizon tables (relative_action_per_horizon)
            raise ValueError(f"{path}: statistics.{group} {stat!r} must be one vector per key, got "
                             f"shapes {[x.shape for x in parts]} (per-horizon statistics are not supported)")
        out[stat] = np.concatenate(parts)
        if not np.isfinite(out[stat]).all():
            raise ValueError(f"{path}: statistics.{group} {stat!r} hold NaN or inf")
    return out


def read_reference_stats(path: str | Path, embodiment: str | None = None) -> ReferenceStats:
    path = Path(path)
    try:
        meta = json.loads(path.read_text())
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as e:
        raise ValueError(f"cannot read normalisation statistics {path}: {e}") from e
    if not isinstance(meta, dict) or not meta:
        raise ValueError(f"{path}: expected {{embodiment_tag: metadata}}")
    if embodiment is None:
        if len(meta) != 1:
            raise ValueError(f"{path} holds several embodiments {sorted(meta)}: choose one (--embodiment)")
        embodiment = next(iter(meta))
    if embodiment not in meta:
        raise ValueError(f"{path}: no embodiment {embodiment!r}; have {sorted(meta)}")
    entry = meta[embodiment]
    try:
        statistics, modalities = entry["statistics"], entry.get("modalities") or {}
        state, action = statistics["state"], statistics["action"]
        if not all(isinstance(x, dict) for x in (modalities, state, action)):
            raise TypeError
    except (KeyError, TypeError, AttributeError):
        raise ValueError(f"{path}: {embodiment!r} has no statistics.state / statistics.action maps") from None
    if not all(isinstance(v, dict) for v in (*state.values(), *action.values())):
        raise ValueError(f"{path}: every statistics.state / statistics.action entry must be a map of stats")
    stats = {"observation.state": _concat(path, "state", state), "action": _concat(path, "action", action)}

    cameras = {}
    try:
        for name, video in (modalities.get("video") or {}).items():
            w, h = video["resolution"]
            shape = (int(video.get("channels", 3)), int(h), int(w))
            if min(shape) < 1:
                raise ValueError(f"non-positive size {shape}")
            cameras[f"observation.images.{name}"] = shape
    except (KeyError, TypeError, ValueError, AttributeError) as e:
        raise ValueError(f"{path}: modalities.video must map each camera to {{resolution: [w, h]}} ({e})") from None

    relative, offset = [], 0
    action_meta = modalities.get("action") or {}
    for key, st in action.items():
        n = len(np.atleast_1d(st["mean"]))
        info = action_meta.get(key) if isinstance(action_meta, dict) else None
        if isinstance(info, dict) and info.get("absolute") is False:
            relative += list(range(offset, offset + n))
        offset += n
    return ReferenceStats(embodiment, stats, cameras, relative)
