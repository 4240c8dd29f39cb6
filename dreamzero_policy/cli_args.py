"""Command-line parsing shared by the ``dreamzero-*`` tools: a draccus dataclass per command, LeRobot's
flag style (``--src=DIR``, ``--policy.path=DIR``, ``--no_stats=true``), and bad values reported as one
line ("prog: `port`: Couldn't parse 'abc' into an int") instead of a draccus traceback."""

from __future__ import annotations

import sys
from collections.abc import Sequence

import draccus
from draccus.utils import DraccusException


def parse_cli[T](config_class: type[T], argv: Sequence[str] | None, prog: str) -> T:
    args = list(sys.argv[1:] if argv is None else argv)
    try:
        return draccus.parse(config_class, args=args, prog=prog)
    except (DraccusException, ValueError, TypeError) as e:  # bad values, failed __post_init__ checks
        raise SystemExit(f"{prog}: {e}") from None
