"""The main job's stages at toy size (tiny preset, 3 demonstrations, 2 steps, 2 short episodes): every
stage's output exists and is well-formed. The full-size figures are in the README."""

import json

from eval_checks import check_eval_info
from safetensors.numpy import load_file


def test_main_job_toy(tmp_path):
    from eval.main_job import MainJobConfig, run

    out = tmp_path / "mj"
    summary = run(MainJobConfig(toy=True, out=str(out)))
    info = json.loads((out / "demos" / "meta" / "info.json").read_text())
    assert info["total_episodes"] == 3 and info["codebase_version"].startswith("v3")
    pre = json.loads((out / "precomputed" / "stats.json").read_text())
    assert pre["num_samples"] > 0 and len(pre["latents"]["mean"]) == len(pre["latents"]["std"])
    metrics = [json.loads(line) for line in (out / "train" / "metrics.jsonl").read_text().splitlines()]
    assert [m["step"] for m in metrics] == [1, 2] and all(m["loss"] > 0 for m in metrics)
    assert (out / "train" / "loss_curve.png").stat().st_size > 0

    policy = out / "train" / "pretrained_model"
    config = json.loads((policy / "config.json").read_text())
    assert config["type"] == "dreamzero_jax" and config["preset"] == "tiny"
    assert config["latents_mean"] == pre["latents"]["mean"]  # the stats the DiT was trained with
    assert (config["num_inference_steps"], config["cfg_scale"]) == (2, 1.0)  # as evaluated
    weights = load_file(policy / "model.safetensors")
    assert weights and all(v.size for v in weights.values())
    assert (policy / "policy_preprocessor.json").exists() and (policy / "policy_postprocessor.json").exists()
    card = (policy / "README.md").read_text()  # the model card names the dataset and the measured success
    assert "local/dz_reach" in card and f"| {summary['success_pct']['trained']:.1f} % |" in card

    for name in ("eval_trained", "eval_blank"):
        overall = check_eval_info(out / name / "eval_info.json", 2)
        assert summary["success_pct"]["trained" if name == "eval_trained" else "blank_instruction"] == overall["pc_success"]
    videos = list((out / "eval_trained" / "videos").rglob("*.mp4"))
    assert videos and all(v.stat().st_size > 0 for v in videos)
    assert (out / "imagination.png").stat().st_size > 0

    on_disk = json.loads((out / "summary.json").read_text())
    assert on_disk["success_pct"] == summary["success_pct"]
    assert set(summary["success_pct"]) == {"trained", "blank_instruction", "random"}
    assert summary["success_pct"]["random"] == 100.0 * round(summary["success_pct"]["random"] / 100.0 * 2) / 2
    stages = {"record demonstrations", "precompute frozen encoders", "train and export",
              "evaluate trained policy (lerobot-eval)", "evaluate blank-instruction baseline (lerobot-eval)",
              "evaluate random baseline", "imagined vs real frames"}
    assert set(on_disk["seconds"]) == stages and all(t >= 0 for t in on_disk["seconds"].values())
