"""Roboarena websocket protocol: round trip, malformed / oversized requests, reset and sessions, health."""

import threading
import time

import msgpack
import msgpack_numpy
import numpy as np
import pytest
import websockets
from lerobot.configs.types import FeatureType, PolicyFeature
from serving_stubs import CHUNK, DROID_CAMERAS, StubPlanner

from dreamzero_policy.configuration_dreamzero import DreamZeroJaxConfig
from dreamzero_policy.modeling_dreamzero import DreamZeroJaxPolicy
from dreamzero_policy.serving import protocol as P
from dreamzero_policy.serving.backend import RoboarenaBackend
from dreamzero_policy.serving.cameras import default_camera_map
from dreamzero_policy.serving.client import PolicyClient, ServerError
from dreamzero_policy.serving.planner import PolicyPlanner
from dreamzero_policy.serving.server import PolicyServer

CAMS = ("exterior_0", "exterior_1", "wrist")
LIMIT = 256 * 1024


def make_policy() -> DreamZeroJaxPolicy:
    feats = {"observation.state": PolicyFeature(FeatureType.STATE, (8,))}
    feats |= {f"observation.images.{c}": PolicyFeature(FeatureType.VISUAL, (3, 32, 32)) for c in CAMS}
    return DreamZeroJaxPolicy(
        DreamZeroJaxConfig(
            input_features=feats,
            output_features={"action": PolicyFeature(FeatureType.ACTION, (8,))},
            num_inference_steps=2,
            cfg_scale=1.0,
            device="cpu",
        )
    )


def obs(seed: int = 0, frames: int = 1, session: str | None = "a", prompt: str = "pick up the cup") -> dict:
    rng = np.random.default_rng(seed)
    shape = (24, 40, 3) if frames == 1 else (frames, 24, 40, 3)
    o = {k: rng.integers(0, 256, shape, dtype=np.uint8) for k in P.IMAGE_KEYS}
    o |= {
        P.JOINT_POSITION: rng.uniform(-1, 1, 7).astype(np.float32),
        P.GRIPPER_POSITION: rng.uniform(0, 1, 1).astype(np.float32),
        "observation/cartesian_position": np.zeros(6, np.float32),
        P.PROMPT: prompt,
    }
    if session is not None:
        o[P.SESSION_ID] = session
    return o


class CountingPlanner(PolicyPlanner):
    resets = 0

    def reset(self) -> None:
        self.resets += 1
        super().reset()


@pytest.fixture(scope="module")
def served():
    planner = CountingPlanner(make_policy())
    backend = RoboarenaBackend(planner)
    server = PolicyServer(backend, port=0, max_message_bytes=LIMIT).start()
    yield server, backend, planner
    server.stop()


@pytest.fixture()
def client(served):
    with PolicyClient(port=served[0].port, timeout=120) as c:
        yield c


def test_wire_encoding_round_trip_and_msgpack_numpy_package_arrays():
    msg = {
        "a": np.arange(12, dtype=np.float32).reshape(3, 4),
        "b": np.array([1, 2], np.uint8),
        "c": np.float32(2.5),
        "s": "text",
        "n": [1, {"x": np.zeros((0, 2), np.int64)}],
    }
    back = P.unpackb(P.packb(msg))
    for k in ("a", "b"):
        assert back[k].dtype == msg[k].dtype and np.array_equal(back[k], msg[k])
    assert back["c"] == 2.5 and isinstance(back["c"], np.float32) and back["s"] == "text"
    assert back["n"][1]["x"].shape == (0, 2)
    # the reference wire layout, spelled out, decodes too
    ref = msgpack.packb(
        {"x": {b"__ndarray__": True, b"data": np.ones(3, "<f4").tobytes(), b"dtype": "<f4", b"shape": (3,)}}
    )
    assert P.unpackb(ref)["x"].tolist() == [1.0, 1.0, 1.0]
    pkg = msgpack.packb({"x": np.arange(3, dtype=np.int16)}, default=msgpack_numpy.encode)
    assert P.unpackb(pkg)["x"].tolist() == [0, 1, 2]
    with pytest.raises(P.ProtocolError, match="payload"):
        P.unpackb(msgpack.packb({b"__ndarray__": True, b"data": b"123", b"dtype": "<f4", b"shape": [2]}))


def test_protocol_round_trip_matches_in_process(served, client):
    _, backend, _ = served
    assert client.metadata == {
        "image_resolution": [32, 32],
        "needs_wrist_camera": True,
        "n_external_cameras": 2,
        "needs_stereo_camera": False,
        "needs_session_id": True,
        "action_space": "joint_position",
    }
    assert client.reset() == P.RESET_REPLY
    first = client.infer(obs(0, session="rt"))
    second = client.infer(obs(1, frames=4, session="rt"))  # frames seen since the last request
    n = backend.planner.policy.config.actions_per_plan
    assert first.shape == second.shape == (n, 8) and first.dtype == np.float32 and np.isfinite(second).all()
    backend.reset()
    direct = [backend.infer(obs(0, session="rt")), backend.infer(obs(1, frames=4, session="rt"))]
    np.testing.assert_allclose(first, direct[0], atol=1e-6)
    np.testing.assert_allclose(second, direct[1], atol=1e-6)


