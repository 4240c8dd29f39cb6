"""LeRobot's asynchronous inference (``lerobot.async_inference``) with ``dreamzero_jax``.

LeRobot 0.6.1's policy server refuses policy types missing from ``constants.SUPPORTED_POLICIES`` and,
unlike ``lerobot-record`` / ``lerobot-rollout`` / the robot client, does not load third-party plugins.
The list is a module-level ``list`` that ``policy_server`` imports by reference, so adding our type
to it at runtime (no change to LeRobot's files) makes the stock server accept it. ``dreamzero-async-server``
does that, imports the plugin, and then runs LeRobot's own ``serve`` with its usual flags.

Security: LeRobot's gRPC server ``pickle.loads`` every client message (policy instructions and
observations), so whoever can connect can run code on the server; it is insecure gRPC (no TLS, no
authentication). LeRobot binds ``localhost`` by default but takes any ``--host``; ours binds 127.0.0.1
and refuses a non-loopback host unless ``--allow_remote=true`` says the network is trusted.

    dreamzero-async-server [--host=127.0.0.1] [--port=8080] [--fps=30] [--allow_remote=false] ...
"""

from __future__ import annotations

import logging
import sys
from collections.abc import Sequence
from dataclasses import dataclass, fields
from typing import Any

from dreamzero_policy.cli_args import parse_cli
from dreamzero_policy.serving.server import is_loopback

POLICY_TYPE = "dreamzero_jax"
PROG = "dreamzero-async-server"
REMOTE_WARNING = (
    "binding {host}: LeRobot's async policy server unpickles every client message, so anyone who can reach "
    "this port can run code on this machine (insecure gRPC: no TLS, no authentication). Only do this on a "
    "network you trust, or keep 127.0.0.1 and tunnel (ssh -L {port}:127.0.0.1:{port})."
)
log = logging.getLogger(__name__)


def register_async_policy(required: bool = False) -> bool:
    """Add ``dreamzero_jax`` to the async server's supported types. Without LeRobot's ``async`` extra
    (grpc) there is nothing to register: returns False, or raises when ``required``."""
    try:
        from lerobot.async_inference import constants
    except ImportError:
        if required:
            raise
        return False

    if POLICY_TYPE not in constants.SUPPORTED_POLICIES:
        constants.SUPPORTED_POLICIES.append(POLICY_TYPE)
    return True


def check_bind(host: str, port: int, allow_remote: bool) -> str | None:
    """None for a loopback host; the warning to print for an allowed remote one; SystemExit otherwise."""
    if is_loopback(host):
        return None
    msg = REMOTE_WARNING.format(host=host or "every interface", port=port)
    if not allow_remote:
        raise SystemExit(f"{PROG}: refusing to bind a non-loopback host. {msg} Pass --allow_remote=true to do it anyway.")
    return msg


def _config_classes() -> tuple[type, type]:
    """(LeRobot's PolicyServerConfig, ours: the same fields, loopback default, plus ``allow_remote``)."""
    try:
        from lerobot.async_inference.configs import PolicyServerConfig
    except ImportError as e:
        raise SystemExit(
            f"{PROG}: LeRobot's async inference needs its 'async' extra (grpcio): uv sync --extra async ({e})"
        ) from None

    @dataclass
    class AsyncServerConfig(PolicyServerConfig):
        """LeRobot's async policy server (gRPC) serving dreamzero_jax."""

        host: str = "127.0.0.1"  # loopback; another host needs --allow_remote=true (clients are unpickled)
        allow_remote: bool = False  # allow a non-loopback --host (trusted networks only)

    AsyncServerConfig.__qualname__ = "AsyncServerConfig"  # the --help title
    return PolicyServerConfig, AsyncServerConfig


def _serve(cfg: Any) -> None:
    import lerobot_policy_dreamzero  # noqa: F401  (registers the policy and the dz_sim robot)

    register_async_policy(required=True)
    from lerobot.async_inference.policy_server import serve

    serve(cfg)  # draccus.wrap passes a config of exactly its own type through


def main(argv: Sequence[str] | None = None) -> None:
    base, ours = _config_classes()
    cfg = parse_cli(ours, argv, PROG)
    warning = check_bind(cfg.host, cfg.port, cfg.allow_remote)
    if warning:
        print(f"WARNING: {warning}", file=sys.stderr)
        log.warning(warning)
    _serve(base(**{f.name: getattr(cfg, f.name) for f in fields(base) if f.init}))


if __name__ == "__main__":
    main()
