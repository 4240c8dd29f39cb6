"""eval.peers: the lerobot-train / lerobot-eval command lines, the budget arithmetic and the eval_info.json
parsing (pure functions; the real runs are too slow for a unit test)."""

from __future__ import annotations

from pathlib import Path

import pytest

from eval.peers import (
    eval_command,
    parse_eval_info,
    peer_policy_flags,
    steps_for_budget,
    subprocess_env,
    train_command,
)


def _flags(cmd: list[str]) -> dict[str, str]:
    return dict(a.removeprefix("--").split("=", 1) for a in cmd[1:])


@pytest.mark.parametrize("kind", ["act", "diffusion"])
def test_train_command_is_offline_and_from_scratch(kind: str) -> None:
    cmd = train_command(kind, Path("/d"), "local/x", Path("/o"), steps=123, seed=7, batch_size=8)
    assert Path(cmd[0]).name == "lerobot-train"
    f = _flags(cmd)
    assert f["policy.type"] == kind and f["steps"] == "123" and f["seed"] == "7" and f["batch_size"] == "8"
    assert f["dataset.repo_id"] == "local/x" and f["dataset.root"] == "/d" and f["output_dir"] == "/o"
    assert f["policy.pretrained_backbone_weights"] == "null"  # no ImageNet download
    assert f["policy.push_to_hub"] == "false" and f["wandb.enable"] == "false" and f["policy.device"] == "cpu"
    assert f["save_freq"] == "0" and f["env_eval_freq"] == "0"


def test_diffusion_settings_fit_64px_and_cheap_inference() -> None:
    f = _flags(train_command("diffusion", Path("/d"), "r", Path("/o"), 1, 0, 8, image_size=64))
    assert f["policy.crop_shape"] == "[56,56]"  # 84/96 of 64
    assert f["policy.noise_scheduler_type"] == "DDIM" and f["policy.num_inference_steps"] == "10"
    assert f["policy.use_group_norm"] == "true"
    assert "policy.crop_shape" not in _flags(train_command("act", Path("/d"), "r", Path("/o"), 1, 0, 8))
    with pytest.raises(ValueError):
        peer_policy_flags("pi0", 64)


def test_steps_for_budget() -> None:
    assert steps_for_budget(100.0, seconds_per_step=2.0) == 50
    assert steps_for_budget(101.9, seconds_per_step=2.0) == 50  # never over budget
    assert steps_for_budget(1.0, seconds_per_step=2.0) == 1  # always trains
    with pytest.raises(ValueError):
        steps_for_budget(10.0, 0.0)


def test_eval_command() -> None:
    cmd = eval_command(Path("/p"), "button-press-v3,drawer-open-v3", 3, 100, 40, 64, Path("/e"), 10, ["--x=1"])
    assert Path(cmd[0]).name == "lerobot-eval" and cmd[-1] == "--x=1"
    f = _flags(cmd)
    assert f["env.type"] == "dz_metaworld" and f["env.task"] == "button-press-v3,drawer-open-v3"
    assert f["eval.n_episodes"] == "3" and f["eval.batch_size"] == "3"  # capped by the episodes per task
    assert f["env.episode_length"] == "40" and f["env.image_size"] == "64" and f["seed"] == "100"
    assert f["eval.use_async_envs"] == "false" and f["policy.path"] == "/p"


def test_parse_eval_info_per_task() -> None:
    # lerobot-eval's layout (lerobot/scripts/lerobot_eval.py: eval_policy_all), one group per comma item.
    def task(group: str, tid: int, succ: list[bool]) -> dict:
        return {"task_group": group, "task_id": tid, "metrics": {"successes": succ, "sum_rewards": [0.0] * len(succ)}}

    info = {
        "per_task": [task("button-press-v3", 0, [True, False]), task("easy", 0, [True, True]),
                     task("easy", 1, [False, False])],
        "per_group": {},
        "overall": {"pc_success": 50.0, "n_episodes": 6, "eval_s": 12.0},
    }
    res = parse_eval_info(info, {"button-press-v3": ["button-press-v3"], "easy": ["reach-v3", "push-v3"]})
    assert res["per_task"] == {
        "button-press-v3": {"pc_success": 50.0, "n_episodes": 2},
        "reach-v3": {"pc_success": 100.0, "n_episodes": 2},
        "push-v3": {"pc_success": 0.0, "n_episodes": 2},
    }
    assert res["pc_success"] == 50.0 and res["n_episodes"] == 6 and res["eval_s"] == 12.0
    assert set(parse_eval_info(info)["per_task"]) == {"button-press-v3", "easy", "easy/1"}


def test_threads_env() -> None:
    env = subprocess_env(1)
    assert env["OMP_NUM_THREADS"] == "1" and env["HF_HUB_OFFLINE"] == "1"
    assert subprocess_env()["HF_HUB_OFFLINE"] == "1"
