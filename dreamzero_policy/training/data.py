"""Training windows over a local LeRobotDataset (v3), sampled the way the reference samples them.

A window starts at an anchor step and covers ``num_chunks`` chunks of ``actions_per_block`` steps, all
inside one contiguous run of one episode with one instruction. Per chunk: its actions, one state at the
chunk start, and ``4 * frames_per_block`` video frames spread evenly over the chunk (the reference's 8
frames at stride 3 for 24 actions), plus the anchor frame first. Steps past the run's end repeat the
last step and are masked out of the action loss.

Sample order is a pure function of (seed, global position), so a resumed run sees the same batches and
the same augmentation draws; each host reads only its own slice of every global batch.
"""

from __future__ import annotations

from dataclasses import dataclass
from functools import lru_cache

import numpy as np
import torch
from lerobot.datasets.lerobot_dataset import LeRobotDataset
from lerobot.utils.constants import ACTION, OBS_STATE

from dreamzero_policy.configuration_dreamzero import DreamZeroJaxConfig
from dreamzero_policy.inference.observation import crop_views, tile_views
from dreamzero_policy.inference.relative_actions import to_quantile_space
from dreamzero_policy.models.presets import ModelConfig
from dreamzero_policy.models.tokenizer import Tokenizer


@dataclass(frozen=True)
class WindowSpec:
    num_chunks: int
    actions_per_block: int
    frames_per_block: int

    @property
    def frames_per_chunk(self) -> int:
        return 4 * self.frames_per_block

    @property
    def num_frames(self) -> int:
        return 1 + self.num_chunks * self.frames_per_chunk

    def offsets(self) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """Step offsets from the anchor of (frames (T,), actions (Na,), states (K,))."""
        k, apb, nf = self.num_chunks, self.actions_per_block, self.frames_per_chunk
        per_chunk = ((np.arange(nf) + 1) * apb) // nf
        frames = np.concatenate([[0], (np.arange(k)[:, None] * apb + per_chunk[None]).reshape(-1)])
        return frames, np.arange(k * apb), np.arange(k) * apb


def quantile_normalize(x: np.ndarray, stats: dict[str, np.ndarray]) -> np.ndarray:
    """q01/q99 -> [-1, 1] as LeRobot's QUANTILES mode, then clamped as the reference."""
    q01, q99 = np.asarray(stats["q01"], np.float32), np.asarray(stats["q99"], np.float32)
    return np.clip(to_quantile_space(x, q01, q99), -1.0, 1.0).astype(np.float32)


def _summary(x: np.ndarray) -> dict[str, np.ndarray]:
    x = x.astype(np.float64)
    return {
        "q01": np.quantile(x, 0.01, axis=0),
        "q99": np.quantile(x, 0.99, axis=0),
        "mean": x.mean(0),
        "std": x.std(0),
        "min": x.min(0),
        "max": x.max(0),
    }


class EpisodeTable:
    """The numeric columns of a dataset in memory, and its runs of (episode, instruction). ``state`` /
    ``action`` are None when the dataset lacks them or (``actions=False``) when its actions are not used."""

    def __init__(self, ds: LeRobotDataset, actions: bool = True):
        hf = ds.hf_dataset.with_format(None)
        wanted = [k for k in (OBS_STATE, ACTION) if k in ds.meta.features and (actions or k != ACTION)]
        cols = hf.select_columns([*wanted, "episode_index", "task_index"])[:]
        self.state = np.asarray(cols[OBS_STATE], np.float32) if OBS_STATE in wanted else None
        self.action = np.asarray(cols[ACTION], np.float32) if ACTION in wanted else None
        self.episode = np.asarray(cols["episode_index"], np.int64)
        self.task = np.asarray(cols["task_index"], np.int64)
        key = self.episode * (1 + int(self.task.max(initial=0))) + self.task
        starts = np.flatnonzero(np.concatenate([[True], key[1:] != key[:-1]]))
        ends = np.concatenate([starts[1:], [len(key)]])
        self.run_end = np.repeat(ends, ends - starts)  # exclusive end of each row's run
        self.tasks = {
            int(r): str(t) for t, r in zip(ds.meta.tasks.index, ds.meta.tasks["task_index"], strict=True)
        }

    def __len__(self) -> int:
        return len(self.episode)


