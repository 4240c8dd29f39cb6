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

import math
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

# Per-request bounds, checked on shapes before any pixel is converted. A request carries the frames seen
# since the previous one (the reference client sends one; a chunk of 8 executed actions gives 8), so 16
# leaves room without letting a 90 KB request of 10,000 tiny frames occupy the policy for seconds.
MAX_FRAMES_PER_REQUEST = 16
MAX_FRAME_PIXELS = 3840 * 2160  # 4K UHD: above any robot camera; a float frame of it is ~100 MB
MAX_PROMPT_CHARS = 4096  # the umT5 tokenizer keeps 512 tokens
MAX_ARRAY_NDIM = 8
ARRAY_KINDS = "biuf"  # bool, int, uint, float: never object, void, complex, strings or dates


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
        dt = _dtype(g("dtype"))
        try:
            return dt.type(g("data"))
        except (TypeError, ValueError, OverflowError) as e:
            raise ProtocolError(f"numpy scalar of dtype {dt} cannot hold {g('data')!r:.40}") from e
    if b"nd" in obj and b"type" in obj and b"data" in obj:  # the msgpack-numpy package's layout
        return _array(obj[b"data"], obj[b"type"], obj.get(b"shape"))
    return obj


def _str(x: Any) -> str:
    return x.decode(errors="replace") if isinstance(x, bytes) else str(x)


def _dtype(spec: Any) -> np.dtype:
    if not isinstance(spec, str | bytes):
        raise ProtocolError(f"array dtype must be a string, got {type(spec).__name__}")
    try:
        dt = np.dtype(_str(spec))
    except (TypeError, ValueError, SyntaxError) as e:
        raise ProtocolError(f"unknown array dtype {spec!r:.40}") from e
    if dt.kind not in ARRAY_KINDS or dt.shape or dt.names:
        raise ProtocolError(f"array dtype {dt} is not allowed (bool, int, uint or float only)")
    return dt


def _array(data: Any, dtype: Any, shape: Any) -> np.ndarray:
    dt = _dtype(dtype)
    if not isinstance(shape, list | tuple) or len(shape) > MAX_ARRAY_NDIM or not all(
        isinstance(s, int) and not isinstance(s, bool) and s >= 0 for s in shape
    ):
        raise ProtocolError(f"array shape must be at most {MAX_ARRAY_NDIM} non-negative ints, got {shape!r:.80}")
    shape = tuple(shape)
    if not isinstance(data, bytes | bytearray) or len(data) != dt.itemsize * math.prod(shape):
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
    if not isinstance(endpoint, str) or endpoint not in ENDPOINTS:
        raise ProtocolError(f"'endpoint' must be one of {ENDPOINTS}, got {endpoint!r:.60}")
    return endpoint, msg


def camera_frames(
    obs: dict[str, Any],
    key: str,
    max_frames: int = MAX_FRAMES_PER_REQUEST,
    max_pixels: int = MAX_FRAME_PIXELS,
) -> np.ndarray:
    """A camera entry, (H, W, 3) or (T, H, W, 3) uint8 or float -> (T, H, W, 3) as sent, its shape and
    dtype checked against the bounds (no pixel is read or converted here)."""
    if key not in obs:
        raise ProtocolError(f"missing camera {key!r}")
    x = obs[key]
    if not isinstance(x, np.ndarray):
        raise ProtocolError(f"{key}: expected an image array, got {type(x).__name__}")
    if x.ndim == 3:
        x = x[None]
    if x.ndim != 4 or x.shape[-1] != 3 or 0 in x.shape:
        raise ProtocolError(f"{key}: expected (H, W, 3) or (T, H, W, 3), got {x.shape}")
    if x.dtype != np.uint8 and x.dtype.kind != "f":
        raise ProtocolError(f"{key}: expected uint8 or float pixels, got {x.dtype}")
    if x.shape[0] > max_frames:
        raise ProtocolError(f"{key}: {x.shape[0]} frames in one request; at most {max_frames}")
    if x.shape[1] * x.shape[2] > max_pixels:
        raise ProtocolError(f"{key}: {x.shape[1]}x{x.shape[2]} frames exceed {max_pixels} pixels")
    return x


def unit_frame(x: np.ndarray, key: str) -> np.ndarray:
    """One (H, W, 3) frame from ``camera_frames`` -> float32 in [0, 1]."""
    if x.dtype == np.uint8:
        return x.astype(np.float32) / 255.0
    x = x.astype(np.float32)
    if not np.isfinite(x).all() or x.min() < 0.0 or x.max() > 1.0:
        raise ProtocolError(f"{key}: float pixels must be finite and in [0, 1]")
    return x


def robot_state(obs: dict[str, Any]) -> np.ndarray:
    """joint_position (7,) and gripper_position (1,) (arrays or lists of numbers) -> state (8,) float32."""
    parts = []
    for key, dim in ((JOINT_POSITION, JOINT_DIM), (GRIPPER_POSITION, GRIPPER_DIM)):
        if key not in obs:
            raise ProtocolError(f"missing observation key {key!r}")
        raw = obs[key]
        v = raw if isinstance(raw, np.ndarray) else np.asarray(raw) if _is_number_list(raw) else None
        if v is None or v.dtype.kind not in "fiu" or v.size != dim:
            got = f"shape {v.shape} dtype {v.dtype}" if v is not None else type(raw).__name__
            raise ProtocolError(f"{key}: expected {dim} numbers, got {got}")
        v = v.reshape(dim).astype(np.float32)
        if not np.isfinite(v).all():
            raise ProtocolError(f"{key} contains NaN or inf")
        parts.append(v)
    return np.concatenate(parts)


def _is_number_list(v: Any) -> bool:
    return isinstance(v, list | tuple) and all(
        isinstance(x, int | float | np.integer | np.floating) and not isinstance(x, bool) for x in v
    )


def prompt(obs: dict[str, Any]) -> str:
    p = obs.get(PROMPT)
    if not isinstance(p, str) or not p.strip():
        raise ProtocolError("'prompt' must be a non-empty instruction string")
    if len(p) > MAX_PROMPT_CHARS:
        raise ProtocolError(f"'prompt' has {len(p)} characters; at most {MAX_PROMPT_CHARS}")
    return p


def session_id(obs: dict[str, Any]) -> str | None:
    """The session id (a string, number or one-element array), or None when absent."""
    s = obs.get(SESSION_ID)
    if isinstance(s, np.ndarray) and s.size == 1:
        s = s.reshape(-1)[0].item()
    if s is None or isinstance(s, str | int | float | bytes) and not isinstance(s, bool):
        s = s.decode(errors="replace") if isinstance(s, bytes) else s
        if s is not None and len(str(s)) > 256:
            raise ProtocolError("'session_id' is longer than 256 characters")
        return None if s is None else str(s)
    raise ProtocolError(f"'session_id' must be a string or a number, got {type(s).__name__}")
