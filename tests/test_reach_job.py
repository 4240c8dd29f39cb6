"""The main job's stages at toy size (tiny preset, 3 demonstrations, 2 steps, 2 short episodes): every
stage's output exists and is well-formed. The full-size figures are in the README."""

import json

from eval_checks import check_eval_info
from safetensors.numpy import load_file


def test_reach_job_toy(tmp_path):
    from eval.reach_job import ReachJobConfig, run

    out = tmp_path / "mj"
    summary = run(ReachJobConfig(toy=True, out=str(out)))
    info = json.loads((out / "demos" / "meta" / "info.json").read_text())
    assert info["total_episodes"] == 3 and info["codebase_version"].startswith("v3")
    vae = json.loads((out / "vae" / "vae_fit.json").read_text())  # the fitted VAE and its held-out score
    assert vae["steps"] == 2 and vae["held_out_episodes"] == [2] and vae["held_out_psnr_db"] > 0
    pre = json.loads((out / "precomputed" / "stats.json").read_text())
    vae_cfg = json.loads((out / "vae" / "pretrained_model" / "config.json").read_text())
    assert pre["num_samples"] > 0 and pre["latents"]["mean"] == vae_cfg["latents_mean"]
    metrics = [json.loads(line) for line in (out / "train" / "metrics.jsonl").read_text().splitlines()]
    assert [m["step"] for m in metrics] == [1, 2] and all(m["loss"] > 0 for m in metrics)
    assert (out / "train" / "loss_curve.png").stat().st_size > 0

    policy = out / "train" / "pretrained_model"
    config = json.loads((policy / "config.json").read_text())
    assert config["type"] == "dreamzero_jax" and config["preset"] == "tiny"
    assert config["latents_mean"] == pre["latents"]["mean"]  # the stats the DiT was trained with
    assert (config["num_inference_steps"], config["cfg_scale"]) == (2, 1.0)  # as evaluated
    assert config["max_chunks_before_reset"] == 2  # the context is kept for two chunks
    weights = load_file(policy / "model.safetensors")
    assert weights and all(v.size for v in weights.values())
    assert (policy / "policy_preprocessor.json").exists() and (policy / "policy_postprocessor.json").exists()
    card = (policy / "README.md").read_text()  # the model card names the dataset and the measured success
    assert "local/dz_reach" in card and f"| {summary['success_pct']['trained']:.1f} % |" in card

    for name, key in (("eval_trained", "trained"), ("eval_reset_every_chunk", "context_reset_every_chunk"),
                      ("eval_blank", "blank_instruction")):
        overall = check_eval_info(out / name / "eval_info.json", 2)
        assert summary["success_pct"][key] == overall["pc_success"]
    videos = list((out / "eval_trained" / "videos").rglob("*.mp4"))
    assert videos and all(v.stat().st_size > 0 for v in videos)
    assert list((out / "eval_trained" / "videos").rglob("pred_episode_*.mp4"))  # imagined videos
    assert (out / "imagination.png").stat().st_size > 0
    scored = json.loads((out / "imagination.json").read_text())
    assert scored["seeds"] == [100_000] and scored["per_chunk"] == summary["imagined_future_psnr_db"]
    for chunk in scored["per_chunk"].values():  # 12 steps of 4-action chunks: every chunk scored
        assert chunk["frames"] > 0 and chunk["imagined_psnr_db"] > 0 and chunk["copy_last_psnr_db"] > 0
        assert 0 <= chunk["robot_found_pct"] <= 100  # dz_reach's robot is located in the frames as well

    on_disk = json.loads((out / "summary.json").read_text())
    assert on_disk["success_pct"] == summary["success_pct"]
    assert set(summary["success_pct"]) == {"trained", "context_reset_every_chunk", "blank_instruction", "random"}
    assert summary["success_pct"]["random"] == 100.0 * round(summary["success_pct"]["random"] / 100.0 * 2) / 2
    stages = {"record demonstrations", "fit the VAE to the frames", "precompute frozen encoders", "train and export",
              "evaluate trained policy (lerobot-eval)", "evaluate with the context reset every chunk (lerobot-eval)",
              "evaluate blank-instruction baseline (lerobot-eval)", "evaluate random baseline",
              "imagined futures, scored (held-out seeds)"}
    assert set(on_disk["seconds"]) == stages and all(t >= 0 for t in on_disk["seconds"].values())