@pytest.mark.parametrize(
    "frame,match",
    [
        ("a text frame", "binary msgpack"),
        (b"\xc1\xc1\xff", "undecodable"),
        (P.packb([1, 2, 3]), "must be a map"),
        (P.packb({"prompt": "x"}), "'endpoint'"),
        (P.packb({"endpoint": "train"}), "'endpoint'"),
        (
            P.packb({**{k: v for k, v in obs().items() if k != P.WRIST}, "endpoint": "infer"}),
            "missing camera 'observation/wrist_image_left'",
        ),
        (P.packb({**obs(), P.JOINT_POSITION: np.zeros(6, np.float32), "endpoint": "infer"}), "7 numbers"),
        (P.packb({**obs(), P.EXTERIOR_0: np.zeros((8, 8), np.uint8), "endpoint": "infer"}), "H, W, 3"),
        (P.packb({**obs(), P.PROMPT: "", "endpoint": "infer"}), "prompt"),
        (P.packb({**obs(), P.GRIPPER_POSITION: np.array([np.nan], np.float32), "endpoint": "infer"}), "NaN"),
    ],
)
def test_malformed_requests_get_error_frames_and_server_keeps_serving(client, frame, match):
    with pytest.raises(ServerError, match=match):
        client.send_raw(frame)
    assert client.health()["status"] == "ok"  # same connection still served
    assert client.infer(obs(2)).shape[1] == 8


def test_oversized_messages(served, client):
    big = {**obs(), "endpoint": "infer", "padding": np.zeros(LIMIT, np.uint8)}
    with pytest.raises(ServerError, match="exceeds the limit"):
        client.send_raw(P.packb(big))
    assert client.infer(obs(3)).shape[1] == 8
    # above the hard cap websockets refuses the frame and closes this one connection (1009) ...
    client._ws.send(P.packb({**big, "padding": np.zeros(3 * LIMIT, np.uint8)}))
    with pytest.raises(websockets.ConnectionClosed) as e:
        client._ws.recv(timeout=30)
    assert e.value.rcvd.code == 1009
    # ... and the server goes on serving new connections
    with PolicyClient(port=served[0].port, timeout=120) as again:
        assert again.infer(obs(4)).shape[1] == 8


def test_reset_and_session_change(served, client):
    _, backend, planner = served
    runner = planner.policy.runner
    client.infer(obs(0, session="s1"))
    before = planner.resets
    client.infer(obs(1, session="s1"))
    assert planner.resets == before and runner.chunks_done == 2  # same session: the context grows
    client.infer(obs(2, session="s2"))
    assert planner.resets == before + 1 and runner.chunks_done == 1 and backend.session == "s2"
    assert client.reset({"reason": "episode over"}) == P.RESET_REPLY
    assert planner.resets == before + 2 and runner.state is None and backend.session is None
    client.infer(obs(3, session="s3"))  # first session after a reset: no extra reset
    assert planner.resets == before + 2 and runner.chunks_done == 1
    # a new prompt in the same session restarts the context too (the policy keys it on the task)
    client.infer(obs(4, session="s3", prompt="open the drawer"))
    assert runner.chunks_done == 1


def test_health_endpoints(served, client):
    h = client.health()
    assert h["status"] == "ok" and h["connections"] >= 1 and h["health"] >= 1
    assert client.http_health()["status"] == "ok"


def test_binds_loopback_by_default():
    server = PolicyServer(RoboarenaBackend.__new__(RoboarenaBackend))
    assert server.host == "127.0.0.1"
    with pytest.raises(ValueError, match="max_message_bytes"):
        PolicyServer(server.backend, max_message_bytes=0)


def test_backend_rejects_a_policy_without_the_roboarena_dims():
    cfg_feats = {
        "observation.state": PolicyFeature(FeatureType.STATE, (2,)),
        "observation.images.top": PolicyFeature(FeatureType.VISUAL, (3, 32, 32)),
    }
    policy = DreamZeroJaxPolicy(
        DreamZeroJaxConfig(
            input_features=cfg_feats,
            output_features={"action": PolicyFeature(FeatureType.ACTION, (2,))},
            num_inference_steps=2,
            cfg_scale=1.0,
            device="cpu",
        )
    )
    with pytest.raises(ValueError, match="state and action dim 8"):
        RoboarenaBackend(PolicyPlanner(policy))


# ---------------------------------------------------------------- cameras are matched by name


