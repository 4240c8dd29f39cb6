"""metrics.jsonl survives a torn line and a resume: each step recorded once, readers never crash."""

import json

from dreamzero_policy.training.metrics_log import MetricsLog


def test_torn_tail_and_steps_past_the_checkpoint_are_dropped_on_resume(tmp_path):
    path = tmp_path / "metrics.jsonl"
    path.write_text("".join(json.dumps({"step": s, "loss": 1.0 / s}) + "\n" for s in range(1, 7)) + '{"step": 7, "lo')
    log = MetricsLog(path)
    assert [r["step"] for r in log.read()] == list(range(1, 7))  # the torn line is skipped, not a crash
    assert log.truncate_after(4) == 3  # steps 5, 6 and the torn line
    with log:
        for s in range(5, 9):
            log.append({"step": s, "loss": 0.5})
    steps = [json.loads(line)["step"] for line in path.read_text().splitlines()]
    assert steps == list(range(1, 9))


def test_a_fresh_run_starts_an_empty_log(tmp_path):
    path = tmp_path / "metrics.jsonl"
    path.write_text(json.dumps({"step": 1, "loss": 1.0}) + "\n")
    assert MetricsLog(path).truncate_after(0) == 1
    assert path.read_text() == ""
    assert MetricsLog(tmp_path / "absent.jsonl").read() == []