def dataset_stats(
    table: EpisodeTable, relative_dims: list[int], actions_per_block: int
) -> dict[str, dict[str, np.ndarray]]:
    """State/action statistics computed over every frame of the dataset, actions relative to their
    chunk's start state on ``relative_dims``.

    LeRobot's ``meta/stats.json`` is not used: v3 aggregates per-episode q01/q99 by averaging them, which is
    not a quantile of the dataset (on the reach demos it gives q01/q99 = -0.16/0.15 for actions that span
    [-1, 1], so QUANTILES normalisation would clamp almost every action to +-1)."""
    if table.action is None or table.state is None:
        raise ValueError("statistics come from labelled data: this dataset has no 'action' or no 'observation.state'")
    idx = np.arange(len(table))[:, None] + np.arange(actions_per_block)[None]
    idx = np.minimum(idx, table.run_end[:, None] - 1)
    rel = table.action[idx].copy()  # (N, apb, A)
    rel[..., relative_dims] -= table.state[:, None, relative_dims]
    actions = rel.reshape(-1, rel.shape[-1]) if relative_dims else table.action
    return {
        OBS_STATE: {k: v.astype(np.float32) for k, v in _summary(table.state).items()},
        ACTION: {k: v.astype(np.float32) for k, v in _summary(actions).items()},
    }


def color_jitter(x: np.ndarray, rng: np.random.Generator, strength: float) -> np.ndarray:
    """Brightness, contrast and saturation jitter of (T, H, W, 3) frames in [0, 1], one draw per window."""
    b, c, s = (1.0 + rng.uniform(-strength, strength, 3)).astype(np.float32)
    x = x * b
    mean = x.mean(axis=(-3, -2, -1), keepdims=True)
    x = (x - mean) * c + mean
    gray = x.mean(axis=-1, keepdims=True)
    x = (x - gray) * s + gray
    return np.clip(x, 0.0, 1.0)