@pytest.mark.parametrize(
    "cameras,expected",
    [
        (("exterior_0", "exterior_1", "wrist"), ("exterior_0", "exterior_1", "wrist")),
        # DROID training data numbers its exteriors 1 and 2; roboarena 0 and 1
        (DROID_CAMERAS, DROID_CAMERAS),
        # sorted key order would feed the wrist stream to exterior 0 here
        (("a_wrist", "exterior_image_1_left", "exterior_image_2_left"),
         ("exterior_image_1_left", "exterior_image_2_left", "a_wrist")),
        (("exterior_10", "exterior_9", "wrist_cam"), ("exterior_9", "exterior_10", "wrist_cam")),
    ],
)
def test_default_camera_map_matches_by_name(cameras, expected):
    keys = [f"observation.images.{c}" for c in cameras]
    want = {rk: f"observation.images.{c}" for rk, c in zip(P.IMAGE_KEYS, expected, strict=True)}
    assert default_camera_map(keys) == want
    assert RoboarenaBackend(StubPlanner(cameras)).camera_map == want


def test_default_camera_map_covers_fewer_cameras():
    got = default_camera_map(["observation.images.wrist", "observation.images.exterior_image_1_left"])
    assert got == {P.EXTERIOR_0: "observation.images.exterior_image_1_left", P.WRIST: "observation.images.wrist"}
    meta = RoboarenaBackend(StubPlanner(("wrist", "exterior_image_1_left"))).metadata()
    assert meta.n_external_cameras == 1 and meta.needs_wrist_camera


@pytest.mark.parametrize(
    "cameras",
    [("top", "exterior_0", "wrist"), ("wrist_left", "wrist_right", "exterior_0"),
     ("exterior_0", "exterior_1", "exterior_2")],
)
def test_unmatched_cameras_need_an_explicit_map(cameras):
    with pytest.raises(ValueError, match=r"cannot match the policy cameras .* give an explicit camera map, e\.g\. "
                                         r"--camera_map="):
        RoboarenaBackend(StubPlanner(cameras))
    explicit = {P.EXTERIOR_0: cameras[0], P.EXTERIOR_1: cameras[1], P.WRIST: f"observation.images.{cameras[2]}"}
    backend = RoboarenaBackend(StubPlanner(cameras), camera_map=explicit)
    assert backend.camera_map[P.EXTERIOR_0] == f"observation.images.{cameras[0]}"
    with pytest.raises(ValueError, match="must name each policy camera exactly once"):
        RoboarenaBackend(StubPlanner(cameras), camera_map={P.WRIST: cameras[0], P.EXTERIOR_0: cameras[0]})


def test_configured_camera_missing_from_a_request():
    backend = RoboarenaBackend(StubPlanner(("top", "wrist")), camera_map={"cam/top": "top", P.WRIST: "wrist"})
    o = obs()
    with pytest.raises(P.ProtocolError, match="missing camera 'cam/top'"):
        backend.infer(o)
    o["cam/top"] = o.pop(P.EXTERIOR_0)
    np.testing.assert_array_equal(backend.infer(o), CHUNK)


# ---------------------------------------------------------------- per-request bounds, work outside the lock


def test_frames_and_pixels_per_request_are_bounded_before_any_conversion():
    planner = StubPlanner()
    backend = RoboarenaBackend(planner, max_frame_pixels=64 * 64)
    many = obs() | {k: np.zeros((10_000, 1, 1, 3), np.uint8) for k in P.IMAGE_KEYS}  # ~90 KB on the wire
    t = time.perf_counter()
    with pytest.raises(P.ProtocolError, match=r"10000 frames in one request; at most 16"):
        backend.infer(many)
    assert time.perf_counter() - t < 0.5 and not planner.planned and not planner.recorded
    with pytest.raises(P.ProtocolError, match=r"65x64 frames exceed 4096 pixels"):
        backend.infer(obs() | {P.WRIST: np.zeros((65, 64, 3), np.uint8)})
    np.testing.assert_array_equal(backend.infer(obs(frames=P.MAX_FRAMES_PER_REQUEST)), CHUNK)
    assert len(planner.recorded) == P.MAX_FRAMES_PER_REQUEST - 1
    small = RoboarenaBackend(planner, max_frames=2)
    with pytest.raises(P.ProtocolError, match="3 frames in one request; at most 2"):
        small.infer(obs(frames=3))


class SlowPrepare(RoboarenaBackend):
    """prepare() blocks until released: stands in for a large request being decoded and resized."""

    def __init__(self, planner):
        super().__init__(planner)
        self.entered, self.release = threading.Event(), threading.Event()

    def prepare(self, o):
        if o.get(P.SESSION_ID) == "slow":
            self.entered.set()
            assert self.release.wait(30)
        return super().prepare(o)


def test_request_validation_runs_outside_the_policy_lock():
    backend = SlowPrepare(StubPlanner())
    server = PolicyServer(backend, port=0, max_message_bytes=LIMIT).start()
    try:
        with PolicyClient(port=server.port, timeout=30) as slow, PolicyClient(port=server.port, timeout=30) as fast:
            slow._ws.send(P.packb({**obs(session="slow"), "endpoint": "infer"}))
            assert backend.entered.wait(30)
            np.testing.assert_array_equal(fast.infer(obs(session="fast")), CHUNK)  # not queued behind it
            backend.release.set()
            np.testing.assert_array_equal(P.unpackb(slow._ws.recv(timeout=30)), CHUNK)
    finally:
        backend.release.set()
        server.stop()
