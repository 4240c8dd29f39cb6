"""LeRobot robot-side tools drive the policy on the simulated robot ``dz_sim``: ``lerobot-rollout``
(in-process, sync inference), the async policy server's type check, and our guarded async loop."""

import numpy as np
import pytest
import torch
from lerobot.configs.types import FeatureType, PolicyFeature

import lerobot_policy_dreamzero  # noqa: F401  (what plugin discovery imports)
from dreamzero_policy.configuration_dreamzero import DreamZeroJaxConfig
from dreamzero_policy.modeling_dreamzero import DreamZeroJaxPolicy
from dreamzero_policy.processor_dreamzero import make_dreamzero_jax_pre_post_processors
from dreamzero_policy.serving import DzSimRobot, DzSimRobotConfig
from dreamzero_policy.serving.async_exec import ChunkExecutor
from dreamzero_policy.serving.guards import ActionGuard
from dreamzero_policy.serving.planner import PolicyPlanner
from eval.robot_loop import run_loop

S = 32
STATS = {
    k: {
        "q01": torch.full((2,), -1.0),
        "q99": torch.full((2,), 1.0),
        "min": torch.full((2,), -1.0),
        "max": torch.full((2,), 1.0),
        "mean": torch.zeros(2),
        "std": torch.ones(2),
    }
    for k in ("observation.state", "action")
}


@pytest.fixture(scope="module")
def saved_policy(tmp_path_factory):
    cfg = DreamZeroJaxConfig(
        input_features={
            "observation.state": PolicyFeature(FeatureType.STATE, (2,)),
            "observation.images.top": PolicyFeature(FeatureType.VISUAL, (3, S, S)),
        },
        output_features={"action": PolicyFeature(FeatureType.ACTION, (2,))},
        num_inference_steps=2,
        cfg_scale=1.0,
        device="cpu",
        view_height=S,
        view_width=S,
    )
    path = tmp_path_factory.mktemp("policy")
    policy = DreamZeroJaxPolicy(cfg)
    policy.save_pretrained(path)
    pre, post = make_dreamzero_jax_pre_post_processors(cfg, STATS)
    pre.save_pretrained(path)
    post.save_pretrained(path)
    return path, policy, pre, post


def test_sim_robot_through_lerobot_factory():
    from lerobot.robots.utils import make_robot_from_config

    robot = make_robot_from_config(DzSimRobotConfig(image_size=S))
    assert isinstance(robot, DzSimRobot)
    robot.connect()
    obs = robot.get_observation()
    assert set(obs) == {"x.pos", "y.pos", "top"} and obs["top"].shape == (S, S, 3)
    assert robot.send_action({"x.vel": 0.1, "y.vel": -0.1}) == pytest.approx({"x.vel": 0.1, "y.vel": -0.1})
    with pytest.raises(ValueError, match="non-finite"):
        robot.send_action({"x.vel": float("nan"), "y.vel": 0.0})
    robot.disconnect()


def test_lerobot_rollout_drives_the_sim_robot(saved_policy, monkeypatch):
    from lerobot.configs.policies import PreTrainedConfig
    from lerobot.rollout.configs import RolloutConfig
    from lerobot.scripts.lerobot_rollout import rollout

    path, *_ = saved_policy
    sent, selected = [], []
    real = DzSimRobot.send_action
    monkeypatch.setattr(DzSimRobot, "send_action", lambda self, a: sent.append(a) or real(self, a))
    select = DreamZeroJaxPolicy.select_action
    monkeypatch.setattr(DreamZeroJaxPolicy, "select_action",
                        lambda self, *a, **k: selected.append(select(self, *a, **k)) or selected[-1])
    pcfg = PreTrainedConfig.from_pretrained(path)
    pcfg.pretrained_path = path
    cfg = RolloutConfig(
        robot=DzSimRobotConfig(image_size=S),
        policy=pcfg,
        fps=10,
        duration=3.0,
        task="move to the red target",
        play_sounds=False,
        return_to_initial_position=False,
    )
    rollout(cfg)
    # Every action the robot received is one the policy chose (the first chunk compiles inside the timed
    # loop, so how many fit in 3 s varies).
    assert len(sent) == len(selected) > 0
    assert all(set(a) == {"x.vel", "y.vel"} and np.isfinite(list(a.values())).all() for a in sent)


def test_async_policy_server_accepts_dreamzero_jax():
    from lerobot.async_inference import policy_server

    assert "dreamzero_jax" in policy_server.SUPPORTED_POLICIES  # the list the server checks


def test_guarded_async_loop_on_the_sim_robot(saved_policy):
    _, policy, pre, post = saved_policy
    robot = DzSimRobot(DzSimRobotConfig(image_size=S))
    robot.connect()
    planner = PolicyPlanner(policy, pre, post)
    guard = ActionGuard.from_stats({"action": {"min": [-0.05, -0.05], "max": [0.05, 0.05]}})
    ex = ChunkExecutor(planner.plan, guard, threshold=2, record_fn=planner.record, reset_fn=planner.reset)
    sent = []

    def observe():
        o = robot.get_observation()
        return {
            "observation.state": torch.tensor([[o["x.pos"], o["y.pos"]]], dtype=torch.float32),
            "observation.images.top": torch.from_numpy(o["top"]).permute(2, 0, 1)[None].float() / 255,
            "task": robot.task,
        }, False

    def act(a):
        sent.append(a)
        robot.send_action({"x.vel": float(a[0]), "y.vel": float(a[1])})

    stats = run_loop(ex, observe, act, hz=20, steps=12)
    ex.close()
    assert stats.steps == 12 and len(ex.handovers) >= 2
    assert np.abs(np.stack(sent)).max() <= 0.05 + 1e-7  # clamped to the configured bounds
    assert stats.jitter()["n"] == 11


def test_async_policy_server_plans_for_the_robot_client(saved_policy):
    """LeRobot's gRPC policy server, called in-process as the robot client would (no sockets): policy
    instructions for ``dreamzero_jax`` are accepted and an observation of ``dz_sim`` yields a timed chunk."""
    import pickle
    import time as _time

    from lerobot.async_inference.configs import PolicyServerConfig
    from lerobot.async_inference.helpers import (
        RemotePolicyConfig,
        TimedObservation,
        map_robot_keys_to_lerobot_features,
    )
    from lerobot.async_inference.policy_server import PolicyServer
    from lerobot.transport import services_pb2

    path, *_ = saved_policy
    robot = DzSimRobot(DzSimRobotConfig(image_size=S))
    robot.connect()
    feats = map_robot_keys_to_lerobot_features(robot)
    server = PolicyServer(PolicyServerConfig())
    ctx = type("Ctx", (), {"peer": lambda self: "test-client"})()
    spec = RemotePolicyConfig("dreamzero_jax", str(path), feats, actions_per_chunk=4, device="cpu")
    server.SendPolicyInstructions(services_pb2.PolicySetup(data=pickle.dumps(spec)), ctx)
    raw = {**robot.get_observation(), "task": "move to the red target"}
    chunk = server._predict_action_chunk(
        TimedObservation(timestamp=_time.time(), timestep=0, observation=raw)
    )
    assert len(chunk) == 4 and [a.get_timestep() for a in chunk] == [0, 1, 2, 3]
    assert all(a.get_action().shape == (2,) and torch.isfinite(a.get_action()).all() for a in chunk)
