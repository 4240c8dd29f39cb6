"""Which roboarena camera feeds which policy camera, by name.

Roboarena clients send ``observation/exterior_image_0_left``, ``observation/exterior_image_1_left`` and
``observation/wrist_image_left``. A policy camera is ``observation.images.<name>``; the default map
matches names, never key order:

* the one policy camera whose name contains ``wrist`` <- ``observation/wrist_image_left``;
* the policy cameras whose names contain ``exterior``, ordered by the first number in the name (then
  by name) <- ``exterior_image_0_left``, ``exterior_image_1_left`` in that order. DROID training data
  numbers its exterior cameras 1 and 2 (``exterior_image_1_left``, ``exterior_image_2_left``) where
  roboarena numbers them 0 and 1; the reference server maps them in this order too.

Any other camera name, a second wrist camera or a third exterior camera cannot be matched by name: the
server then refuses to start and asks for an explicit map (``--camera_map``).
"""

from __future__ import annotations

import json
import re
from collections.abc import Mapping, Sequence

from dreamzero_policy.serving import protocol as P

IMAGE_PREFIX = "observation.images."
ROBOARENA_EXTERIORS = (P.EXTERIOR_0, P.EXTERIOR_1)


def _name(key: str) -> str:
    return key.removeprefix(IMAGE_PREFIX).lower()


def _order(key: str) -> tuple[int, str]:
    m = re.search(r"\d+", _name(key))
    return (int(m.group()) if m else -1, _name(key))


def _example(cameras: Sequence[str]) -> str:
    return json.dumps(dict(zip(P.IMAGE_KEYS, cameras, strict=False)))


def default_camera_map(cameras: Sequence[str]) -> dict[str, str]:
    """{roboarena key: policy camera key} matched by name; ValueError when a camera has no match."""
    wrist = [c for c in cameras if "wrist" in _name(c)]
    exterior = sorted((c for c in cameras if "exterior" in _name(c) and c not in wrist), key=_order)
    other = [c for c in cameras if c not in wrist and c not in exterior]
    if other or len(wrist) > 1 or len(exterior) > len(ROBOARENA_EXTERIORS) or not cameras:
        raise ValueError(
            f"cannot match the policy cameras {list(cameras)} to the roboarena cameras {list(P.IMAGE_KEYS)} "
            "by name (one camera named '*wrist*' and up to two named '*exterior*<n>*'): give an explicit "
            f"camera map, e.g. --camera_map='{_example(cameras)}'"
        )
    out = dict(zip(ROBOARENA_EXTERIORS, exterior, strict=False))
    if wrist:
        out[P.WRIST] = wrist[0]
    return out


def resolve_camera_map(explicit: Mapping[str, str] | None, cameras: Sequence[str]) -> dict[str, str]:
    """The map to serve with: ``explicit`` (values may omit ``observation.images.``) checked to cover each
    policy camera exactly once, or the default by name."""
    if explicit is None:
        return default_camera_map(cameras)
    if not isinstance(explicit, Mapping) or not all(
        isinstance(k, str) and k and isinstance(v, str) and v for k, v in explicit.items()
    ):
        raise ValueError(f"camera map must be {{request key: policy camera}} strings, got {explicit!r}")
    out = {k: v if v.startswith("observation.") else IMAGE_PREFIX + v for k, v in explicit.items()}
    values = list(out.values())
    if sorted(values) != sorted(cameras):
        raise ValueError(
            f"camera map {out} must name each policy camera exactly once; the policy has {list(cameras)}"
        )
    return out
