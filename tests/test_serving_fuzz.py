"""Seeded fuzz of the websocket protocol: random and malformed frames against the real server and
``RoboarenaBackend`` (with a model-free planner that checks everything it receives). Every frame must get
a protocol error frame or a valid reply on the same connection, and valid requests keep being served."""

from __future__ import annotations

import math
import random
import string
from collections.abc import Callable, Iterator
from typing import Any

import msgpack
import numpy as np
import pytest
from serving_stubs import CHUNK, StubPlanner

from dreamzero_policy.serving import protocol as P
from dreamzero_policy.serving.backend import RoboarenaBackend
from dreamzero_policy.serving.client import PolicyClient
from dreamzero_policy.serving.server import PolicyServer

SEED, CASES = 20240611, 320
LIMIT = 512 * 1024
BAD_DTYPES = ["O", "V8", "c8", "c16", "U4", "S3", "M8[s]", "m8", "f4,f4", "(2,)f4", "junk", "", 5, None, [1]]
ODD_SHAPES = [[2**40, 2**40], [-1], [1.5], "abc", None, [2**62, 4], [0, 5, 3], [1] * 20, [True, 3], {"a": 1}]
ENDPOINTS = ["infer", "reset", "health", "train", "", None, 3, ["infer"]]


def valid(rng: random.Random, frames: int = 1) -> dict[str, Any]:
    shape = (24, 40, 3) if frames == 1 else (frames, 24, 40, 3)
    nrng = np.random.default_rng(rng.randrange(2**32))
    obs: dict[str, Any] = {k: nrng.integers(0, 256, shape, dtype=np.uint8) for k in P.IMAGE_KEYS}
    return obs | {
        P.JOINT_POSITION: nrng.uniform(-1, 1, 7).astype(np.float32),
        P.GRIPPER_POSITION: [float(nrng.uniform())],
        P.PROMPT: "pick up the cup",
        P.SESSION_ID: "fuzz",
        "endpoint": "infer",
    }


def junk(rng: random.Random, depth: int = 0) -> Any:
    kinds = ["int", "float", "str", "bytes", "none", "bool", "ext", "array"]
    kinds += ["list", "map"] if depth < 3 else []
    k = rng.choice(kinds)
    if k == "int":
        return rng.choice([0, -1, 2**63 - 1, -(2**63), rng.randrange(-1000, 1000)])
    if k == "float":
        return rng.choice([math.nan, math.inf, -0.0, 1e308, rng.uniform(-2, 2)])
    if k == "str":
        return "".join(rng.choice(string.printable + "é✓\u0000") for _ in range(rng.randrange(12)))
    if k == "bytes":
        return rng.randbytes(rng.randrange(16))
    if k == "none":
        return None
    if k == "bool":
        return rng.random() < 0.5
    if k == "ext":
        return msgpack.ExtType(rng.choice([0, 1, 127]), rng.randbytes(rng.randrange(13)))
    if k == "array":
        dt = rng.choice([np.uint8, np.float32, np.float64, np.int16, np.bool_, np.float16, ">f4"])
        shape = tuple(rng.randrange(0, 5) for _ in range(rng.randrange(0, 5)))
        return np.zeros(shape, dt)
    if k == "list":
        return [junk(rng, depth + 1) for _ in range(rng.randrange(4))]
    keys = [rng.randrange(100), rng.randbytes(3), None, 1.5, True, f"k{depth}"]  # hashable, not only str
    return {rng.choice(keys) if rng.random() < 0.2 else f"k{i}": junk(rng, depth + 1) for i in range(rng.randrange(4))}


def forged_array(rng: random.Random) -> dict:
    dtype = rng.choice(BAD_DTYPES + ["<f4", "|u1", "?"])
    shape = rng.choice(ODD_SHAPES + [[rng.randrange(4) for _ in range(3)]])
    forged = {"__ndarray__": True, "data": rng.randbytes(rng.randrange(64)), "dtype": dtype, "shape": shape}
    if rng.random() < 0.2:
        forged.pop(rng.choice(list(forged)))
    return forged


def forged_generic(rng: random.Random) -> dict:
    return {"__npgeneric__": True, "data": junk(rng, 3), "dtype": rng.choice(BAD_DTYPES + ["<f4", "<i2", "?"])}


def bad_camera(rng: random.Random) -> Any:
    """A camera entry that can never be valid."""
    options: list[Callable[[], Any]] = [
        lambda: np.zeros((24, 40), np.uint8),
        lambda: np.zeros((24, 40, 4), np.uint8),
        lambda: np.zeros((0, 24, 40, 3), np.uint8),
        lambda: np.zeros((P.MAX_FRAMES_PER_REQUEST + 1, 1, 1, 3), np.uint8),
        lambda: np.zeros((1, 2, 24, 40, 3), np.uint8),
        lambda: np.full((24, 40, 3), 2.0, np.float32),
        lambda: np.full((24, 40, 3), np.nan, np.float64),
        lambda: np.zeros((24, 40, 3), np.int16),
        lambda: np.zeros((24, 40, 3), np.bool_),
        lambda: {"__ndarray__": True, "data": b"", "dtype": "|u1", "shape": [2**20, 2**20, 0, 3]},
        lambda: {"__ndarray__": True, "data": b"\x00" * 12, "dtype": rng.choice(BAD_DTYPES), "shape": [1, 1, 3]},
        lambda: {"__ndarray__": True, "data": b"\x00" * 8, "dtype": "|u1", "shape": rng.choice(ODD_SHAPES)},
        lambda: rng.choice([None, "img", 3, [1, 2, 3], {"a": 1}, b"\x00" * 9, msgpack.ExtType(1, b"")]),
    ]
    return rng.choice(options)()


