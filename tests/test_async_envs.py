"""LeRobot's async vector envs with a third-party gym package (PushT): the workers find the env and
survive the eval loop's attribute probes (see dreamzero_envs.vector_workers for LeRobot's two faults)."""

import subprocess
import sys

from dreamzero_envs.vector_workers import env_package

SCRIPT = """
import numpy as np
from dreamzero_envs.vector_workers import fix_async_envs
from lerobot.envs.configs import PushtEnv
assert fix_async_envs(["--env.type=pusht"]) == "gym_pusht"
vec = PushtEnv().create_envs(n_envs=2, use_async_envs=True)["pusht"][0]
assert type(vec).__name__ == "AsyncVectorEnv", type(vec)
vec.reset(seed=0)
assert tuple(vec.get_attr("task")) == ("", "") and tuple(vec.call("task_description")) == ("", "")
obs, *_ = vec.step(np.full((2, 2), 256.0, np.float32))  # the workers are still alive after the probes
assert obs["pixels"].shape[0] == 2
vec.close()
print("ok")
"""


def test_env_package_of_the_command_line():
    assert env_package(["--policy.type=dreamzero_jax", "--env.type=pusht"]) == "gym_pusht"
    assert env_package(["--env.type=dz_reach"]) is None  # our own envs need no fix
    assert env_package(["--env.type=no_such_env"]) is None and env_package([]) is None


def test_pusht_async_workers_find_the_env_and_survive_attribute_probes():
    # A fresh interpreter: the forkserver preload list only counts before the forkserver first starts.
    proc = subprocess.run([sys.executable, "-c", SCRIPT], capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0 and proc.stdout.strip().endswith("ok"), proc.stderr[-3000:]
