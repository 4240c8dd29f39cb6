"""A reference checkpoint's tensors, read lazily: one safetensors file, a sharded index, or a torch file.

Only headers are read up front (names, shapes, dtypes); :meth:`CheckpointSource.read` loads one tensor.
Pickled torch files are opened with ``torch.load(weights_only=True, mmap=True)`` only, so no code in
the file runs and the tensors stay on disk until read.
"""

from __future__ import annotations

import json
from pathlib import Path, PurePosixPath, PureWindowsPath

import ml_dtypes
import numpy as np

from dreamzero_policy.weights_io import SafetensorsReader

INDEX_NAMES = ("model.safetensors.index.json", "diffusion_pytorch_model.safetensors.index.json")
SINGLE_NAMES = ("model.safetensors", "diffusion_pytorch_model.safetensors")
TORCH_SUFFIXES = (".pt", ".pth", ".bin")


def _read_weight_map(path: Path) -> dict[str, str]:
    """The index's ``weight_map`` {tensor name: shard file name}, every shard confined to the index's
    directory: a name is relative, without ``..`` (symlinked shard files are fine: the Hugging Face
    cache links them to its blob store)."""
    try:
        index = json.loads(path.read_text())
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as e:
        raise ValueError(f"corrupt checkpoint index {path}: {e}") from e
    weight_map = index.get("weight_map") if isinstance(index, dict) else None
    if not isinstance(weight_map, dict) or not weight_map:
        raise ValueError(f"corrupt checkpoint index {path}: 'weight_map' must be a non-empty JSON object "
                         f"{{tensor name: shard file}}, got {type(weight_map).__name__}")
    bad = [(k, v) for k, v in weight_map.items() if not isinstance(v, str) or not v]
    if bad:
        raise ValueError(f"corrupt checkpoint index {path}: shard names must be strings, got {bad[:4]}")
    for shard in set(weight_map.values()):
        rel = PurePosixPath(shard.replace("\\", "/"))
        if rel.is_absolute() or PureWindowsPath(shard).drive or ".." in rel.parts:
            raise ValueError(
                f"{path} names the shard {shard!r} outside its directory; shards must be files next to the index"
            )
    return weight_map


def _torch_to_numpy(t) -> np.ndarray:
    import torch

    t = t.detach().cpu()
    if t.dtype == torch.bfloat16:
        return t.view(torch.int16).numpy().view(ml_dtypes.bfloat16)
    return t.numpy()


class CheckpointSource:
    def __init__(self, path: str | Path):
        path = Path(path)
        self.name = str(path)
        self._readers: list[SafetensorsReader] = []
        self._where: dict[str, SafetensorsReader] = {}
        self._torch: dict | None = None
        if not path.exists():
            raise FileNotFoundError(f"checkpoint source {path} does not exist")
        if path.is_dir():
            path = self._pick(path)
        if not path.is_file():
            raise FileNotFoundError(f"checkpoint not found: {path}")
        if path.name.endswith(".index.json"):
            self._open_index(path)
        elif path.suffix == ".safetensors":
            self._add(SafetensorsReader(path))
        elif path.suffix in TORCH_SUFFIXES:
            self._open_torch(path)
        else:
            raise ValueError(f"{path}: not a .safetensors, .safetensors.index.json, .pt, .pth or .bin file")

    @staticmethod
    def _pick(d: Path) -> Path:
        for name in INDEX_NAMES + SINGLE_NAMES:
            if (d / name).is_file():
                return d / name
        singles = sorted(d.glob("*.safetensors")) or sorted(
            p for s in TORCH_SUFFIXES for p in d.glob("*" + s)
        )
        if len(singles) == 1:
            return singles[0]
        raise FileNotFoundError(
            f"{d}: no model.safetensors or *.safetensors.index.json"
            + (f", and several candidate files {[p.name for p in singles]}" if singles else "")
        )

    def _add(self, reader: SafetensorsReader, only: set[str] | None = None) -> None:
        self._readers.append(reader)
        for k in reader.keys():
            if only is None or k in only:
                if k in self._where:
                    raise ValueError(f"tensor {k!r} appears in both {self._where[k].path} and {reader.path}")
                self._where[k] = reader

    def _open_index(self, path: Path) -> None:
        shards: dict[str, set[str]] = {}
        for key, shard in _read_weight_map(path).items():
            shards.setdefault(shard, set()).add(key)
        absent = sorted(s for s in shards if not (path.parent / s).is_file())
        if absent:
            raise FileNotFoundError(f"{path} lists shards that are not there: {absent}")
        for shard, wanted in sorted(shards.items()):
            reader = SafetensorsReader(path.parent / shard)
            lost = sorted(wanted - set(reader.keys()))
            if lost:
                raise ValueError(f"{reader.path} lacks tensors its index {path.name} puts there: {lost[:8]}")
            self._add(reader, wanted)

    def _open_torch(self, path: Path) -> None:
        import pickle

        import torch

        try:
            sd = torch.load(path, map_location="cpu", weights_only=True, mmap=True)
        except (RuntimeError, pickle.UnpicklingError, EOFError, OSError, ValueError) as e:
            raise ValueError(
                f"cannot read torch checkpoint {path} (corrupt, truncated or not weights-only): {e}"
            ) from e
        if isinstance(sd, dict) and "state_dict" in sd and isinstance(sd["state_dict"], dict):
            sd = sd["state_dict"]
        if not isinstance(sd, dict) or not all(isinstance(v, torch.Tensor) for v in sd.values()):
            raise ValueError(f"{path} is not a flat state dict of tensors")
        self._torch = sd

    def keys(self) -> list[str]:
        return list(self._torch) if self._torch is not None else list(self._where)

    def shape(self, key: str) -> tuple[int, ...]:
        if self._torch is not None:
            return tuple(self._torch[key].shape)
        return self._where[key].shape(key)

    def dtype(self, key: str) -> np.dtype:
        if self._torch is not None:
            return _torch_to_numpy(self._torch[key].reshape(-1)[:0]).dtype
        return self._where[key].dtype(key)

    def shapes(self) -> dict[str, tuple[int, ...]]:
        return {k: self.shape(k) for k in self.keys()}

    def read(self, key: str) -> np.ndarray:
        if self._torch is not None:
            return np.array(_torch_to_numpy(self._torch[key]))
        return self._where[key].read(key)

    def close(self) -> None:
        for r in self._readers:
            r.close()

    def __enter__(self) -> CheckpointSource:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()
