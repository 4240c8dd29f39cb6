"""``PolicyClient``: a synchronous client of the roboarena protocol (ours or the reference server)."""

from __future__ import annotations

import json
import urllib.request
from collections.abc import Sequence
from contextlib import ExitStack
from dataclasses import dataclass
from typing import Any

import numpy as np
from websockets.sync.client import connect

from dreamzero_policy.serving import protocol as P


class ServerError(RuntimeError):
    """The server answered a request with an error frame."""


class PolicyClient:
    def __init__(
        self, host: str = "127.0.0.1", port: int = 8000, timeout: float = 600.0, max_size: int | None = None
    ) -> None:
        self.host, self.port = host, port
        self._stack = ExitStack()  # websockets wants connect() entered as a context manager
        self._ws = self._stack.enter_context(
            connect(
                f"ws://{host}:{port}",
                compression=None,
                max_size=max_size,
                open_timeout=timeout,
                ping_interval=60,
                ping_timeout=timeout,
            )
        )
        self.timeout = timeout
        self.metadata: dict[str, Any] = P.unpackb(self._ws.recv(timeout=timeout))

    def _call(self, endpoint: str, payload: dict[str, Any]) -> Any:
        return self.send_raw(P.packb({**payload, "endpoint": endpoint}))

    def send_raw(self, data: bytes | str) -> Any:
        """Send one frame as is; returns the decoded reply (text replies as str), raising
        ``ServerError`` for an error frame."""
        self._ws.send(data)
        reply = self._ws.recv(timeout=self.timeout)
        if isinstance(reply, str):
            if reply.startswith(P.ERROR_PREFIX):
                raise ServerError(reply[len(P.ERROR_PREFIX) :])
            return reply
        return P.unpackb(reply)

    def infer(self, obs: dict[str, Any]) -> np.ndarray:
        out = self._call("infer", obs)
        if not isinstance(out, np.ndarray):
            raise ServerError(f"expected an action array, got {type(out).__name__}")
        return out

    def reset(self, info: dict[str, Any] | None = None) -> str:
        return self._call("reset", info or {})

    def health(self) -> dict[str, Any]:
        return self._call("health", {})

    def http_health(self) -> dict[str, Any]:
        with urllib.request.urlopen(f"http://{self.host}:{self.port}/healthz", timeout=10) as r:  # noqa: S310
            return json.loads(r.read())

    def close(self) -> None:
        self._stack.close()

    def __enter__(self) -> PolicyClient:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


@dataclass
class ClientCheckConfig:
    """Check a DreamZero / roboarena policy server: metadata, health, one infer on a blank observation."""

    host: str = "127.0.0.1"
    port: int = 8000
    prompt: str = "pick up the object"


def main(argv: Sequence[str] | None = None) -> None:
    """``dreamzero-client [--host=127.0.0.1] [--port=8000] [--prompt=...]``: check a server: metadata,
    health, and one ``infer`` on a blank observation shaped from the metadata (three cameras, joints,
    gripper, prompt, session id)."""
    from dreamzero_policy.cli_args import parse_cli

    a = parse_cli(ClientCheckConfig, argv, "dreamzero-client")
    with PolicyClient(a.host, a.port) as c:
        print("metadata:", c.metadata)
        print("health:", c.health())
        h, w = c.metadata.get("image_resolution") or (180, 320)
        obs: dict[str, Any] = {k: np.zeros((h, w, 3), np.uint8) for k in P.IMAGE_KEYS}
        obs |= {
            P.JOINT_POSITION: np.zeros(P.JOINT_DIM, np.float32),
            P.GRIPPER_POSITION: np.zeros(P.GRIPPER_DIM, np.float32),
            P.PROMPT: a.prompt,
            P.SESSION_ID: "dreamzero-client-check",
        }
        actions = c.infer(obs)
        print(
            f"actions: shape {actions.shape} dtype {actions.dtype} range [{actions.min():.3f}, {actions.max():.3f}]"
        )
        print("reset:", c.reset())


if __name__ == "__main__":
    main()