class WindowDataset(torch.utils.data.Dataset):
    """Raw training windows (frames tiled and scaled to [-1, 1], normalised padded actions/state, text
    token ids). Index = global sample position; see the module docstring."""

    def __init__(
        self,
        ds: LeRobotDataset,
        policy: DreamZeroJaxConfig,
        model: ModelConfig,
        tokenizer: Tokenizer,
        *,
        num_chunks: int,
        seed: int = 0,
        train: bool = True,
        jitter: float = 0.1,
        stats: dict[str, dict[str, np.ndarray]] | None = None,
        video_only: bool = False,
        cameras: list[str] | None = None,
    ):
        """``video_only``: the dataset's actions (if any) are not read; every window has an all-zero
        ``action_mask`` (the loss's mark of a video-only sample) and is normalised with ``stats``, which must
        then come from the labelled data."""
        if num_chunks < 1:
            raise ValueError(f"num_chunks must be >= 1, got {num_chunks}")
        if video_only and stats is None:
            raise ValueError("video-only windows need the labelled data's statistics (stats=...)")
        self.ds, self.policy, self.tokenizer = ds, policy, tokenizer
        self.spec = WindowSpec(num_chunks, model.dit.actions_per_block, model.dit.frames_per_block)
        self.action_dim, self.state_dim = model.dit.action_dim, model.dit.state_dim
        self.table = EpisodeTable(ds, actions=not video_only)
        if not video_only and (self.table.action is None or self.table.state is None):
            missing = [k for k, v in ((ACTION, self.table.action), (OBS_STATE, self.table.state)) if v is None]
            raise ValueError(f"labelled training data needs {missing}: a dataset without actions trains as "
                             "video-only data (--video_only.root) beside a labelled --dataset")
        a = 0 if self.table.action is None else self.table.action.shape[1]
        s = 0 if self.table.state is None else self.table.state.shape[1]
        if a > self.action_dim or s > self.state_dim:
            raise ValueError(
                f"dataset action/state dims {a}/{s} exceed the model's {self.action_dim}/{self.state_dim}"
            )
        self.relative = list(policy.relative_action_dims)
        self.stats = stats or dataset_stats(self.table, self.relative, self.spec.actions_per_block)
        self.cameras = cameras or policy.camera_keys or sorted(k for k in ds.meta.camera_keys)
        self.seed, self.train, self.jitter = seed, train, jitter
        self._hf = ds.hf_dataset.with_format(None).select_columns(self.cameras)

    @property
    def num_anchors(self) -> int:
        return len(self.table)

    @lru_cache(maxsize=4)  # noqa: B019 - one permutation per epoch, few epochs alive at once
    def _perm(self, epoch: int) -> np.ndarray:
        return np.random.default_rng([self.seed, epoch]).permutation(self.num_anchors)

    def anchor_of(self, position: int) -> int:
        epoch, i = divmod(int(position), self.num_anchors)
        return int(self._perm(epoch)[i]) if self.train else i

    def __len__(self) -> int:
        return self.num_anchors

    def _frames(self, rows: np.ndarray) -> list[np.ndarray]:
        # Row-by-row reads: a list index makes `datasets` build an index mapping (10x slower here).
        uniq, inv = np.unique(rows, return_inverse=True)
        recs = [self._hf[int(r)] for r in uniq]
        return [
            np.stack([np.asarray(rec[cam].convert("RGB"), np.float32) / 255.0 for rec in recs])[inv]
            for cam in self.cameras
        ]

    def window(self, anchor: int, rng: np.random.Generator | None) -> dict[str, np.ndarray]:
        t = self.table
        end = t.run_end[anchor]
        f_off, a_off, s_off = self.spec.offsets()
        clip = lambda off: np.minimum(anchor + off, end - 1)
        a_rows, s_rows = clip(a_off), clip(s_off)
        valid = (anchor + a_off) < end

        actions = np.zeros((len(a_rows), self.action_dim), np.float32)
        mask = np.zeros_like(actions)  # stays all zero without labels: the loss feeds those tokens pure noise
        states = np.zeros((len(s_rows), self.state_dim), np.float32)  # no state: zeros, as the reference
        if t.state is not None:
            state = quantile_normalize(t.state[s_rows], self.stats[OBS_STATE])
            states[:, : state.shape[1]] = state
        if t.action is not None:
            act = t.action[a_rows].copy()
            if self.relative:
                chunk_state = np.repeat(t.state[s_rows], self.spec.actions_per_block, axis=0)
                act[:, self.relative] -= chunk_state[:, self.relative]
            ad = act.shape[1]
            actions[:, :ad] = quantile_normalize(act, self.stats[ACTION])
            mask[:, :ad] = valid[:, None]

        views = crop_views(self._frames(clip(f_off)), self.policy.crop, rng if self.train else None)
        frames = tile_views(views, self.policy)
        if self.train and self.jitter > 0 and rng is not None:
            frames = color_jitter(frames, rng, self.jitter)
        ids, tmask = self.tokenizer(t.tasks[int(t.task[anchor])])
        return {
            "video": (frames * 2.0 - 1.0).astype(np.float32),
            "actions": actions,
            "action_mask": mask,
            "state": states,
            "text_ids": np.asarray(ids, np.int32).reshape(-1),
            "text_mask": np.asarray(tmask, np.int32).reshape(-1),
            "embodiment": np.int32(self.policy.embodiment_id),
        }

    def __getitem__(self, position: int) -> dict[str, np.ndarray]:
        rng = np.random.default_rng([self.seed, 1, int(position)]) if self.train else None
        return self.window(self.anchor_of(position), rng)


class PositionSampler(torch.utils.data.Sampler):
    """Global sample positions of this host's slice of every global batch, from ``start_step`` on."""

    def __init__(
        self,
        global_batch: int,
        start_step: int = 0,
        process_index: int = 0,
        process_count: int = 1,
        num_steps: int | None = None,
        fixed: bool = False,
    ):
        if global_batch % process_count:
            raise ValueError(f"global batch {global_batch} must divide over {process_count} hosts")
        self.gb, self.lb = global_batch, global_batch // process_count
        self.start, self.host, self.num_steps, self.fixed = start_step, process_index, num_steps, fixed

    def __iter__(self):
        step = self.start
        while self.num_steps is None or step < self.start + self.num_steps:
            base = (0 if self.fixed else step) * self.gb + self.host * self.lb
            yield from range(base, base + self.lb)
            step += 1

    def __len__(self) -> int:
        return (self.num_steps or 1 << 30) * self.lb


def collate_numpy(items: list[dict[str, np.ndarray]]) -> dict[str, np.ndarray]:
    return {k: np.stack([np.asarray(it[k]) for it in items]) for k in items[0]}


def make_loader(dataset: torch.utils.data.Dataset, sampler: PositionSampler, num_workers: int = 0):
    return torch.utils.data.DataLoader(
        dataset,
        batch_size=sampler.lb,
        sampler=sampler,
        num_workers=num_workers,
        collate_fn=collate_numpy,
        persistent_workers=num_workers > 0,
        prefetch_factor=4 if num_workers > 0 else None,
    )
