"""Model weights on disk: one safetensors file of "/"-joined NNX parameter paths, loaded strictly.

The safetensors format is read and written here directly (8-byte little-endian header length, a JSON
header of ``{name: {dtype, shape, data_offsets}}``, then the raw bytes) so that

* every stored dtype round-trips, bfloat16 included (as ``ml_dtypes.bfloat16`` numpy arrays);
* large files stream tensor by tensor: :class:`SafetensorsReader` reads one tensor with one ``readinto``
  (no mmap, so resident memory stays one tensor) and :class:`StreamingWriter` writes the header from a
  plan of (name, dtype, shape) and then each tensor's bytes in turn;
* a truncated or corrupt file is a ``ValueError`` naming the file, found from the header alone.
"""

from __future__ import annotations

import json
import os
import struct
from collections.abc import Callable, Iterable, Mapping
from pathlib import Path
from types import TracebackType
from typing import Any

import ml_dtypes
import numpy as np
from flax import nnx

from dreamzero_policy.convert.state_io import flat_params, load_flat

WEIGHTS_NAME = "model.safetensors"
MISSING_PARTS_KEY = "dreamzero.missing_parts"  # metadata: parts a conversion left out on purpose

_DTYPES: dict[str, np.dtype] = {
    "F64": np.dtype(np.float64),
    "F32": np.dtype(np.float32),
    "F16": np.dtype(np.float16),
    "BF16": np.dtype(ml_dtypes.bfloat16),
    "I64": np.dtype(np.int64),
    "I32": np.dtype(np.int32),
    "I16": np.dtype(np.int16),
    "I8": np.dtype(np.int8),
    "U8": np.dtype(np.uint8),
    "BOOL": np.dtype(np.bool_),
}
_CODES = {v: k for k, v in _DTYPES.items()}
_MAX_HEADER = 100 * 1024 * 1024


def dtype_code(dtype: np.dtype) -> str:
    try:
        return _CODES[np.dtype(dtype)]
    except KeyError:
        raise ValueError(f"dtype {dtype} cannot be stored in safetensors") from None


def numpy_dtype(code: str) -> np.dtype:
    try:
        return _DTYPES[code]
    except KeyError:
        raise ValueError(f"unsupported safetensors dtype {code!r}") from None


class SafetensorsReader:
    """Header-validated, tensor-at-a-time reader of one safetensors file."""

    def __init__(self, path: str | Path):
        self.path = Path(path)
        if not self.path.is_file():
            raise FileNotFoundError(f"weights file not found: {self.path}")
        size = self.path.stat().st_size
        self._file = open(self.path, "rb")  # noqa: SIM115 - closed by close() / __exit__
        try:
            self._parse_header(size)
        except Exception:
            self._file.close()
            raise

    def _fail(self, why: str) -> ValueError:
        return ValueError(f"corrupt or truncated safetensors file {self.path}: {why}")

    def _parse_header(self, size: int) -> None:
        raw = self._file.read(8)
        if len(raw) < 8:
            raise self._fail(f"only {size} bytes, no header")
        (n,) = struct.unpack("<Q", raw)
        if n > min(_MAX_HEADER, size - 8):
            raise self._fail(f"header length {n} does not fit in a file of {size} bytes")
        try:
            header = json.loads(self._file.read(n))
        except (UnicodeDecodeError, json.JSONDecodeError) as e:
            raise self._fail(f"header is not JSON ({e})") from None
        if not isinstance(header, dict):
            raise self._fail("header is not a JSON object")
        self.metadata: dict[str, str] = header.pop("__metadata__", None) or {}
        self._base = 8 + n
        self._entries: dict[str, tuple[np.dtype, tuple[int, ...], int, int]] = {}
        for name, info in header.items():
            try:
                dtype, shape = numpy_dtype(info["dtype"]), tuple(int(d) for d in info["shape"])
                begin, end = (int(x) for x in info["data_offsets"])
            except (KeyError, TypeError, ValueError) as e:
                raise self._fail(f"bad header entry for {name!r} ({e})") from None
            if end - begin != int(np.prod(shape, dtype=np.int64)) * dtype.itemsize or begin < 0:
                raise self._fail(f"{name!r}: byte range [{begin}, {end}) does not hold {shape} {dtype}")
            if self._base + end > size:
                raise self._fail(f"{name!r} ends at byte {self._base + end}, the file has {size}")
            self._entries[name] = (dtype, shape, begin, end)

    def keys(self) -> list[str]:
        return list(self._entries)

    def shape(self, name: str) -> tuple[int, ...]:
        return self._entries[name][1]

    def dtype(self, name: str) -> np.dtype:
        return self._entries[name][0]

    def nbytes(self, name: str) -> int:
        _, _, begin, end = self._entries[name]
        return end - begin

    def read(self, name: str) -> np.ndarray:
        dtype, shape, begin, end = self._entries[name]
        out = np.empty(shape, dtype)
        self._file.seek(self._base + begin)
        got = self._file.readinto(memoryview(out.reshape(-1).view(np.uint8)))
        if got != end - begin:
            raise self._fail(f"{name!r}: read {got} of {end - begin} bytes")
        return out

    def close(self) -> None:
        self._file.close()

    def __enter__(self) -> SafetensorsReader:
        return self

    def __exit__(self, et: type | None, e: BaseException | None, tb: TracebackType | None) -> None:
        self.close()