Case = tuple[str, bytes | str, str]  # (kind, frame, expected: "error", "ok" or "any")


def cases(rng: random.Random) -> Iterator[Case]:
    for _ in range(CASES):
        kind = rng.choices(
            ["text", "bytes", "truncated", "deep", "junk_map", "field", "camera", "generic", "counts", "big",
             "valid", "health", "reset"],
            weights=[4, 5, 6, 1, 12, 14, 14, 4, 3, 1, 4, 2, 2],
        )[0]
        if kind == "text":
            yield kind, "".join(rng.choice(string.printable) for _ in range(rng.randrange(40))), "error"
        elif kind == "bytes":
            bad_timestamp = b"\x81\xa1a\xd4\xff\x00"  # {"a": ext -1 (timestamp) with 1 byte of data}
            yield kind, bad_timestamp if rng.random() < 0.1 else rng.randbytes(rng.randrange(1, 200)), "error"
        elif kind == "truncated":
            data = P.packb(valid(rng))
            yield kind, data[: rng.randrange(1, len(data))], "error"
        elif kind == "deep":
            yield kind, b"\x91" * rng.randrange(600, 5000) + b"\xc0", "error"
        elif kind == "junk_map":
            msg = {f"j{i}": junk(rng) for i in range(rng.randrange(5))}
            if rng.random() < 0.8:
                msg["endpoint"] = rng.choice(ENDPOINTS)
            yield kind, msgpack.packb(msg, default=P._encode, use_bin_type=rng.random() < 0.8), "any"
        elif kind == "field":
            msg = valid(rng)
            key = rng.choice([P.JOINT_POSITION, P.GRIPPER_POSITION, P.PROMPT, P.SESSION_ID, *P.IMAGE_KEYS])
            if rng.random() < 0.25:
                del msg[key]
            else:
                msg[key] = junk(rng) if rng.random() < 0.7 else forged_array(rng)
            yield kind, P.packb(msg), "any"
        elif kind == "camera":
            yield kind, P.packb(valid(rng) | {rng.choice(P.IMAGE_KEYS): bad_camera(rng)}), "error"
        elif kind == "generic":
            yield kind, P.packb(valid(rng) | {P.JOINT_POSITION: forged_generic(rng)}), "error"
        elif kind == "counts":
            msg = valid(rng, frames=2)
            msg[P.WRIST] = msg[P.WRIST][:1]
            yield kind, P.packb(msg), "error"
        elif kind == "big":
            yield kind, P.packb(valid(rng) | {"padding": np.zeros(LIMIT, np.uint8)}), "error"
        elif kind == "valid":
            yield kind, P.packb(valid(rng, frames=rng.choice([1, 1, 2, 5]))), "ok"
        else:
            yield kind, P.packb({"endpoint": kind, **({"why": junk(rng)} if rng.random() < 0.5 else {})}), "ok"


@pytest.fixture(scope="module")
def served():
    planner = StubPlanner(size=(24, 32))
    server = PolicyServer(RoboarenaBackend(planner), port=0, max_message_bytes=LIMIT).start()
    yield server, planner
    server.stop()


def check_still_serving(client: PolicyClient, planner: StubPlanner) -> None:
    before = len(planner.planned)
    np.testing.assert_array_equal(client.infer({k: v for k, v in valid(random.Random(0)).items() if k != "endpoint"}),
                                  CHUNK)
    assert len(planner.planned) == before + 1 and client.health()["status"] == "ok"


def test_fuzzed_frames_get_protocol_errors_or_valid_replies(served):
    server, planner = served
    rng = random.Random(SEED)
    seen: dict[str, int] = {}
    with PolicyClient(port=server.port, timeout=60) as client:
        for i, (kind, frame, expected) in enumerate(cases(rng)):
            seen[kind] = seen.get(kind, 0) + 1
            planned = len(planner.planned)
            client._ws.send(frame)
            reply = client._ws.recv(timeout=60)  # the connection stays open, whatever was sent
            where = f"case {i} ({kind}): {frame[:120]!r}"
            if isinstance(reply, str) and reply.startswith(P.ERROR_PREFIX):
                # every rejection is a protocol error: no other exception type escaped validation
                assert reply.startswith(P.ERROR_PREFIX + "ProtocolError: "), f"{where} -> {reply}"
                assert expected != "ok", f"{where} -> {reply}"
                assert len(planner.planned) == planned, f"{where}: the planner ran for a rejected request"
            else:
                assert expected != "error", f"{where} -> {reply!r:.200}"
                out = reply if isinstance(reply, str) else P.unpackb(reply)
                if isinstance(out, np.ndarray):
                    np.testing.assert_array_equal(out, CHUNK, err_msg=where)
                elif isinstance(out, str):
                    assert out == P.RESET_REPLY, f"{where} -> {out}"
                else:
                    assert isinstance(out, dict) and out["status"] == "ok", f"{where} -> {out}"
            if i % 40 == 0:
                check_still_serving(client, planner)
        check_still_serving(client, planner)
        assert client.http_health()["status"] == "ok"
    assert min(seen.values()) >= 1 and len(seen) == 13, seen  # every kind of case ran
    with PolicyClient(port=server.port, timeout=60) as again:  # and new connections are served
        check_still_serving(again, planner)
