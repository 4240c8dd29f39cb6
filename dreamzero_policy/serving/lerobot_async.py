"""LeRobot's asynchronous inference (``lerobot.async_inference``) with ``dreamzero_jax``.

LeRobot 0.6.1's policy server refuses policy types missing from ``constants.SUPPORTED_POLICIES`` and,
unlike ``lerobot-record`` / ``lerobot-rollout`` / the robot client, does not load third-party plugins.
The list is a module-level ``list`` that ``policy_server`` imports by reference, so adding our type
to it at runtime (no change to LeRobot's files) makes the stock server accept it. ``dreamzero-async-server``
does that, imports the plugin, and then runs LeRobot's own ``serve`` with its usual flags.
"""

from __future__ import annotations

POLICY_TYPE = "dreamzero_jax"


def register_async_policy(required: bool = False) -> bool:
    """Add ``dreamzero_jax`` to the async server's supported types. Without LeRobot's ``async`` extra
    (grpc) there is nothing to register: returns False, or raises when ``required``."""
    try:
        from lerobot.async_inference import constants
    except ImportError:
        if required:
            raise
        return False

    if POLICY_TYPE not in constants.SUPPORTED_POLICIES:
        constants.SUPPORTED_POLICIES.append(POLICY_TYPE)
    return True


def main() -> None:
    import lerobot_policy_dreamzero  # noqa: F401  (registers the policy and the dz_sim robot)

    register_async_policy(required=True)
    from lerobot.async_inference.policy_server import serve

    serve()
