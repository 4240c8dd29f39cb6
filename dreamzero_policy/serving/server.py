"""Websocket policy server speaking the DreamZero / roboarena protocol (see ``protocol``).

Binds 127.0.0.1 by default. A malformed or oversized request gets an error text frame and the
connection keeps serving (messages above ``hard_max_bytes`` are refused by websockets itself, which
closes that one connection with code 1009; the server keeps running). Health: the ``health``
endpoint over the websocket, and ``GET /healthz`` over plain HTTP on the same port.

Decoding and validating a request (``Backend.prepare``) runs in a worker thread outside the lock that
serialises policy calls, so a large or malformed request of one client does not hold up the others.

    dreamzero-serve --policy.path=DIR [--host=127.0.0.1] [--port=8000] [--max_message_mb=64]
        [--max_frames_per_request=16] [--camera_map='{"observation/wrist_image_left": "wrist", ...}']
"""

from __future__ import annotations

import asyncio
import http
import ipaddress
import json
import logging
import threading
import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Protocol

import websockets
from websockets.asyncio.server import ServerConnection, serve

from dreamzero_policy.cli_args import parse_cli
from dreamzero_policy.serving import protocol as P

log = logging.getLogger(__name__)
DEFAULT_MAX_BYTES = 64 * 2**20
PROG = "dreamzero-serve"


class Backend(Protocol):
    def metadata(self) -> P.ServerMetadata: ...
    def prepare(self, obs: dict[str, Any]) -> Any: ...  # validation/conversion; thread-safe, no shared state
    def run(self, prepared: Any) -> Any: ...  # the policy call; serialised by the server
    def reset(self, info: dict[str, Any] | None = None) -> None: ...


class PolicyServer:
    def __init__(
        self,
        backend: Backend,
        host: str = "127.0.0.1",
        port: int = 8000,
        max_message_bytes: int = DEFAULT_MAX_BYTES,
    ) -> None:
        if max_message_bytes <= 0:
            raise ValueError("max_message_bytes must be positive")
        self.backend, self.host, self.port, self.max_bytes = backend, host, port, max_message_bytes
        self.hard_max_bytes = 2 * max_message_bytes
        self.started = time.time()
        self.stats = {"infer": 0, "reset": 0, "health": 0, "errors": 0, "connections": 0}
        self._infer_lock = asyncio.Lock()
        self._thread: threading.Thread | None = None
        self._loop: asyncio.AbstractEventLoop | None = None
        self._stop: asyncio.Event | None = None
        self._ready = threading.Event()

    # ------------------------------------------------------------------ lifecycle
    def serve_forever(self) -> None:
        asyncio.run(self._run())

    def start(self, timeout: float = 30.0) -> PolicyServer:
        """Serve from a background thread; returns once bound (``self.port`` is the bound port)."""
        self._thread = threading.Thread(target=self.serve_forever, name="dz-policy-server", daemon=True)
        self._thread.start()
        if not self._ready.wait(timeout):
            raise RuntimeError("policy server did not start")
        return self

    def stop(self) -> None:
        if self._loop is not None and self._stop is not None:
            self._loop.call_soon_threadsafe(self._stop.set)
        if self._thread is not None:
            self._thread.join(timeout=10)

    def health(self) -> dict[str, Any]:
        return {"status": "ok", "uptime_s": time.time() - self.started, **self.stats}

    async def _run(self) -> None:
        self._loop, self._stop = asyncio.get_running_loop(), asyncio.Event()
        self._infer_lock = asyncio.Lock()
        async with serve(
            self._handler,
            self.host,
            self.port,
            compression=None,
            max_size=self.hard_max_bytes,
            process_request=self._http,
        ) as server:
            self.port = server.sockets[0].getsockname()[1]
            log.info("policy server on ws://%s:%d", self.host, self.port)
            self._ready.set()
            await self._stop.wait()

    # ------------------------------------------------------------------ handlers
    def _http(self, connection: ServerConnection, request: Any) -> Any:
        if request.path == "/healthz":
            return connection.respond(http.HTTPStatus.OK, json.dumps(self.health()) + "\n")
        return None  # anything else: the websocket handshake

    async def _handler(self, ws: ServerConnection) -> None:
        self.stats["connections"] += 1
        await ws.send(P.packb(self.backend.metadata().to_dict()))
        while True:
            try:
                raw = await ws.recv()
            except websockets.ConnectionClosed:
                return
            try:
                reply = await self._answer(raw)
            except Exception as e:  # noqa: BLE001 - any failure of one request becomes its error frame
                self.stats["errors"] += 1
                log.warning("request failed: %s: %s", type(e).__name__, e)
                reply = f"{P.ERROR_PREFIX}{type(e).__name__}: {e}"
            try:
                await ws.send(reply)
            except websockets.ConnectionClosed:
                return

    async def _answer(self, raw: bytes | str) -> bytes | str:
        loop = asyncio.get_running_loop()
        endpoint, payload = await loop.run_in_executor(None, P.parse_request, raw, self.max_bytes)
        self.stats[endpoint] += 1
        if endpoint == "health":
            return P.packb(self.health())
        if endpoint == "reset":
            async with self._infer_lock:
                await loop.run_in_executor(None, self.backend.reset, payload)
            return P.RESET_REPLY
        prepared = await loop.run_in_executor(None, self.backend.prepare, payload)  # outside the lock
        async with self._infer_lock:  # the event loop stays free for health checks while a plan runs
            actions = await loop.run_in_executor(None, self.backend.run, prepared)
        return P.packb(actions)


