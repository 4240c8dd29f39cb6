"""Imported by LeRobot's plugin discovery (distributions named ``lerobot_policy_*``): registers
``--policy.type=dreamzero_jax``, the ``--env.type=dz_reach`` / ``dz_reach_arm`` / ``dz_metaworld`` simulators, the
``--robot.type=dz_sim`` simulated robot, and ``dreamzero_jax`` as an async-inference policy type; and works
around LeRobot's async vector envs not finding third-party gym packages (``dreamzero_envs.vector_workers``)."""

import sys

import dreamzero_envs.lerobot_config  # noqa: F401
from dreamzero_envs.vector_workers import fix_async_envs
from dreamzero_policy.configuration_dreamzero import DreamZeroJaxConfig  # noqa: F401
from dreamzero_policy.modeling_dreamzero import DreamZeroJaxPolicy  # noqa: F401
from dreamzero_policy.processor_dreamzero import make_dreamzero_jax_pre_post_processors  # noqa: F401
from dreamzero_policy.serving import DzSimRobot, DzSimRobotConfig  # noqa: F401
from dreamzero_policy.serving.lerobot_async import register_async_policy

register_async_policy()
fix_async_envs(sys.argv[1:])
