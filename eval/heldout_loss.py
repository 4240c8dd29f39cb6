"""Teacher-forcing losses of trained policies on held-out labelled episodes.

Training losses of runs on different data do not compare (a run that also sees video-only episodes is
scored on harder, more varied windows). This scores every policy on the same unseen windows with the same
timesteps and noise: the video loss says how well it predicts unseen futures (given the noised actions,
and without them, as a video-only sample), the action loss how well it predicts the expert's actions there,
with the future video it is denoised with and "video-blind" (that video replaced by pure noise: how much
the actions read the imagined video at all). The action loss is also split by instruction: a task a policy
saw only as video (or never) is scored on its own. Actions are normalised with the training data's statistics.
"""

from __future__ import annotations

from functools import partial
from pathlib import Path

import jax
import numpy as np
from flax import nnx
from lerobot.configs.default import DatasetConfig

from dreamzero_policy.models.world_model import make_tokenizer
from dreamzero_policy.schedulers.flow_matching import FlowMatchSchedule
from dreamzero_policy.training.config import TrainConfig
from dreamzero_policy.training.data import EpisodeTable, WindowDataset, collate_numpy, dataset_stats
from dreamzero_policy.training.dataset_source import open_dataset
from dreamzero_policy.training.export import build_model, load_pretrained_config
from dreamzero_policy.training.loss import teacher_forcing_loss
from dreamzero_policy.training.trainer import encode_raw


def heldout_losses(
    policy_dir: Path, train_root: Path, heldout_root: Path, num_chunks: int, anchor_stride: int = 4,
    batch_size: int = 16, seed: int = 0,
) -> dict[str, float | int | dict[str, float | int]]:
    """Mean video / action loss of the policy in ``policy_dir`` over every ``anchor_stride``-th window of
    the held-out dataset (eval transform); batch ``i`` draws its timesteps and noise from ``key(seed + i)``,
    so two policies see identical draws. ``action_loss_per_instruction``: the action loss over each instruction's
    windows alone (the others' actions masked out, which leaves its windows' predictions and draws unchanged)."""
    policy = load_pretrained_config(policy_dir)
    policy.pretrained_path = Path(policy_dir)
    model = build_model(TrainConfig(dataset=DatasetConfig(repo_id="local/heldout", root=str(heldout_root)),
                                    policy=policy))
    mc = model.cfg
    train = EpisodeTable(open_dataset("local/train", train_root))
    stats = dataset_stats(train, list(policy.relative_action_dims), mc.dit.actions_per_block)
    windows = WindowDataset(open_dataset("local/heldout", heldout_root), policy, mc,
                            make_tokenizer(mc, policy.tokenizer_dir), num_chunks=num_chunks, train=False, stats=stats)
    encode = nnx.jit(encode_raw)
    loss = nnx.jit(partial(teacher_forcing_loss, schedule=FlowMatchSchedule()), static_argnames="video_blind")
    anchors = list(range(0, len(windows), anchor_stride))
    anchors = anchors[: len(anchors) - len(anchors) % batch_size] or anchors  # one batch shape: one compile
    totals, n = np.zeros(4), 0
    instruction = np.array([str(windows.table.tasks[int(windows.table.task[a])]) for a in anchors], dtype=object)
    per_instruction = {t: np.zeros(2) for t in sorted(set(instruction))}  # t -> (loss sum, windows)
    for i, start in enumerate(range(0, len(anchors), batch_size)):
        raw = collate_numpy([windows[a] for a in anchors[start:start + batch_size]])
        batch = encode(model, {k: jax.numpy.asarray(v) for k, v in raw.items()})
        out = loss(model.dit, batch, jax.random.key(seed + i))
        # the same windows as video-only samples: the future predicted without its actions (pure-noise tokens)
        unlabelled = loss(model.dit, batch._replace(action_mask=jax.numpy.zeros_like(batch.action_mask)),
                          jax.random.key(seed + i))
        video_blind = loss(model.dit, batch, jax.random.key(seed + i), video_blind=True)
        b = len(raw["video"])
        for t, acc in per_instruction.items():
            mine = instruction[start:start + batch_size] == t
            if mine.any():
                keep = jax.numpy.asarray(mine[:, None, None], batch.action_mask.dtype)
                only = loss(model.dit, batch._replace(action_mask=batch.action_mask * keep), jax.random.key(seed + i))
                acc += [mine.sum() * float(only.action_loss), mine.sum()]
        totals += b * np.array([float(out.video_loss), float(out.action_loss), float(unlabelled.video_loss),
                                float(video_blind.action_loss)])
        n += b
    return {"heldout_video_loss": float(totals[0] / n), "heldout_action_loss": float(totals[1] / n),
            "heldout_video_loss_no_actions": float(totals[2] / n),
            "heldout_action_loss_video_blind": float(totals[3] / n), "windows": n,
            "action_loss_per_instruction": {t: float(a[0] / a[1]) for t, a in per_instruction.items()},
            "windows_per_instruction": {t: int(a[1]) for t, a in per_instruction.items()}}
