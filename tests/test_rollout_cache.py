"""The KV-cached chunked rollout equals a full recompute of the whole context under the equivalent mask."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx

from dreamzero_policy.inference import rollout as ro
from dreamzero_policy.inference.full_context import full_context_velocity
from dreamzero_policy.models.dit import Register
from dreamzero_policy.models.presets import get_preset
from dreamzero_policy.models.world_model import DreamZeroModel, make_tokenizer
from dreamzero_policy.schedulers.unipc import UniPCSchedule

B, HW = 2, (32, 32)


@pytest.fixture(scope="module")
def setup():
    cfg = get_preset("tiny")
    model = DreamZeroModel(cfg, rngs=nnx.Rngs(0))
    spec = ro.RolloutSpec(batch=B, frame_hw=HW, latent_hw=(4, 4), max_chunks=4, cfg_scale=3.0,
                          schedule=UniPCSchedule.create(num_steps=4, shift=5.0), dit_mask=(True,) * 4)
    tok = make_tokenizer(cfg)
    ids, m = tok(["move to the red target", "move to the blue target"])
    nids, nm = tok(["", ""])
    frame = jax.random.uniform(jax.random.key(1), (B, *HW, 3), minval=-1, maxval=1)
    text = model.encode_text(jnp.asarray(np.concatenate([ids, nids])), jnp.asarray(np.concatenate([m, nm])))
    state = ro.start_context(model, spec, text, frame)
    return model, spec, state


def test_cached_equals_full_recompute_over_three_chunks(setup):
    model, spec, state = setup
    dc = model.cfg.dit
    fpb, nb = dc.frames_per_block, spec.branches
    rng = np.random.default_rng(0)
    lat = lambda f: jnp.asarray(rng.standard_normal((B, f, 4, 4, dc.out_dim)), jnp.float32)
    observed = [lat(1)]
    state = ro.observe(model, spec, state, observed[0], jnp.int32(0))._replace(start_frame=jnp.int32(1))
    for chunk in range(3):
        start = int(state.start_frame)
        if chunk > 0:  # the block that was just "executed" is observed and replaces the prediction
            observed.append(lat(fpb))
            state = ro.observe(model, spec, state, observed[-1], jnp.int32(start - fpb))
        noisy = lat(fpb)
        t = 700.0
        acts = jnp.asarray(rng.standard_normal((nb * B, dc.actions_per_block, dc.action_dim)), jnp.float32)
        reg = Register(acts, jnp.full(acts.shape[:2], t), jnp.asarray(rng.standard_normal((nb * B, 1, dc.state_dim)),
                       jnp.float32), jnp.array([0, 1] * nb))
        valid = jnp.arange(state.k.shape[2]) < start * 4
        y = ro._y_slice(model, state, jnp.int32(start), fpb)
        v_c, a_c, _ = model.dit.forward_chunk(jnp.concatenate([noisy] * nb), jnp.full((nb * B,), t), start,
                                              state.cross, (state.k, state.v), valid, reg, jnp.concatenate([y] * nb))
        clean = jnp.concatenate(observed, axis=1)
        v_f, a_f = full_context_velocity(model, spec, state, clean, noisy, t, reg, start)
        np.testing.assert_allclose(np.asarray(v_c), np.asarray(v_f), atol=2e-5, rtol=1e-4)
        np.testing.assert_allclose(np.asarray(a_c), np.asarray(a_f), atol=2e-5, rtol=1e-4)
        state = state._replace(start_frame=state.start_frame + fpb)


def test_plan_runs_and_advances(setup):
    model, spec, state = setup
    state = ro.observe_first(model, spec, state, jnp.zeros((B, *HW, 3)))
    acts, video, state2 = ro.plan(model, spec, state, jnp.zeros((B, 1, model.cfg.dit.state_dim)),
                                  jnp.array([0, 1]), jax.random.key(0))
    assert acts.shape == (B, model.cfg.dit.actions_per_block, model.cfg.dit.action_dim)
    assert video.shape == (B, model.cfg.dit.frames_per_block, 4, 4, model.cfg.dit.out_dim)
    assert int(state2.start_frame) == 1 + model.cfg.dit.frames_per_block
    assert np.isfinite(np.asarray(acts)).all()