def is_loopback(host: str) -> bool:
    """True for ``localhost`` and loopback addresses; any other name may resolve to a public address."""
    h = host.strip().strip("[]").rstrip(".").lower()
    if h == "localhost":
        return True
    try:
        return ipaddress.ip_address(h).is_loopback
    except ValueError:
        return False


@dataclass
class PolicyPath:
    path: str = ""  # directory written by save_pretrained, dreamzero-train or dreamzero-convert


@dataclass
class ServeConfig:
    """Serve a saved dreamzero_jax policy over the DreamZero / roboarena websocket protocol."""

    policy: PolicyPath = field(default_factory=PolicyPath)
    host: str = "127.0.0.1"  # loopback only; the protocol has no authentication
    port: int = 8000
    max_message_mb: float = DEFAULT_MAX_BYTES / 2**20  # larger requests get an error frame
    max_frames_per_request: int = P.MAX_FRAMES_PER_REQUEST  # frames per camera in one infer request
    max_frame_pixels: int = P.MAX_FRAME_PIXELS  # height * width of one frame
    # {request key: policy camera}, e.g. '{"observation/wrist_image_left": "wrist"}'; default: by name
    camera_map: dict[str, str] | None = None


def make_server(cfg: ServeConfig) -> PolicyServer:
    """Load the policy and build the server ``cfg`` describes (not started). Raises ValueError/OSError."""
    from lerobot.policies.factory import make_pre_post_processors

    from dreamzero_policy.modeling_dreamzero import DreamZeroJaxPolicy
    from dreamzero_policy.serving.backend import RoboarenaBackend
    from dreamzero_policy.serving.planner import PolicyPlanner

    if not cfg.policy.path or not Path(cfg.policy.path).is_dir():
        raise ValueError(
            f"--policy.path=DIR must name a local directory holding a saved dreamzero_jax policy, got "
            f"{cfg.policy.path!r}"
        )
    if cfg.max_message_mb <= 0:
        raise ValueError(f"--max_message_mb must be positive, got {cfg.max_message_mb}")
    policy = DreamZeroJaxPolicy.from_pretrained(cfg.policy.path)
    pre, post = make_pre_post_processors(policy.config, pretrained_path=cfg.policy.path)
    backend = RoboarenaBackend(
        PolicyPlanner(policy, pre, post),
        camera_map=cfg.camera_map,
        max_frames=cfg.max_frames_per_request,
        max_frame_pixels=cfg.max_frame_pixels,
    )
    return PolicyServer(backend, cfg.host, cfg.port, int(cfg.max_message_mb * 2**20))


def main(argv: Sequence[str] | None = None) -> None:
    """``dreamzero-serve --policy.path=DIR``: serve a saved ``dreamzero_jax`` policy (roboarena protocol)."""
    cfg = parse_cli(ServeConfig, argv, PROG)
    logging.basicConfig(level=logging.INFO)
    if not is_loopback(cfg.host):
        log.warning(
            "serving on %s: anyone who can reach this address can query and reset the policy (the protocol "
            "has no authentication); prefer 127.0.0.1 with an SSH tunnel",
            cfg.host,
        )
    try:
        server = make_server(cfg)
    except (ValueError, OSError) as e:
        raise SystemExit(f"{PROG}: {e}") from None
    server.serve_forever()


if __name__ == "__main__":
    main()
