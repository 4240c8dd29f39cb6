"""dreamzero_envs.record: expert demos -> local LeRobotDataset v3 (image frames) -> reloaded offline, round-tripped."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
from lerobot.datasets.lerobot_dataset import LeRobotDataset

import dreamzero_envs as envs
from dreamzero_envs.experts import ScriptedExpert
from dreamzero_envs.record import main, record


def replay(name: str, seeds: list[int], image_size: int, cameras: str, noise_std: float) -> list[dict]:
    """What the recorder should have written: per episode the frames' states, actions, images and task."""
    env = envs.make(name, image_size=image_size, cameras=cameras)
    expert = ScriptedExpert(env, noise_std=noise_std)
    episodes = []
    for seed in seeds:
        expert.reseed(seed)
        obs, _ = env.reset(seed=seed)
        ep: dict = {"state": [], "action": [], "images": {c: [] for c in obs["pixels"]}}
        ep["task"] = env.unwrapped.task_description
        done = False
        while not done:
            action = expert()
            ep["state"].append(obs["agent_pos"])
            ep["action"].append(action)
            for cam, img in obs["pixels"].items():
                ep["images"][cam].append(img)
            obs, _, terminated, truncated, _ = env.step(action)
            done = terminated or truncated
        episodes.append(ep)
    return episodes


def test_cli_records_and_dataset_reloads_offline(tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    root = tmp_path / "dz_reach"
    main(["--env=reach", "--episodes=3", f"--root={root}", "--seed=11", "--image_size=32",
          "--cameras=top,wrist", "--max_episode_steps=40"])  # fmt: skip
    assert "wrote 3 episodes" in capsys.readouterr().out

    ds = LeRobotDataset("local/dz_reach", root=root)
    expected = replay("reach", [11, 12, 13], image_size=32, cameras="top,wrist", noise_std=0.1)

    assert ds.num_episodes == 3
    assert ds.num_frames == sum(len(ep["action"]) for ep in expected)
    assert ds.fps == 10
    assert ds.meta.robot_type == "dz_point2d"
    feats = ds.features
    assert feats["observation.images.top"]["dtype"] == "image"
    assert tuple(feats["observation.images.wrist"]["shape"]) == (32, 32, 3)
    assert feats["observation.state"]["names"] == ["x", "y"]
    assert feats["action"]["dtype"] == "float32" and tuple(feats["action"]["shape"]) == (2,)
    assert ds.meta.video_keys == [] and set(ds.meta.camera_keys) == {
        "observation.images.top",
        "observation.images.wrist",
    }

    for ep_idx, ep in enumerate(expected):
        meta = ds.meta.episodes[ep_idx]
        assert meta["length"] == len(ep["action"])
        assert meta["tasks"] == [ep["task"]]
        start = meta["dataset_from_index"]
        for t in range(len(ep["action"])):
            item = ds[start + t]
            assert item["episode_index"].item() == ep_idx and item["frame_index"].item() == t
            assert item["task"] == ep["task"]
            np.testing.assert_array_equal(item["action"].numpy(), ep["action"][t])
            np.testing.assert_array_equal(item["observation.state"].numpy(), ep["state"][t])
            for cam in ("top", "wrist"):
                # PNG is lossless: the float [0, 1] CHW frame is the env's uint8 HWC frame / 255.
                img = item[f"observation.images.{cam}"].numpy().transpose(1, 2, 0)
                np.testing.assert_array_equal(np.round(img * 255).astype(np.uint8), ep["images"][cam][t])


def test_record_second_embodiment_and_rejects_existing_root(tmp_path: Path) -> None:
    root = tmp_path / "dz_arm"
    summary = record("reach_arm", 2, root, seed=0, image_size=32, repo_id="local/arm")
    assert summary.episodes == 2 and summary.failed_attempts == 0 and summary.seeds == (0, 1)
    ds = LeRobotDataset("local/arm", root=root)
    assert ds.num_frames == summary.frames
    assert tuple(ds.features["observation.state"]["shape"]) == (3,)
    assert tuple(ds.features["action"]["shape"]) == (3,)
    assert set(ds.meta.camera_keys) == {"observation.images.top"}
    assert all(t.startswith("move to the ") for t in ds.meta.tasks.index)
    with pytest.raises(ValueError, match="already exists"):
        record("reach_arm", 1, root)
    with pytest.raises(ValueError, match="n_episodes"):
        record("reach_arm", 0, tmp_path / "other")
