"""Robot-side serving: roboarena websocket server/client, guards, asynchronous chunk execution,
and a LeRobot robot backed by our gymnasium sims (``dz_sim``)."""

from dreamzero_policy.serving.sim_robot import DzSimRobot, DzSimRobotConfig  # noqa: E402,F401  (registers dz_sim)
