"""Make LeRobot's asynchronous vector envs work with third-party gym packages (``--env.type=pusht`` etc.).

Two faults of LeRobot 0.6.1 meet in ``lerobot-eval --env.type=pusht`` with its default async envs:

1. ``EnvConfig.create_envs`` imports the env's package (``gym_pusht``, which registers
   ``gym_pusht/PushT-v0``) in the main process only, then builds an ``AsyncVectorEnv`` with
   ``context="forkserver"``: the workers fork from a fresh forkserver process that never imported the
   package, so ``gym.make`` fails there (``NamespaceNotFound: Namespace gym_pusht not found``).
2. The eval loop probes ``task_description`` and ``task`` on the sub-envs (``get_attr`` / ``call``) and
   catches ``AttributeError`` for envs that have none (PushT, ALOHA). With async envs the worker that raised it shuts down, so the
   next step fails (``'NoneType' object has no attribute 'send'``).

Smallest reproductions, without this project::

    from lerobot.envs.configs import PushtEnv
    PushtEnv().create_envs(n_envs=2, use_async_envs=True)   # 1: NamespaceNotFound in every worker
    # with gym_pusht imported in the workers:
    vec.call("task_description")   # 2: AttributeError, and the workers are gone

Until LeRobot fixes them (import ``package_name`` inside ``_make_one``; answer missing attributes in the
worker), our plugin, which every LeRobot command imports before it builds envs, does this for the
package of the ``--env.type`` on the command line: it registers ``TaskDescriptionFallback`` (an empty
``task_description`` / ``task`` for envs that have no instruction: the eval loop then uses "", as it
does for them in sync mode) on that package's gym ids, and has the forkserver preload this module, which repeats it there.
"""

from __future__ import annotations

import dataclasses
import importlib
import importlib.util
import logging
import multiprocessing
import os
from collections.abc import Sequence

import gymnasium as gym
from gymnasium.envs.registration import WrapperSpec

log = logging.getLogger(__name__)
ENV_VAR = "DREAMZERO_VECTOR_ENV_PACKAGE"  # read by this module when the forkserver preloads it


class TaskDescriptionFallback(gym.Wrapper):
    """``task_description`` and ``task`` (the two attributes the eval loop probes) of the wrapped env,
    either one standing in for the other, or "" when it has neither."""

    def _first(self, *names: str) -> str:
        for name in names:
            if self.env.has_wrapper_attr(name):
                return self.env.get_wrapper_attr(name)
        return ""

    @property
    def task_description(self) -> str:
        return self._first("task_description", "task")

    @property
    def task(self) -> str:
        return self._first("task", "task_description")


_WRAPPER = WrapperSpec("TaskDescriptionFallback", f"{__name__}:TaskDescriptionFallback", {})


def env_package(argv: Sequence[str]) -> str | None:
    """The gym package of the ``--env.type`` given in ``argv`` (None if none, ours, or not installed)."""
    env_type = next((a.split("=", 1)[1] for a in argv if a.startswith("--env.type=")), None)
    if env_type is None:
        return None
    try:
        from lerobot.envs.configs import EnvConfig

        package = EnvConfig.get_choice_class(env_type)().package_name
    except Exception as e:  # noqa: BLE001 - an env we cannot build here is LeRobot's to report
        log.debug("no async-env fix for --env.type=%s: %s", env_type, e)
        return None
    if package == __package__ or importlib.util.find_spec(package) is None:
        return None
    return package


def register_fallback(package: str) -> list[str]:
    """Import ``package`` (it registers its gym ids) and add the wrapper to those ids; returns them."""
    importlib.import_module(package)
    done = []
    for env_id, spec in list(gym.registry.items()):
        entry = spec.entry_point if isinstance(spec.entry_point, str) else getattr(spec.entry_point, "__module__", "")
        if entry.split(":")[0].split(".")[0] != package or _WRAPPER in spec.additional_wrappers:
            continue
        gym.registry[env_id] = dataclasses.replace(spec, additional_wrappers=(*spec.additional_wrappers, _WRAPPER))
        done.append(env_id)
    return done


def fix_async_envs(argv: Sequence[str]) -> str | None:
    """Apply the fix here and in the forkserver workers for the ``--env.type`` of ``argv``."""
    package = env_package(argv)
    if package is None:
        return None
    register_fallback(package)
    os.environ[ENV_VAR] = package  # inherited by the forkserver, which then imports this module
    multiprocessing.set_forkserver_preload(["__main__", __name__])
    return package


if os.environ.get(ENV_VAR):  # the forkserver preloading this module (idempotent anywhere else)
    register_fallback(os.environ[ENV_VAR])
