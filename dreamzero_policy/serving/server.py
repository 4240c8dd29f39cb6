"""Websocket policy server speaking the DreamZero / roboarena protocol (see ``protocol``).

Binds 127.0.0.1 by default. A malformed or oversized request gets an error text frame and the
connection keeps serving (messages above ``hard_max_bytes`` are refused by websockets itself, which
closes that one connection with code 1009; the server keeps running). Health: the ``health``
endpoint over the websocket, and ``GET /healthz`` over plain HTTP on the same port.
"""

from __future__ import annotations

import argparse
import asyncio
import http
import json
import logging
import threading
import time
from typing import Any, Protocol

import websockets
from websockets.asyncio.server import ServerConnection, serve

from dreamzero_policy.serving import protocol as P

log = logging.getLogger(__name__)
DEFAULT_MAX_BYTES = 64 * 2**20


class Backend(Protocol):
    def metadata(self) -> P.ServerMetadata: ...
    def infer(self, obs: dict[str, Any]) -> Any: ...
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
        endpoint, payload = P.parse_request(raw, self.max_bytes)
        self.stats[endpoint] += 1
        if endpoint == "health":
            return P.packb(self.health())
        loop = asyncio.get_running_loop()
        async with self._infer_lock:  # the event loop stays free for health checks while a plan runs
            if endpoint == "reset":
                await loop.run_in_executor(None, self.backend.reset, payload)
                return P.RESET_REPLY
            actions = await loop.run_in_executor(None, self.backend.infer, payload)
        return P.packb(actions)


def main(argv: list[str] | None = None) -> None:
    """``dreamzero-serve --policy.path DIR``: serve a saved ``dreamzero_jax`` policy (roboarena protocol)."""
    ap = argparse.ArgumentParser(description=main.__doc__)
    ap.add_argument("--policy.path", dest="path", required=True, help="directory written by save_pretrained")
    ap.add_argument("--host", default="127.0.0.1")
    ap.add_argument("--port", type=int, default=8000)
    ap.add_argument("--max-message-mb", type=float, default=DEFAULT_MAX_BYTES / 2**20)
    ap.add_argument(
        "--camera-map",
        default=None,
        help="JSON {roboarena key: policy image key}; default: the three roboarena cameras in order",
    )
    a = ap.parse_args(argv)
    logging.basicConfig(level=logging.INFO)
    from lerobot.policies.factory import make_pre_post_processors

    from dreamzero_policy.modeling_dreamzero import DreamZeroJaxPolicy
    from dreamzero_policy.serving.backend import RoboarenaBackend
    from dreamzero_policy.serving.planner import PolicyPlanner

    policy = DreamZeroJaxPolicy.from_pretrained(a.path)
    pre, post = make_pre_post_processors(policy.config, pretrained_path=a.path)
    backend = RoboarenaBackend(
        PolicyPlanner(policy, pre, post), camera_map=json.loads(a.camera_map) if a.camera_map else None
    )
    PolicyServer(backend, a.host, a.port, int(a.max_message_mb * 2**20)).serve_forever()
