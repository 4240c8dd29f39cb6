"""The code base is ruff-clean (rules in pyproject.toml)."""

import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def test_ruff_clean():
    dirs = [d for d in ("dreamzero_policy", "lerobot_policy_dreamzero", "envs", "configs", "eval", "tests")
            if (ROOT / d).exists()]
    proc = subprocess.run([sys.executable, "-m", "ruff", "check", *dirs], cwd=ROOT, capture_output=True, text=True)
    assert proc.returncode == 0, proc.stdout + proc.stderr
