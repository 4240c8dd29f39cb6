"""The teacher-forcing flow-matching loss of DreamZero (video + action), as in the reference."""

from __future__ import annotations

from typing import NamedTuple

import jax
import jax.numpy as jnp

from dreamzero_policy.models.dit import CausalWanDiT, Register
from dreamzero_policy.schedulers.flow_matching import FlowMatchSchedule


class TrainBatch(NamedTuple):
    """Encoder outputs and targets for one teacher-forcing step (frozen encoders already applied)."""

    latents: jax.Array  # (B, F, H, W, C) clean, normalised VAE latents
    text: jax.Array  # (B, Lt, text_dim) umT5 states, zeroed past each prompt
    actions: jax.Array  # (B, Na, action_dim) normalised to [-1, 1], padded to action_dim
    action_mask: jax.Array  # (B, Na, action_dim) 1 on real action dims / steps; all 0: a video-only sample
    state: jax.Array  # (B, Ns, state_dim) padded
    embodiment: jax.Array  # (B,) int32
    clip: jax.Array | None = None  # (B, Li, image_dim)
    y: jax.Array | None = None  # (B, F, H, W, Cy) first-frame conditioning (14B I2V)


class LossOutput(NamedTuple):
    loss: jax.Array
    video_loss: jax.Array
    action_loss: jax.Array


def teacher_forcing_loss(
    model: CausalWanDiT, batch: TrainBatch, key: jax.Array, schedule: FlowMatchSchedule, video_blind: bool = False
) -> LossOutput:
    """x_t = (1 - s) x0 + s * noise, target = noise - x0; per-block timestep ids shared by the block's
    frames and actions (frame 0 independent); weighted MSE as the reference: video MSE averaged over
    (H, W, C) per frame, action MSE averaged over the real (unmasked) dims per token, each times its timestep's
    training weight, then averaged over the labelled samples.

    A sample whose ``action_mask`` is all zero has no action labels (video-only data): its action tokens are
    pure noise at the pure-noise timestep, an "unknown action" carrying no information (where every chunk's
    actions start at inference), so its video is learned without conditioning on a made-up action; its action
    term is masked out and the action mean runs over the labelled samples only, so a labelled sample weighs
    the same whatever the mix, and an all-video-only batch has action loss exactly 0 (no 0/0).
    (The reference noises zero-valued action inputs at the block's own timestep: at low noise the video block then
    sees "action = 0", a value a real normalised action takes, which the model could learn to associate.)

    ``video_blind`` (a diagnostic, never for training): every predicted block's video is pure noise at the
    pure-noise timestep, while frame 0 and the earlier blocks' clean context stay; the action loss then says
    how well the actions are predicted without the future video they are denoised with."""
    cfg = model.cfg
    b, f = batch.latents.shape[:2]
    nb = (f - 1) // cfg.frames_per_block
    k_t, k_nv, k_na = jax.random.split(key, 3)
    video_ids, action_ids = schedule.sample_blockwise_timestep_ids(
        k_t, b, nb, cfg.frames_per_block, cfg.actions_per_block
    )
    if video_blind:
        video_ids = video_ids.at[:, 1:].set(0)  # id 0 = sigma 1
    noise_v = jax.random.normal(k_nv, batch.latents.shape, jnp.float32)
    noise_a = jax.random.normal(k_na, batch.actions.shape, jnp.float32)
    x0_v = batch.latents.astype(jnp.float32)
    x0_a = batch.actions.astype(jnp.float32)
    noisy_v = schedule.add_noise(x0_v, noise_v, video_ids)
    labelled = jnp.any(batch.action_mask > 0, axis=(1, 2))  # (B,); a labelled window has >= 1 real step
    action_ids = jnp.where(labelled[:, None], action_ids, 0)  # id 0 = sigma 1, pure noise
    noisy_a = jnp.where(labelled[:, None, None], schedule.add_noise(x0_a, noise_a, action_ids), noise_a)

    reg = Register(noisy_a, schedule.timestep(action_ids), batch.state, batch.embodiment)
    pred_v, pred_a = model.forward_train(
        noisy_v, x0_v, schedule.timestep(video_ids), reg, batch.text, batch.clip, batch.y
    )

    mse_v = jnp.mean(jnp.square(pred_v - schedule.velocity_target(x0_v, noise_v)), axis=(2, 3, 4))
    video_loss = jnp.mean(mse_v * schedule.training_weight(video_ids))
    sq_a = jnp.square(pred_a - schedule.velocity_target(x0_a, noise_a)) * batch.action_mask
    # Masked mean over the real dims of each action token: padding a 2-dim robot to action_dim=8 must not
    # shrink its action loss 4x relative to the video loss.
    per_token = jnp.sum(sq_a, axis=2) / jnp.maximum(jnp.sum(batch.action_mask, axis=2), 1.0)
    n_labelled = jnp.maximum(jnp.sum(labelled.astype(jnp.float32)), 1.0) * per_token.shape[1]
    action_loss = jnp.sum(per_token * schedule.training_weight(action_ids)) / n_labelled
    return LossOutput(video_loss + action_loss, video_loss, action_loss)
