"""Command lines of the servers: draccus flags, ``python -m``, and where the async gRPC server may bind."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest
from lerobot.async_inference.configs import PolicyServerConfig
from serving_stubs import DROID_CAMERAS, policy_config

from dreamzero_policy.cli_args import parse_cli
from dreamzero_policy.serving import lerobot_async
from dreamzero_policy.serving import protocol as P
from dreamzero_policy.serving.server import ServeConfig, is_loopback, main, make_server

ROOT = Path(__file__).resolve().parents[1]


@pytest.fixture(scope="module")
def saved_policy(tmp_path_factory) -> Path:
    from dreamzero_policy.modeling_dreamzero import DreamZeroJaxPolicy
    from dreamzero_policy.processor_dreamzero import make_dreamzero_jax_pre_post_processors

    cfg = policy_config()
    path = tmp_path_factory.mktemp("policy")
    DreamZeroJaxPolicy(cfg).save_pretrained(path)
    for pipeline in make_dreamzero_jax_pre_post_processors(cfg, None):
        pipeline.save_pretrained(path)
    return path


def test_serve_flags_build_the_server(saved_policy):
    cams = dict(zip(P.IMAGE_KEYS, reversed(DROID_CAMERAS), strict=True))
    cfg = parse_cli(
        ServeConfig,
        [f"--policy.path={saved_policy}", "--port=0", "--max_message_mb=2", "--max_frames_per_request=4",
         f"--camera_map={json.dumps(cams)}"],
        "dreamzero-serve",
    )
    server = make_server(cfg)
    assert server.host == "127.0.0.1" and server.max_bytes == 2 * 2**20
    assert server.backend.max_frames == 4
    assert server.backend.camera_map == {k: f"observation.images.{v}" for k, v in cams.items()}
    by_name = make_server(parse_cli(ServeConfig, [f"--policy.path={saved_policy}"], "dreamzero-serve"))
    assert by_name.backend.camera_map[P.WRIST] == "observation.images.wrist_image_left"


@pytest.mark.parametrize(
    "argv,match",
    [
        (["--port=abc"], r"dreamzero-serve: `port`: Couldn't parse 'abc' into an int"),
        ([], r"--policy\.path=DIR must name a local directory"),
        (["--policy.path=/nonexistent/policy"], r"--policy\.path=DIR must name a local directory"),
        (["--policy.path={p}", "--camera_map={{\"observation/wrist_image_left\": \"nope\"}}"],
         "must name each policy camera exactly once"),
    ],
)
def test_serve_bad_flags_are_one_line_errors(saved_policy, argv, match):
    with pytest.raises(SystemExit, match=match):
        main([a.format(p=saved_policy) for a in argv])


def test_python_dash_m_runs_the_server_main():
    proc = subprocess.run([sys.executable, "-m", "dreamzero_policy.serving.server", "--help"], cwd=ROOT,
                          capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0, proc.stderr
    assert "--policy.path" in proc.stdout and "--camera_map" in proc.stdout and "--max_frames_per_request" in proc.stdout


@pytest.mark.parametrize(
    "host,loopback",
    [("127.0.0.1", True), ("127.0.0.2", True), ("localhost", True), ("::1", True), ("[::1]", True),
     ("0.0.0.0", False), ("::", False), ("", False), ("192.168.1.5", False), ("robot.example.com", False)],
)
def test_is_loopback(host, loopback):
    assert is_loopback(host) is loopback


@pytest.fixture()
def served_configs(monkeypatch):
    got = []
    monkeypatch.setattr(lerobot_async, "_serve", got.append)  # no gRPC server is started
    return got


def test_async_server_binds_loopback_by_default(served_configs):
    lerobot_async.main(["--port=9001"])
    (cfg,) = served_configs
    assert type(cfg) is PolicyServerConfig  # exactly LeRobot's type: its draccus.wrap passes it through
    assert cfg.host == "127.0.0.1" and cfg.port == 9001


def test_async_server_refuses_remote_hosts_without_opt_in(served_configs, capsys):
    for host in ("0.0.0.0", "192.168.1.5", "::"):
        with pytest.raises(SystemExit, match=r"refusing to bind a non-loopback host.*unpickles.*--allow_remote=true"):
            lerobot_async.main([f"--host={host}"])
    assert not served_configs
    lerobot_async.main(["--host=0.0.0.0", "--allow_remote=true"])
    assert [c.host for c in served_configs] == ["0.0.0.0"]
    assert "WARNING: binding 0.0.0.0: LeRobot's async policy server unpickles" in capsys.readouterr().err


def test_async_server_help():
    with pytest.raises(SystemExit) as e:
        lerobot_async.main(["--help"])
    assert e.value.code == 0
