from dreamzero_policy import *  # noqa: F401,F403  (LeRobot imports lerobot_policy_* distributions)
