"""Baselines evaluated on exactly the seeds ``lerobot-eval --seed S`` uses (S, S+1, ...)."""

from __future__ import annotations

import dreamzero_envs as envs


def random_policy_success(env_name: str, seeds: range, image_size: int = 64, layout: str = "fixed",
                          max_episode_steps: int | None = None) -> float:
    """Percent of episodes a uniform-random policy (actions in the env's action space) solves."""
    wins = 0
    limit = {} if max_episode_steps is None else {"max_episode_steps": max_episode_steps}
    for seed in seeds:
        env = envs.make(env_name, image_size=image_size, layout=layout, **limit)
        wins += random_episode_succeeds(env, seed)
        env.close()
    return 100.0 * wins / max(1, len(seeds))


def random_episode_succeeds(env, seed: int) -> bool:
    """One episode of uniform-random actions (seeded like the env); True if the env reports success."""
    env.action_space.seed(seed)
    env.reset(seed=seed)
    done, info = False, {}
    while not done:
        _, _, term, trunc, info = env.step(env.action_space.sample())
        done = term or trunc
    return bool(info.get("is_success", False))


def expert_success(env_name: str, seeds: range, image_size: int = 64, layout: str = "fixed") -> float:
    """The scripted expert on the same seeds (the ceiling)."""
    from dreamzero_envs.experts import ScriptedExpert

    wins = 0
    for seed in seeds:
        env = envs.make(env_name, image_size=image_size, layout=layout)
        env.reset(seed=seed)
        expert = ScriptedExpert(env, seed=seed)
        done, info = False, {}
        while not done:
            _, _, term, trunc, info = env.step(expert())
            done = term or trunc
        wins += bool(info.get("is_success", False))
        env.close()
    return 100.0 * wins / max(1, len(seeds))


def metaworld_random_success(tasks: list[str], seeds: range, episode_length: int) -> dict[str, float]:
    """Per task, percent of episodes uniform-random actions solve, on the seeds ``lerobot-eval --seed S``
    gives each task (S, S+1, ...). The frames are unused, so the env renders at 16 px."""
    from dreamzero_envs.metaworld_env import DzMetaworldEnv

    out: dict[str, float] = {}
    for task in tasks:
        env = DzMetaworldEnv(task=task, episode_length=episode_length, image_size=16)
        wins = sum(random_episode_succeeds(env, seed) for seed in seeds)
        env.close()
        out[task] = 100.0 * wins / max(1, len(seeds))
    return out
