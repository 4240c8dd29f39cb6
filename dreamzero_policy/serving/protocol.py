"""The DreamZero / roboarena websocket protocol: wire encoding, message kinds, observation keys.

Wire format (what ``eval_utils/policy_server.py`` and ``policy_client.py`` of the reference speak, via
``openpi_client.msgpack_numpy``): every binary frame is one msgpack map; numpy arrays travel as
``{"__ndarray__": True, "data": bytes, "dtype": str, "shape": list}`` and numpy scalars as
``{"__npgeneric__": True, "data": item, "dtype": str}``. Arrays packed by the ``msgpack-numpy`` package
(``{"nd": True, "type", "kind", "shape", "data"}``) are accepted too.

Exchange: on connect the server sends its metadata (a map). Requests are maps with ``"endpoint"`` in
``infer`` / ``reset`` / ``health``; ``infer`` answers a binary frame with the (N, 8) action chunk,
``reset`` the text frame ``"reset successful"`` (as the reference), ``health`` a binary status map.
A failure answers a TEXT frame starting with ``ERROR_PREFIX``; reference clients raise on any text
reply to ``infer``. Unlike the reference server, ours keeps the connection open after an error.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass
from typing import Any

import msgpack
import numpy as np

ENDPOINTS = ("infer", "reset", "health")
RESET_REPLY = "reset successful"
ERROR_PREFIX = "error: "

EXTERIOR_0 = "observation/exterior_image_0_left"
EXTERIOR_1 = "observation/exterior_image_1_left"
WRIST = "observation/wrist_image_left"
JOINT_POSITION = "observation/joint_position"
GRIPPER_POSITION = "observation/gripper_position"
PROMPT = "prompt"
SESSION_ID = "session_id"
IMAGE_KEYS = (EXTERIOR_0, EXTERIOR_1, WRIST)
JOINT_DIM, GRIPPER_DIM = 7, 1


class ProtocolError(ValueError):
    """A request that does not follow the protocol (bad encoding, endpoint, key, shape or dtype)."""


@dataclass(frozen=True)
class ServerMetadata:
    """Sent to each client on connect; the field names are the reference ``PolicyServerConfig``'s so its
    clients configure themselves (resolution, cameras, session id) from it."""

    image_resolution: tuple[int, int] | None = (180, 320)
    needs_wrist_camera: bool = True
    n_external_cameras: int = 2
    needs_stereo_camera: bool = False
    needs_session_id: bool = True
    action_space: str = "joint_position"

    def to_dict(self) -> dict[str, Any]:
        d = asdict(self)
        d["image_resolution"] = list(self.image_resolution) if self.image_resolution else None
        return d


def _encode(obj: Any) -> Any:
    if isinstance(obj, np.ndarray):
        if obj.dtype.kind in "VOc":
            raise ProtocolError(f"cannot send arrays of dtype {obj.dtype}")
        return {
            b"__ndarray__": True,
            b"data": np.ascontiguousarray(obj).tobytes(),
            b"dtype": obj.dtype.str,
            b"shape": list(obj.shape),
        }
    if isinstance(obj, np.generic):
        return {b"__npgeneric__": True, b"data": obj.item(), b"dtype": obj.dtype.str}
    raise TypeError(f"cannot msgpack-encode {type(obj).__name__}")


def _decode(obj: dict) -> Any:
    if b"__ndarray__" in obj or "__ndarray__" in obj:
        g = lambda k: obj.get(k.encode(), obj.get(k))
        return _array(g("data"), g("dtype"), g("shape"))
    if b"__npgeneric__" in obj or "__npgeneric__" in obj:
        g = lambda k: obj.get(k.encode(), obj.get(k))
        return np.dtype(_str(g("dtype"))).type(g("data"))
    if b"nd" in obj and b"type" in obj and b"data" in obj:  # the msgpack-numpy package's layout
        return _array(obj[b"data"], obj[b"type"], obj[b"shape"])
    return obj


def _str(x: Any) -> str:
    return x.decode() if isinstance(x, bytes) else str(x)


def _array(data: Any, dtype: Any, shape: Any) -> np.ndarray:
    dt = np.dtype(_str(dtype))
    if dt.kind in "VOc":
        raise ProtocolError(f"array dtype {dt} is not allowed")
    shape = tuple(int(s) for s in shape)
    if not isinstance(data, bytes | bytearray) or len(data) != dt.itemsize * int(np.prod(shape)):
        raise ProtocolError(f"array payload does not match dtype {dt} and shape {shape}")
    return np.frombuffer(data, dtype=dt).reshape(shape).copy()  # writable, owns its memory


def packb(obj: Any) -> bytes:
    return msgpack.packb(obj, default=_encode, use_bin_type=True)


def unpackb(data: bytes) -> Any:
    """Decode one frame; anything that is not valid msgpack-numpy raises ``ProtocolError``."""
    try:
        return msgpack.unpackb(data, object_hook=_decode, raw=False, strict_map_key=False)
    except ProtocolError:
        raise
    except Exception as e:
        raise ProtocolError(f"undecodable message ({type(e).__name__}: {e})") from e


def parse_request(data: bytes | str, max_bytes: int) -> tuple[str, dict[str, Any]]:
    """A raw frame -> (endpoint, payload without the endpoint). Raises ``ProtocolError``."""
    if isinstance(data, str):
        raise ProtocolError("requests must be binary msgpack frames, got a text frame")
    if len(data) > max_bytes:
        raise ProtocolError(f"message of {len(data)} bytes exceeds the limit of {max_bytes}")
    msg = unpackb(data)
    if not isinstance(msg, dict):
        raise ProtocolError(f"a request must be a map, got {type(msg).__name__}")
    msg = {_str(k): v for k, v in msg.items()}
    endpoint = msg.pop("endpoint", None)
    if endpoint not in ENDPOINTS:
        raise ProtocolError(f"'endpoint' must be one of {ENDPOINTS}, got {endpoint!r}")
    return endpoint, msg


def image_frames(obs: dict[str, Any], key: str) -> np.ndarray:
    """A camera entry, (H, W, 3) or (T, H, W, 3) uint8 (or float in [0, 1]) -> (T, H, W, 3) float32 [0, 1]."""
    if key not in obs:
        raise ProtocolError(f"missing observation key {key!r}")
    x = obs[key]
    if not isinstance(x, np.ndarray):
        raise ProtocolError(f"{key}: expected an array, got {type(x).__name__}")
    if x.ndim == 3:
        x = x[None]
    if x.ndim != 4 or x.shape[-1] != 3 or 0 in x.shape:
        raise ProtocolError(f"{key}: expected (H, W, 3) or (T, H, W, 3), got {x.shape}")
    if x.dtype == np.uint8:
        return x.astype(np.float32) / 255.0
    if x.dtype.kind != "f":
        raise ProtocolError(f"{key}: expected uint8 or float pixels, got {x.dtype}")
    x = x.astype(np.float32)
    if not np.isfinite(x).all() or x.min() < 0.0 or x.max() > 1.0:
        raise ProtocolError(f"{key}: float pixels must be finite and in [0, 1]")
    return x


def robot_state(obs: dict[str, Any]) -> np.ndarray:
    """joint_position (7,) and gripper_position (1,) -> state (8,) float32."""
    parts = []
    for key, dim in ((JOINT_POSITION, JOINT_DIM), (GRIPPER_POSITION, GRIPPER_DIM)):
        if key not in obs:
            raise ProtocolError(f"missing observation key {key!r}")
        v = np.asarray(obs[key])
        if v.dtype.kind not in "fiu" or v.size != dim:
            raise ProtocolError(f"{key}: expected {dim} numbers, got shape {v.shape} dtype {v.dtype}")
        v = v.reshape(dim).astype(np.float32)
        if not np.isfinite(v).all():
            raise ProtocolError(f"{key} contains NaN or inf")
        parts.append(v)
    return np.concatenate(parts)


def prompt(obs: dict[str, Any]) -> str:
    p = obs.get(PROMPT)
    if not isinstance(p, str) or not p.strip():
        raise ProtocolError("'prompt' must be a non-empty instruction string")
    return p


def session_id(obs: dict[str, Any]) -> str | None:
    s = obs.get(SESSION_ID)
    if s is None:
        return None
    if isinstance(s, np.ndarray):
        s = s.reshape(-1)[0].item() if s.size else None
    return None if s is None else str(s)
