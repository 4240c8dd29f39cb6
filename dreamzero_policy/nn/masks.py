"""Attention masks as data: every token carries (kind, block, frame); masks are comparisons.

Sequence layout of the teacher-forcing forward (REFERENCE.md):
    [clean video | noisy video | action tokens | state tokens]
Latent frame 0 is block 0; frame f >= 1 belongs to block 1 + (f - 1) // frames_per_block. Action and
state tokens of chunk c (0-based) belong to block c + 1.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

CLEAN, NOISY, ACTION, STATE = 0, 1, 2, 3


@dataclass(frozen=True)
class TokenLayout:
    kind: np.ndarray  # (L,) int32, one of CLEAN / NOISY / ACTION / STATE
    block: np.ndarray  # (L,) int32
    frame: np.ndarray  # (L,) int32 latent frame index (-1 for action / state tokens)

    def __len__(self) -> int:
        return int(self.kind.shape[0])

    @staticmethod
    def concat(*parts: TokenLayout) -> TokenLayout:
        return TokenLayout(*(np.concatenate([getattr(p, f) for p in parts]) for f in ("kind", "block", "frame")))


def frame_blocks(num_frames: int, frames_per_block: int) -> np.ndarray:
    f = np.arange(num_frames)
    return np.where(f == 0, 0, 1 + (f - 1) // frames_per_block).astype(np.int32)


def video_layout(kind: int, frames: np.ndarray, frame_seqlen: int, frames_per_block: int) -> TokenLayout:
    """Tokens of the latent frames ``frames`` (absolute indices), ``frame_seqlen`` tokens each."""
    frames = np.asarray(frames, np.int32)
    fr = np.repeat(frames, frame_seqlen)
    blk = np.where(fr == 0, 0, 1 + (fr - 1) // frames_per_block).astype(np.int32)
    return TokenLayout(np.full(fr.shape, kind, np.int32), blk, fr)


def register_layout(blocks: np.ndarray, actions_per_block: int, states_per_block: int) -> TokenLayout:
    """Action tokens for every block in ``blocks`` followed by their state tokens."""
    blocks = np.asarray(blocks, np.int32)
    a = np.repeat(blocks, actions_per_block)
    s = np.repeat(blocks, states_per_block)
    kind = np.concatenate([np.full(a.shape, ACTION), np.full(s.shape, STATE)]).astype(np.int32)
    return TokenLayout(kind, np.concatenate([a, s]), np.full(kind.shape, -1, np.int32))


def teacher_forcing_layout(
    num_frames: int, frame_seqlen: int, frames_per_block: int, actions_per_block: int, states_per_block: int
) -> TokenLayout:
    if (num_frames - 1) % frames_per_block:
        raise ValueError(f"num_frames - 1 = {num_frames - 1} is not a multiple of frames_per_block={frames_per_block}")
    frames = np.arange(num_frames)
    num_blocks = (num_frames - 1) // frames_per_block
    return TokenLayout.concat(
        video_layout(CLEAN, frames, frame_seqlen, frames_per_block),
        video_layout(NOISY, frames, frame_seqlen, frames_per_block),
        register_layout(np.arange(1, num_blocks + 1), actions_per_block, states_per_block),
    )


def attention_mask(
    q: TokenLayout,
    k: TokenLayout,
    *,
    frames_per_block: int,
    local_window_frames: int = -1,
    state_sees_context: bool = False,
) -> np.ndarray:
    """Boolean (Lq, Lk) mask, True = attend, following the reference's teacher-forcing rules.

    - clean frame 0 sees clean frame 0; clean block b >= 1 sees clean frame 0 and the clean frames of
      blocks 1..b that lie inside the local window (the last ``local_window_frames`` frames up to the end
      of block b; -1 = unbounded);
    - noisy frame 0 sees noisy frame 0;
    - noisy video and action tokens of block b >= 1 see clean blocks < b and the noisy video, action and
      state tokens of block b;
    - state tokens of block b see the state tokens of block b (training). The reference's cached
      inference lets them see everything their block sees (``state_sees_context=True``).
    """
    qk, qb = q.kind[:, None], q.block[:, None]
    kk, kb, kf = k.kind[None, :], k.block[None, :], k.frame[None, :]

    block_end = 1 + qb * frames_per_block  # one past the last frame of block qb
    in_window = (local_window_frames < 0) | (kf >= block_end - local_window_frames)
    clean_q = (qk == CLEAN) & (kk == CLEAN) & ((kb == 0) | ((qb >= 1) & (kb >= 1) & (kb <= qb) & in_window))

    same_block_reg = (kb == qb) & ((kk == NOISY) | (kk == ACTION) | (kk == STATE))
    context = (kk == CLEAN) & (kb < qb)
    noisy0 = (qk == NOISY) & (qb == 0) & (kk == NOISY) & (kb == 0)
    joint_q = ((qk == NOISY) | (qk == ACTION)) & (qb >= 1) & (context | same_block_reg)
    if state_sees_context:
        state_q = (qk == STATE) & (context | same_block_reg)
    else:
        state_q = (qk == STATE) & (kk == STATE) & (kb == qb)
    return clean_q | noisy0 | joint_q | state_q