class StreamingWriter:
    """Write a safetensors file from a plan, one tensor at a time, in plan order.

    The file is written to ``<path>.partial`` and renamed on a successful :meth:`close`, so an
    interrupted conversion never leaves a valid-looking but incomplete weights file.
    """

    def __init__(
        self,
        path: str | Path,
        plan: Iterable[tuple[str, np.dtype, tuple[int, ...]]],
        metadata: Mapping[str, str] | None = None,
    ):
        self.path = Path(path)
        self._plan = [(name, np.dtype(dt), tuple(int(d) for d in shape)) for name, dt, shape in plan]
        header: dict[str, object] = {"__metadata__": dict(metadata)} if metadata else {}
        offset = 0
        for name, dt, shape in self._plan:
            n = int(np.prod(shape, dtype=np.int64)) * dt.itemsize
            header[name] = {
                "dtype": dtype_code(dt),
                "shape": list(shape),
                "data_offsets": [offset, offset + n],
            }
            offset += n
        blob = json.dumps(header, separators=(",", ":")).encode()
        blob += b" " * (-len(blob) % 8)  # keep tensor data 8-byte aligned
        self.path.parent.mkdir(parents=True, exist_ok=True)
        self._tmp = self.path.with_name(self.path.name + ".partial")
        self._file = open(self._tmp, "wb")  # noqa: SIM115 - closed by close() / abort()
        self._file.write(struct.pack("<Q", len(blob)) + blob)
        self._next = 0

    def write(self, name: str, array: np.ndarray) -> None:
        if self._next >= len(self._plan):
            raise ValueError(f"{self.path}: {name!r} is past the end of the plan")
        want, dt, shape = self._plan[self._next]
        if name != want or array.dtype != dt or tuple(array.shape) != shape:
            raise ValueError(
                f"{self.path}: expected {want} {shape} {dt} next, got {name} {tuple(array.shape)} {array.dtype}"
            )
        self._file.write(memoryview(np.ascontiguousarray(array).reshape(-1).view(np.uint8)))
        self._next += 1

    def close(self) -> None:
        if self._next != len(self._plan):
            self.abort()
            raise ValueError(f"{self.path}: only {self._next} of {len(self._plan)} planned tensors written")
        self._file.close()
        os.replace(self._tmp, self.path)

    def abort(self) -> None:
        self._file.close()
        self._tmp.unlink(missing_ok=True)

    def __enter__(self) -> StreamingWriter:
        return self

    def __exit__(self, et: type | None, e: BaseException | None, tb: TracebackType | None) -> None:
        if et is None:
            self.close()
        else:
            self.abort()


def save_flat(
    flat: Mapping[str, np.ndarray], path: str | Path, metadata: Mapping[str, str] | None = None
) -> None:
    """Write a flat {name: array} dict, every array in its own dtype (bf16 stays bf16)."""
    arrays = {k: np.asarray(v) for k, v in flat.items()}
    with StreamingWriter(path, [(k, v.dtype, v.shape) for k, v in arrays.items()], metadata) as w:
        for k, v in arrays.items():
            w.write(k, v)


def save_weights(model: nnx.Module, path: str | Path) -> None:
    import jax

    save_flat({k: np.asarray(jax.device_get(v)) for k, v in flat_params(model).items()}, path)


def read_weights(path: str | Path) -> dict[str, np.ndarray]:
    with SafetensorsReader(path) as r:
        return {k: r.read(k) for k in r.keys()}


def read_metadata(path: str | Path) -> dict[str, str]:
    with SafetensorsReader(path) as r:
        return dict(r.metadata)


class _StoredTensors(Mapping[str, np.ndarray]):
    """The tensors of an open file as a mapping that reads one tensor per lookup (shapes from the header)."""

    def __init__(self, reader: SafetensorsReader):
        self._r = reader

    def __getitem__(self, key: str) -> np.ndarray:
        if key not in self._r._entries:
            raise KeyError(key)
        return self._r.read(key)

    def __iter__(self):
        return iter(self._r.keys())

    def __len__(self) -> int:
        return len(self._r.keys())

    def shape(self, key: str) -> tuple[int, ...]:
        return self._r.shape(key)


def load_weights(
    model: nnx.Module,
    path: str | Path,
    *,
    allow_missing: bool = False,
    device_of: Callable[[str], Any] | None = None,
) -> None:
    """Strict by default: missing, unexpected and wrongly shaped tensors are named in one error.

    Tensors stream from the file one at a time into their parameters' dtype on ``device_of(path)``; with an
    abstract ``model`` (``nnx.eval_shape``) the weights exist once, in the model's dtype (see ``load_flat``).
    A file converted with only some parts (``dreamzero-convert --parts``) records the parts it left out;
    loading it needs ``allow_missing=True`` and the error says so.
    """
    with SafetensorsReader(path) as r:
        left_out = r.metadata.get(MISSING_PARTS_KEY, "")
        if left_out and not allow_missing:
            raise ValueError(
                f"{path} was converted without the parts [{left_out}]; load it with allow_missing=True "
                "and provide those weights another way, or convert again with every part"
            )
        load_flat(model, _StoredTensors(r), allow_missing=allow_missing, device_of=device_of)
