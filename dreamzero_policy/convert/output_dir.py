"""Where a conversion may write, and writing it all-or-nothing.

The output directory must be new, empty, or the output of an earlier conversion (it holds
``conversion.json``), and must not be, contain or lie inside the checkpoint's directory (symlinks
resolved): converting a checkpoint onto itself would overwrite ``model.safetensors`` / ``config.json``
of the source. Everything is written to a temporary sibling directory that is renamed into place
only when the conversion succeeded, so a failed conversion leaves no half-written output and an earlier
output stays intact until the new one is complete.
"""

from __future__ import annotations

import json
import os
import shutil
import tempfile
from collections.abc import Iterator, Mapping
from contextlib import contextmanager
from pathlib import Path

MARKER_NAME = "conversion.json"  # written last into every output; marks a directory we may replace
TOOL = "dreamzero-convert"


def _is_conversion_output(d: Path) -> bool:
    try:
        return json.loads((d / MARKER_NAME).read_text()).get("tool") == TOOL
    except (OSError, ValueError, AttributeError):
        return False


def check_output_dir(src_dir: Path, out: Path) -> None:
    """Raise ValueError if ``out`` may not receive a conversion of the checkpoint in ``src_dir``."""
    src_r, out_r = src_dir.resolve(), out.resolve()
    if out_r == src_r or src_r in out_r.parents:
        raise ValueError(
            f"output {out} is {'the' if out_r == src_r else 'inside the'} checkpoint directory {src_dir} "
            "(it would overwrite or mix with the source): choose a directory outside it"
        )
    if out_r in src_r.parents:
        raise ValueError(
            f"output {out} contains the checkpoint directory {src_dir}; replacing it would delete the "
            "source: choose a directory outside it"
        )
    if out.exists() and not out.is_dir():
        raise ValueError(f"output {out} exists and is not a directory")
    if out.is_dir() and any(out.iterdir()) and not _is_conversion_output(out):
        raise ValueError(
            f"output directory {out} is not empty and is not an earlier {TOOL} output (it has no "
            f"{MARKER_NAME}): choose a new or empty directory"
        )


@contextmanager
def staged_output(src_dir: Path, out: Path, marker: Mapping[str, object]) -> Iterator[Path]:
    """Yield a temporary sibling of ``out`` to write into; on success write the marker and move it to
    ``out`` (replacing an earlier conversion output), on failure delete it."""
    check_output_dir(src_dir, out)
    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{out.name}.converting-", dir=out.parent))
    try:
        yield tmp
        (tmp / MARKER_NAME).write_text(json.dumps({"tool": TOOL, **marker}, indent=2) + "\n")
        check_output_dir(src_dir, out)  # nothing appeared there meanwhile
        old = None
        if out.is_dir():
            if any(out.iterdir()):
                old = Path(tempfile.mkdtemp(prefix=f".{out.name}.replaced-", dir=out.parent))
                os.replace(out, old)
            else:
                out.rmdir()
        try:
            os.replace(tmp, out)
        except OSError:
            if old is not None:
                os.replace(old, out)  # put the earlier output back
            raise
        if old is not None:
            shutil.rmtree(old, ignore_errors=True)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
