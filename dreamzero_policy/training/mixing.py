"""Labelled and video-only data in one run, drawn at a stated ratio.

A world-action model predicts video as well as actions, so episodes with video and an instruction but no
action labels still train it: their windows carry an all-zero ``action_mask``, which the loss reads as
"video loss only" (see :func:`.loss.teacher_forcing_loss`). This module mixes such a source with the
labelled one and checks that the two can be mixed at all.

Ratio semantics: of the global sample positions 0, 1, 2, ..., position ``k`` is video-only exactly when
``floor((k + 1) r) > floor(k r)``, so any ``n`` consecutive positions from 0 hold ``floor(n r)`` video-only
samples (each batch within one sample of ``r * batch``), whatever the two datasets' sizes. Each source keeps
its own position stream (``k - floor(k r)`` labelled, ``floor(k r)`` video-only) and its own per-epoch
shuffle, so the order is a pure function of (seed, position) as everywhere else (resume-safe), and the
labelled stream visits the same windows in the same order as a run on the labelled data alone.
"""

from __future__ import annotations

from fractions import Fraction
from typing import Protocol

import numpy as np
import torch
from lerobot.datasets.lerobot_dataset import LeRobotDatasetMetadata
from lerobot.utils.constants import ACTION, OBS_STATE


class PositionDataset(Protocol):
    stats: dict[str, dict[str, np.ndarray]]

    def __len__(self) -> int: ...
    def __getitem__(self, position: int) -> dict[str, np.ndarray]: ...


class RatioSchedule:
    """Which source global position ``k`` draws from, and its position within that source."""

    def __init__(self, ratio: float):
        if not 0.0 < ratio < 1.0:
            raise ValueError(f"the video-only ratio must be in (0, 1), got {ratio} (1 would leave no action labels)")
        r = Fraction(ratio).limit_denominator(10_000)  # exact integer arithmetic: no float drift over a run
        self.num, self.den = r.numerator, r.denominator

    def video_before(self, k: int) -> int:
        """Video-only samples among positions 0 .. k-1."""
        return (k * self.num) // self.den

    def __call__(self, k: int) -> tuple[bool, int]:
        v = self.video_before(k)
        if self.video_before(k + 1) > v:
            return True, v
        return False, k - v


class MixedDataset(torch.utils.data.Dataset):
    """Global position -> a labelled or a video-only sample, as :class:`RatioSchedule` says. The statistics
    are the labelled source's: normalisation never sees video-only episodes."""

    def __init__(self, labelled: PositionDataset, video: PositionDataset, ratio: float):
        self.labelled, self.video, self.schedule = labelled, video, RatioSchedule(ratio)
        self.ratio = ratio
        self.stats = labelled.stats

    def __len__(self) -> int:
        return len(self.labelled) + len(self.video)

    def __getitem__(self, position: int) -> dict[str, np.ndarray]:
        is_video, i = self.schedule(int(position))
        return self.video[i] if is_video else self.labelled[i]


def check_mixable(labelled: LeRobotDatasetMetadata, video: LeRobotDatasetMetadata, cameras: list[str]) -> None:
    """Clear errors for a labelled + video-only pair that cannot share one model input."""
    if ACTION not in labelled.features:
        raise ValueError("--dataset has no 'action' feature, so every dataset of this run is video-only: a run "
                         "needs labelled data for the action loss and its statistics")
    if labelled.fps != video.fps:
        raise ValueError(f"frame rates differ: --dataset {labelled.fps} fps, --video_only {video.fps} fps "
                         "(windows are cut in steps, so both must be the same)")
    for cam in cameras:
        want, have = labelled.features[cam]["shape"], video.features.get(cam, {}).get("shape")
        if have is None:
            raise ValueError(f"--video_only dataset lacks the camera {cam} (it has {sorted(video.camera_keys)})")
        if tuple(have) != tuple(want):
            raise ValueError(f"camera {cam}: --dataset frames are {tuple(want)}, --video_only frames {tuple(have)}")
    if OBS_STATE in video.features:  # absent: zeros, as the reference feeds a missing state
        want, have = labelled.features[OBS_STATE]["shape"], video.features[OBS_STATE]["shape"]
        if tuple(have) != tuple(want):
            raise ValueError(f"observation.state: --dataset has shape {tuple(want)}, --video_only {tuple(have)}")