def test_imagination_scores_pool_the_error_of_a_chunk():
    """A frame the copy-last baseline matches exactly (a robot at rest) must not make the chunk's PSNR infinite."""
    import numpy as np

    from dreamzero_policy.training.vae_fit import psnr
    from eval.imagination import Plan, score

    rng = np.random.default_rng(0)
    start = rng.uniform(-1, 1, (8, 8, 3))
    moved = np.clip(start + 0.2, -1, 1)
    imagined = np.stack([start * 0.9, moved * 0.9])
    at_rest = Plan(chunk=1, start=start, imagined=imagined, offsets=np.array([1, 2]), real=[start, start])
    moving = Plan(chunk=1, start=start, imagined=imagined, offsets=np.array([1, 2]), real=[moved, moved])
    late = Plan(chunk=2, start=start, imagined=imagined, offsets=np.array([1, 3]), real=[moved])  # 2nd never seen
    s = score([at_rest, moving, late])
    assert set(s) == {"1", "2"} and s["1"]["frames"] == 4 and s["2"]["frames"] == 1
    real = np.stack([start, start, moved, moved])
    assert np.isfinite(s["1"]["copy_last_psnr_db"])
    assert s["1"]["copy_last_psnr_db"] == psnr(np.stack([start] * 4), real)
    assert s["1"]["imagined_psnr_db"] == psnr(np.concatenate([imagined, imagined]), real)
    assert score([at_rest])["1"]["copy_last_psnr_db"] == float("inf")  # only when every frame is matched


def test_robot_position_score_tells_a_moving_robot_from_a_vanished_one():
    """PSNR prefers an imagined frame without the robot to a copy with the robot in its old place; the position
    score must not: a vanished robot counts as not found, a moved one by its distance to the real one."""
    import numpy as np

    from dreamzero_envs.reach_base import PALETTE
    from dreamzero_envs.reach_point import AGENT_COLOR, AGENT_RADIUS
    from dreamzero_envs.render import Camera, Canvas
    from eval.imagination import Plan, bright_centroid, score

    def frame(pos=None):  # dz_reach's own renderer: dark floor, the targets, the near-white robot
        c = Canvas(Camera((0.0, 0.0), 1.0, 32))
        for i, color in enumerate(PALETTE.values()):
            c.disc(np.array([-0.6 + 0.4 * i, 0.6]), 0.1, color)
        if pos is not None:
            c.disc(np.asarray(pos, float), AGENT_RADIUS, AGENT_COLOR)
        return c.image.astype(np.float32) / 127.5 - 1

    start, real = frame([-0.5, 0.0]), frame([0.0, 0.0])
    assert bright_centroid(frame()) is None  # the target is not taken for the robot
    moved = Plan(chunk=1, start=start, imagined=np.stack([real]), offsets=np.array([1]), real=[real])
    vanished = Plan(chunk=2, start=start, imagined=np.stack([frame()]), offsets=np.array([1]), real=[real])
    s = score([moved, vanished], locate=bright_centroid)
    assert s["1"]["robot_found_pct"] == 100.0 and s["1"]["robot_error_px"] < 0.5
    assert s["1"]["copy_last_robot_error_px"] > 5  # half the arena of a 32 px frame: 8 px
    assert s["2"]["robot_found_pct"] == 0.0 and s["2"]["robot_error_px"] is None
    assert s["2"]["imagined_psnr_db"] > s["2"]["copy_last_psnr_db"]  # the double penalty the position score avoids
    assert "robot_error_px" not in score([moved])["1"]  # no locator: PSNR only
