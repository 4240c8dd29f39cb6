"""LeRobot's own evaluation loop drives the policy: in-process (CI) and through the CLI (slow)."""

import os
import subprocess
import sys
from pathlib import Path

import pytest
from eval_checks import check_eval_info

import lerobot_policy_dreamzero  # noqa: F401  (what plugin discovery imports)
from dreamzero_policy.configuration_dreamzero import DreamZeroJaxConfig


def test_lerobot_eval_in_process(tmp_path):
    from lerobot.configs.eval import EvalConfig, EvalPipelineConfig
    from lerobot.scripts.lerobot_eval import eval_main

    from dreamzero_envs.lerobot_config import DzReachEnv

    cfg = EvalPipelineConfig(
        env=DzReachEnv(episode_length=6, image_size=32),
        eval=EvalConfig(n_episodes=2, batch_size=2),
        policy=DreamZeroJaxConfig(num_inference_steps=2, cfg_scale=1.0, device="cpu", view_height=32, view_width=32,
                                  save_predicted_video=True),
        output_dir=tmp_path / "eval",
    )
    eval_main(cfg)
    check_eval_info(tmp_path / "eval" / "eval_info.json", 2)
    videos = sorted((tmp_path / "eval" / "videos").rglob("eval_episode_*.mp4"))
    assert videos and all(v.stat().st_size > 0 for v in videos)
    # LeRobot's world-model hook: one imagined video per rollout batch, beside the eval videos. 6 steps with
    # 4-action chunks = 2 plans, each decoded to 4 * frames_per_block = 8 frames of the 32x32 model frame.
    (pred,) = (tmp_path / "eval" / "videos").rglob("pred_episode_*.mp4")
    assert pred.parent == videos[0].parent
    import av

    with av.open(str(pred)) as container:
        frames = [f.to_ndarray(format="rgb24") for f in container.decode(video=0)]
    assert len(frames) == 2 * 8 and frames[0].shape == (32, 32, 3)


@pytest.mark.slow
@pytest.mark.parametrize("env_args", [
    # LeRobot's defaults: PushT announces 384x384 and renders 96x96; asynchronous vector envs.
    ["--env.type=pusht", "--policy.default_task=push the T onto the target"],
    ["--env.type=aloha", "--env.episode_length=40", "--policy.action_dim=14", "--policy.state_dim=14",
     "--policy.view_height=48", "--policy.view_width=64", "--policy.default_task=insert the peg into the socket"],
    ["--env.type=dz_reach"],
    ["--env.type=dz_metaworld", "--env.task=button-press-v3", "--env.episode_length=12"],
])
def test_lerobot_eval_cli(tmp_path, env_args):
    """Needs the pusht / aloha / metaworld extras: `uv run --all-extras pytest -m slow` (aloha and MetaWorld
    render with MUJOCO_GL=egl)."""
    out = tmp_path / "eval"
    cmd = [str(Path(sys.executable).parent / "lerobot-eval"), "--policy.type=dreamzero_jax", *env_args,
           "--eval.n_episodes=2", "--eval.batch_size=2", "--policy.num_inference_steps=2", "--policy.device=cpu",
           f"--output_dir={out}"]
    env = dict(os.environ, HF_HUB_OFFLINE="1", MUJOCO_GL="egl")
    proc = subprocess.run(cmd, capture_output=True, text=True, env=env, timeout=1800)
    assert proc.returncode == 0, proc.stderr[-3000:]
    check_eval_info(out / "eval_info.json", 2)
    assert list((out / "videos").rglob("*.mp4"))
