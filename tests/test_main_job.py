"""The main job's stages at toy size: every stage's output exists and is well-formed.

Slow (about 9 minutes on 2 cores, mostly process start-up and compilation): `pytest -m slow`.
"""

import json

import pytest


@pytest.mark.slow
def test_main_job_toy(tmp_path):
    from eval.main_job import MainJobConfig, run

    out = tmp_path / "mj"
    summary = run(MainJobConfig(toy=True, out=str(out)))
    assert (out / "demos" / "meta" / "info.json").exists()
    assert (out / "policy" / "config.json").exists() and (out / "policy" / "model.safetensors").exists()
    assert (out / "policy" / "policy_preprocessor.json").exists()
    for name in ("eval_trained", "eval_blank"):
        info = json.loads((out / name / "eval_info.json").read_text())
        assert info["overall"]["n_episodes"] == 2
    assert list((out / "eval_trained" / "videos").rglob("*.mp4"))
    assert (out / "imagination.png").stat().st_size > 0
    assert set(summary["success_pct"]) == {"trained", "blank_instruction", "random"}
    assert json.loads((out / "summary.json").read_text())["seconds"]["train"] > 0
