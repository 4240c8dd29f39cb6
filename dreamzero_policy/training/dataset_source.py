"""Open the LeRobotDataset a run trains on, without surprises.

A ``root`` the user names must already hold a LeRobotDataset (``meta/info.json``): a typo must not turn
into a model-hub lookup (offline: a raw connection error; online: training on whatever public dataset
has that name), nor create an empty directory. Without a root, the repo id resolves the way
``lerobot-train`` resolves it (the local cache under ``$HF_LEROBOT_HOME``, then the Hub): naming only a
repo id is asking for a hub dataset.
"""

from __future__ import annotations

from pathlib import Path

from lerobot.datasets.lerobot_dataset import LeRobotDataset, LeRobotDatasetMetadata

INFO = Path("meta") / "info.json"


def check_local_root(root: str | Path) -> Path:
    """``root`` as a Path if it holds a LeRobotDataset; a clear error (and nothing created) if not."""
    path = Path(root).expanduser()
    if not path.exists():
        raise FileNotFoundError(f"dataset root {path} does not exist (pass the directory that holds meta/info.json)")
    if not path.is_dir():
        raise NotADirectoryError(f"dataset root {path} is a file, not a LeRobotDataset directory")
    if not (path / INFO).is_file():
        raise FileNotFoundError(
            f"dataset root {path} holds no LeRobotDataset ({INFO} missing); record one with "
            "`python -m dreamzero_envs.record` or point --dataset.root at an existing dataset"
        )
    return path


def open_dataset(
    repo_id: str,
    root: str | Path | None,
    episodes: list[int] | None = None,
    video_backend: str | None = None,
    revision: str | None = None,
) -> LeRobotDataset:
    if root:
        root = check_local_root(root)
    return LeRobotDataset(repo_id, root=root, episodes=episodes, video_backend=video_backend, revision=revision)


def open_metadata(repo_id: str, root: str | Path | None) -> LeRobotDatasetMetadata:
    return LeRobotDatasetMetadata(repo_id, root=check_local_root(root) if root else None)
