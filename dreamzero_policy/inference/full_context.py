"""The uncached reference of one rollout step: the whole context in one DiT forward under the mask
equivalent to the KV-cached path. Used to test the cache and as the baseline in the rollout benchmark."""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np

from dreamzero_policy.inference.rollout import RolloutSpec, RolloutState, _frame_seqlen
from dreamzero_policy.models.dit import Register
from dreamzero_policy.models.world_model import DreamZeroModel
from dreamzero_policy.nn import masks


def full_context_velocity(
    model: DreamZeroModel,
    spec: RolloutSpec,
    state: RolloutState,
    clean: jax.Array,
    noisy: jax.Array,
    t: float | jax.Array,
    reg: Register,
    start: int,
) -> tuple[jax.Array, jax.Array]:
    """clean (B, start, h, w, z) observed latents (t = 0), noisy (B, fpb, ...) at ``t``; ``reg`` and the
    cross K/V in ``state`` carry the branch rows (branches*B). Returns (video, action) velocities."""
    dit, dc = model.dit, model.cfg.dit
    nb, fpb = spec.branches, dc.frames_per_block
    tile = (lambda x: jnp.concatenate([x] * nb)) if nb > 1 else (lambda x: x)
    rows = noisy.shape[0] * nb
    y = state.y if dc.concat_first_frame_latent else None
    yc = None if y is None else tile(y[:, :start])
    yn = None if y is None else tile(jax.lax.dynamic_slice_in_dim(y, min(start, y.shape[1] - fpb), fpb, 1))
    xc, _ = dit.patchify(dit._with_cond(tile(clean), yc))
    xn, grid = dit.patchify(dit._with_cond(tile(noisy), yn))
    x = jnp.concatenate([xc, xn, dit.encode_register(reg)], axis=1)
    n_c, n_n = xc.shape[1], xn.shape[1]
    tok_t = jnp.concatenate(
        [jnp.zeros((rows, n_c)), jnp.full((rows, n_n), t, jnp.float32), dit.register_timesteps(reg)], axis=1
    )
    e, e0 = dit.time_embed(tok_t)
    h, w = grid[1], grid[2]
    cv, sv = dit.rope.video(jnp.arange(start), h, w)
    cn, sn = dit.rope.video(start + jnp.arange(fpb), h, w)
    bi = (start - 1) // fpb
    ca, sa = dit.rope.action(bi * dc.actions_per_block + jnp.arange(dc.actions_per_block))
    cs, ss = dit.rope.state(bi * dc.states_per_block + jnp.arange(dc.states_per_block))
    rope = (jnp.concatenate([cv, cn, ca, cs]), jnp.concatenate([sv, sn, sa, ss]))
    s_len = _frame_seqlen(model, spec)
    lay = masks.TokenLayout.concat(
        masks.video_layout(masks.CLEAN, np.arange(start), s_len, fpb),
        masks.video_layout(masks.NOISY, start + np.arange(fpb), s_len, fpb),
        masks.register_layout(np.array([bi + 1]), dc.actions_per_block, dc.states_per_block),
    )
    mask = masks.attention_mask(lay, lay, frames_per_block=fpb, state_sees_context=True)
    x, _ = dit.run_blocks(x, e0, rope, state.cross, mask=jnp.asarray(mask))
    video = dit.decode_video(x[:, n_c : n_c + n_n], e[:, n_c : n_c + n_n], grid)
    acts = dit.decode_actions(x[:, n_c + n_n : n_c + n_n + dc.actions_per_block], reg.embodiment)
    return video, acts
