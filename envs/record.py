"""Roll out a scripted expert and write the demonstrations as a local LeRobotDataset (v3).

    python -m dreamzero_envs.record --env=reach --episodes=200 --root=data/dz_reach --seed=0
    python -m dreamzero_envs.record --env=metaworld --tasks=button-press-v3,drawer-open-v3 --episodes=50 \
        --root=data/dz_metaworld      # MetaWorld's scripted experts: dreamzero_envs.record_metaworld

Frames are stored as `dtype: image` (PNG inside parquet), so no FFmpeg/video codec is needed to write or
read. Features: `observation.images.<cam>` (H, W, 3) uint8, `observation.state`, `action` (float32), and
the per-frame `task` (the episode's instruction). Episode i uses env seed `seed + attempt`; failed expert
episodes are dropped (and counted) so that every stored episode succeeds.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import draccus
from lerobot.datasets.lerobot_dataset import LeRobotDataset
from lerobot.utils.constants import ACTION, OBS_IMAGES, OBS_STATE

import dreamzero_envs as envs
from dreamzero_envs.experts import ScriptedExpert
from dreamzero_envs.reach_base import LAYOUTS, ReachEnv, parse_cameras


@dataclass(frozen=True)
class RecordSummary:
    root: Path
    repo_id: str
    episodes: int
    frames: int
    failed_attempts: int
    seeds: tuple[int, ...]


def dataset_features(env: ReachEnv, actions: bool = True) -> dict[str, dict]:
    """LeRobotDataset feature spec for an (unwrapped) reach env (``actions=False``: no `action` feature)."""
    size = (env.image_size, env.image_size, 3)
    features: dict[str, dict] = {
        f"{OBS_IMAGES}.{cam}": {"dtype": "image", "shape": size, "names": ["height", "width", "channel"]}
        for cam in env.cameras
    }
    features[OBS_STATE] = {"dtype": "float32", "shape": (env.state_dim,), "names": list(env.state_names)}
    if actions:
        features[ACTION] = {"dtype": "float32", "shape": (env.action_dim,), "names": list(env.action_names)}
    return features


def record(
    env_name: str,
    n_episodes: int,
    root: str | Path,
    seed: int = 0,
    repo_id: str | None = None,
    image_size: int = 64,
    cameras: str | Sequence[str] = "top",
    noise_std: float = 0.1,
    max_episode_steps: int | None = None,
    layout: str = "fixed",
    actions: bool = True,
) -> RecordSummary:
    """Record `n_episodes` successful expert episodes of `env_name` ('reach' or 'reach_arm') under `root`
    (which must not exist yet). Deterministic given the arguments. ``actions=False`` stores the same
    episodes without their actions (video-only data: ``dreamzero-train --video_only.root``)."""
    if n_episodes < 1:
        raise ValueError(f"n_episodes must be >= 1, got {n_episodes}")
    root = Path(root)
    if root.exists():
        raise ValueError(f"dataset root {root} already exists; choose a new directory")
    kwargs: dict = {"image_size": image_size, "cameras": ",".join(parse_cameras(cameras)), "layout": layout}
    if max_episode_steps is not None:
        kwargs["max_episode_steps"] = max_episode_steps
    env = envs.make(env_name, **kwargs)
    base: ReachEnv = env.unwrapped
    repo_id = repo_id or f"local/dz_{env_name}"
    dataset = LeRobotDataset.create(
        repo_id=repo_id,
        fps=base.metadata["render_fps"],
        features=dataset_features(base, actions),
        root=root,
        robot_type=base.robot_type,
        use_videos=False,
    )
    expert = ScriptedExpert(env, noise_std=noise_std)
    kept: list[int] = []
    failed = 0
    frames = 0
    attempt = 0
    # Bounded retries: the experts succeed on essentially every seed, so this only guards a bad config.
    while len(kept) < n_episodes:
        if attempt >= 2 * n_episodes + 10:
            dataset.finalize()
            raise RuntimeError(
                f"expert failed {failed} of {attempt} episodes on {env_name}; check the config"
            )
        episode_seed = seed + attempt
        attempt += 1
        expert.reseed(episode_seed)
        obs, info = env.reset(seed=episode_seed)
        n_frames = 0
        terminated = truncated = False
        while not (terminated or truncated):
            action = expert()
            frame = {f"{OBS_IMAGES}.{cam}": obs["pixels"][cam] for cam in base.cameras}
            frame[OBS_STATE] = obs["agent_pos"]
            if actions:
                frame[ACTION] = action
            frame["task"] = base.task_description
            dataset.add_frame(frame)
            n_frames += 1
            obs, _, terminated, truncated, info = env.step(action)
        if info["is_success"]:
            dataset.save_episode()
            kept.append(episode_seed)
            frames += n_frames
        else:
            dataset.clear_episode_buffer()
            failed += 1
    dataset.finalize()
    env.close()
    return RecordSummary(root, repo_id, len(kept), frames, failed, tuple(kept))


METAWORLD = "metaworld"  # --env value recorded by dreamzero_envs.record_metaworld


@dataclass
class RecordConfig:
    episodes: int  # successful episodes to keep (per task for metaworld)
    root: str  # output directory (must not exist)
    env: str = "reach"  # "reach", "reach_arm" or "metaworld"
    tasks: str | None = None  # metaworld only: comma list of task names or difficulty groups
    seed: int = 0
    repo_id: str | None = None  # default local/dz_<env>
    image_size: int = 64
    cameras: str = "top"  # comma-separated subset of top,wrist
    noise_std: float = 0.1
    max_episode_steps: int | None = None  # metaworld: default 500 (MetaWorld's episode length)
    layout: str = "fixed"  # "fixed", "slots" or "random" (reach sims only)
    actions: bool = True  # false: store no `action` feature (video-only episodes from the same experts)


def _main_metaworld(args: RecordConfig) -> None:
    if not args.tasks:
        raise SystemExit("--env=metaworld needs --tasks=<task>[,<task>...], e.g. --tasks=button-press-v3")
    if args.cameras != "top" or args.layout != "fixed":
        raise SystemExit("--cameras and --layout are reach-sim options; --env=metaworld has one camera")
    try:
        from dreamzero_envs.metaworld_env import MAX_PATH_LENGTH
        from dreamzero_envs.record_metaworld import record_metaworld
    except ImportError as e:
        raise SystemExit(f"--env=metaworld needs the `metaworld` extra (uv sync --extra metaworld): {e}") from None
    try:
        summary = record_metaworld(
            args.tasks,
            args.episodes,
            args.root,
            seed=args.seed,
            repo_id=args.repo_id,
            image_size=args.image_size,
            episode_length=args.max_episode_steps or MAX_PATH_LENGTH,
            noise_std=args.noise_std,
            actions=args.actions,
        )
    except ValueError as e:
        raise SystemExit(f"record: {e}") from None
    print(
        f"wrote {sum(summary.episodes.values())} episodes / {summary.frames} frames of {list(summary.episodes)} "
        f"to {summary.root} (repo_id={summary.repo_id}, failed attempts dropped per task: {summary.failed})"
    )


def main(argv: Sequence[str] | None = None) -> None:
    args = draccus.parse(RecordConfig, args=argv)
    if args.env == METAWORLD:
        return _main_metaworld(args)
    if args.tasks is not None:
        raise SystemExit(f"--tasks is for --env={METAWORLD}; {args.env} has one task")
    if args.env not in envs.ENV_SPECS:
        raise SystemExit(f"--env={args.env}: choose from {[*sorted(envs.ENV_SPECS), METAWORLD]}")
    if args.layout not in LAYOUTS:
        raise SystemExit(f"--layout={args.layout}: choose from {list(LAYOUTS)}")
    try:
        summary = record(
            args.env,
            args.episodes,
            args.root,
            seed=args.seed,
            repo_id=args.repo_id,
            image_size=args.image_size,
            cameras=args.cameras,
            noise_std=args.noise_std,
            max_episode_steps=args.max_episode_steps,
            layout=args.layout,
            actions=args.actions,
        )
    except ValueError as e:
        raise SystemExit(f"record: {e}") from None
    print(
        f"wrote {summary.episodes} episodes / {summary.frames} frames of {args.env} to {summary.root} "
        f"(repo_id={summary.repo_id}, failed attempts dropped: {summary.failed_attempts})"
    )


if __name__ == "__main__":
    main()
