"""``metrics.jsonl``: one JSON record per logged training step, robust to a run killed mid-write.

A kill can leave a torn last line, and the steps logged after the last checkpoint are trained (and
logged) again on resume. On resume the log is therefore cut back to the whole records of steps up to
the restored step (rewritten atomically), so the file holds each step once; readers skip any line
that is not a whole record.
"""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import IO, Any


def _parse(line: str) -> dict[str, Any] | None:
    try:
        rec = json.loads(line)
    except json.JSONDecodeError:
        return None
    return rec if isinstance(rec, dict) and isinstance(rec.get("step"), int) else None


class MetricsLog:
    def __init__(self, path: str | Path) -> None:
        self.path = Path(path)
        self._fh: IO[str] | None = None

    def read(self) -> list[dict[str, Any]]:
        """Every whole record in the file (torn or foreign lines skipped)."""
        if not self.path.is_file():
            return []
        with open(self.path, encoding="utf-8", errors="replace") as f:
            return [r for line in f if line.strip() and (r := _parse(line)) is not None]

    def truncate_after(self, step: int) -> int:
        """Keep the records of steps <= ``step`` (0: a fresh run keeps none); returns how many were dropped."""
        if not self.path.is_file():
            return 0
        with open(self.path, encoding="utf-8", errors="replace") as f:
            lines = f.readlines()
        keep = [r for r in self.read() if r["step"] <= step]
        tmp = self.path.with_suffix(".jsonl.tmp")
        tmp.write_text("".join(json.dumps(r) + "\n" for r in keep))
        os.replace(tmp, self.path)
        return len(lines) - len(keep)

    def append(self, record: dict[str, Any]) -> None:
        if self._fh is None:
            self._fh = open(self.path, "a", encoding="utf-8")
        self._fh.write(json.dumps(record) + "\n")
        self._fh.flush()

    def __enter__(self) -> MetricsLog:
        return self

    def __exit__(self, *exc: object) -> None:
        if self._fh is not None:
            self._fh.close()
            self._fh = None
