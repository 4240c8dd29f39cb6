"""Matmul FLOPs of the DiT, counted by hand from its config and token counts.

XLA's ``cost_analysis()`` counts a ``lax.scan`` / ``fori_loop`` body once (the DiT scans its layers,
UniPC loops over its steps), so whole-model figures come from here; tests check these counts against
``cost_analysis()`` on loop-free (one-layer) compiles. Only matmuls and attention contractions are
counted (2 FLOPs per multiply-add); norms, modulation, softmax and RoPE are a few FLOPs per element.
"""

from __future__ import annotations

import math

from dreamzero_policy.models.dit import DiTConfig


def dense(tokens: int, fan_in: int, fan_out: int) -> int:
    return 2 * tokens * fan_in * fan_out


def attention_flops(cfg: DiTConfig, pairs: int) -> int:
    """QK^T and PV over ``pairs`` (query, key) pairs, all heads together."""
    return 2 * 2 * pairs * cfg.dim


def block_flops(cfg: DiTConfig, tokens: int, self_pairs: int, cross_len: int) -> int:
    """One attention block over ``tokens`` new tokens of one row: self-attention q/k/v/o on the new tokens
    and scores over ``self_pairs`` pairs (cache included), cross-attention q/o and scores over the
    ``cross_len`` text + image tokens, FFN. Cross-attention K/V are :func:`cross_kv_flops`."""
    d = cfg.dim
    return (
        4 * dense(tokens, d, d) + attention_flops(cfg, self_pairs)
        + 2 * dense(tokens, d, d) + attention_flops(cfg, tokens * cross_len)
        + dense(tokens, d, cfg.ffn_dim) + dense(tokens, cfg.ffn_dim, d)
    )


def cross_kv_flops(cfg: DiTConfig, text_len: int, image_len: int) -> int:
    """One layer's cross-attention K/V of one row (text k, v; image k_img, v_img)."""
    return 2 * dense(text_len, cfg.dim, cfg.dim) + (2 * dense(image_len, cfg.dim, cfg.dim) if cfg.has_image else 0)


def context_embed_flops(cfg: DiTConfig, text_len: int, image_len: int) -> int:
    """Text embedding MLP and the CLIP-token projection of one row."""
    d, di = cfg.dim, cfg.image_dim
    img = dense(image_len, di, di) + dense(image_len, di, d) if cfg.has_image else 0
    return dense(text_len, cfg.text_dim, d) + dense(text_len, d, d) + img


def time_embed_flops(cfg: DiTConfig, tokens: int) -> int:
    """The timestep MLP runs per token (every token carries its own timestep)."""
    d = cfg.dim
    return dense(tokens, cfg.freq_dim, d) + dense(tokens, d, d) + dense(tokens, d, 6 * d)


def register_flops(cfg: DiTConfig, actions: int, states: int) -> int:
    """Action/state encoders and the action decoder of one row."""
    d, h = cfg.dim, cfg.register_hidden
    enc = dense(actions, cfg.action_dim, d) + dense(actions, 2 * d, d) + dense(actions, d, d)
    state = dense(states, cfg.state_dim, h) + dense(states, h, d)
    dec = dense(actions, d, h) + dense(actions, h, cfg.action_dim)
    return enc + state + dec


def patch_flops(cfg: DiTConfig, video_in: int, video_out: int) -> int:
    """Patch embedding of ``video_in`` tokens and the output head on ``video_out`` tokens."""
    p = math.prod(cfg.patch_size)
    return dense(video_in, cfg.in_dim * p, cfg.dim) + dense(video_out, cfg.dim, p * cfg.out_dim)


def chunk_forward_flops(cfg: DiTConfig, *, rows: int, video_tokens: int, cache_tokens: int, register: bool,
                        text_len: int = 0, image_len: int = 0) -> int:
    """``CausalWanDiT.forward_chunk``: the new tokens attend to the whole allocated cache and to each other
    (the dense kernel computes masked cache slots too; at the last chunk of a context all are valid).
    Cross-attention K/V are precomputed; ``text_len``/``image_len`` only size the cross-attention scores."""
    na, ns = (cfg.actions_per_block, cfg.states_per_block) if register else (0, 0)
    n = video_tokens + na + ns
    per_row = (
        patch_flops(cfg, video_tokens, video_tokens) + time_embed_flops(cfg, n)
        + (register_flops(cfg, na, ns) if register else 0)
        + cfg.num_layers * block_flops(cfg, n, n * (cache_tokens + n), text_len + image_len)
    )
    return rows * per_row


def train_tokens(cfg: DiTConfig, num_frames: int, frame_tokens: int) -> tuple[int, int, int]:
    """(video tokens per stream, action tokens, state tokens) of one teacher-forcing sample."""
    blocks = (num_frames - 1) // cfg.frames_per_block
    return num_frames * frame_tokens, blocks * cfg.actions_per_block, blocks * cfg.states_per_block


def train_forward_flops(cfg: DiTConfig, *, rows: int, num_frames: int, frame_tokens: int, text_len: int,
                        image_len: int, self_pairs: int | None = None) -> tuple[int, int]:
    """``CausalWanDiT.forward_train`` over [clean | noisy | actions | states]: (total, of which the block
    stack). ``self_pairs``: attended (query, key) pairs per row; None = all (what the dense kernel does)."""
    nv, na, ns = train_tokens(cfg, num_frames, frame_tokens)
    n = 2 * nv + na + ns
    pairs = n * n if self_pairs is None else self_pairs
    blocks = cfg.num_layers * (block_flops(cfg, n, pairs, text_len + image_len) + cross_kv_flops(cfg, text_len, image_len))
    rest = (
        dense(2 * nv, cfg.in_dim * math.prod(cfg.patch_size), cfg.dim)
        + dense(nv, cfg.dim, math.prod(cfg.patch_size) * cfg.out_dim)
        + time_embed_flops(cfg, n) + register_flops(cfg, na, ns) + context_embed_flops(cfg, text_len, image_len)
    )
    return rows * (blocks + rest), rows * blocks


def lora_merge_flops(cfg: DiTConfig, rank: int, targets: tuple[str, ...]) -> int:
    """W + s * a @ b for every adapted block kernel (once per step, independent of the batch)."""
    d, f = cfg.dim, cfg.ffn_dim
    shapes = {"q": (d, d), "k": (d, d), "v": (d, d), "o": (d, d), "ffn_0": (d, f), "ffn_2": (f, d)}
    # q/k/v/o name both the self- and the cross-attention projections
    per_layer = sum((2 if t in ("q", "k", "v", "o") else 1) * dense(shapes[t][0], rank, shapes[t][1]) for t in targets)
    return cfg.num_layers * per_layer


def train_step_flops(forward: int, blocks: int, *, remat: bool, lora_merge: int = 0) -> int:
    """Forward + backward (2x: activation and weight gradients; LoRA also forms the full kernel gradient
    before projecting it onto a and b) + the rematerialised forward of the block stack."""
    return 3 * forward + (blocks if remat else 0) + 3 * lora_merge
