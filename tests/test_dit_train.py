"""Teacher-forcing forward and loss: block causality in the real model, padding masks, embodiments."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx

from dreamzero_policy.models.dit import CausalWanDiT, Register
from dreamzero_policy.models.presets import get_preset
from dreamzero_policy.schedulers.flow_matching import FlowMatchSchedule
from dreamzero_policy.training.loss import TrainBatch, teacher_forcing_loss

B, F, H, W = 2, 5, 4, 4  # frame 0 + 2 blocks of 2 latent frames


@pytest.fixture(scope="module")
def model():
    return CausalWanDiT(get_preset("tiny").dit, rngs=nnx.Rngs(0))


def _inputs(model, seed=0):
    c = model.cfg
    r = np.random.default_rng(seed)
    z, na = c.out_dim, 2 * c.actions_per_block
    arr = lambda *s: jnp.asarray(r.standard_normal(s), jnp.float32)
    reg = Register(arr(B, na, c.action_dim), jnp.full((B, na), 600.0), arr(B, 2, c.state_dim), jnp.array([0, 1]))
    return dict(noisy=arr(B, F, H, W, z), clean=arr(B, F, H, W, z), t=jnp.full((B, F), 600.0), reg=reg,
                text=arr(B, 6, c.text_dim), clip=arr(B, 3, c.image_dim), y=arr(B, F, H, W, c.in_dim - z))


def _run(model, inp):
    return model.forward_train(inp["noisy"], inp["clean"], inp["t"], inp["reg"], inp["text"], inp["clip"], inp["y"])


def test_block_causality(model):
    inp = _inputs(model)
    v0, a0 = _run(model, inp)
    apb = model.cfg.actions_per_block
    # Changing the clean frames of block 2 (frames 3-4) must not change block 1's noisy video or actions.
    alt = dict(inp, clean=inp["clean"].at[:, 3:].add(1.0))
    v1, a1 = _run(model, alt)
    np.testing.assert_allclose(v1[:, :3], v0[:, :3], atol=1e-6)
    np.testing.assert_allclose(a1[:, :apb], a0[:, :apb], atol=1e-6)
    # ...but block 2's own prediction conditions only on clean blocks < 2, so it is unchanged too.
    np.testing.assert_allclose(v1[:, 3:], v0[:, 3:], atol=1e-6)
    # Changing clean block 1 (frames 1-2) changes block 2's predictions (it is its context).
    v2, a2 = _run(model, dict(inp, clean=inp["clean"].at[:, 1:3].add(1.0)))
    assert np.abs(np.asarray(v2[:, 3:] - v0[:, 3:])).max() > 1e-4
    assert np.abs(np.asarray(a2[:, apb:] - a0[:, apb:])).max() > 1e-4
    np.testing.assert_allclose(a2[:, :apb], a0[:, :apb], atol=1e-6)
    # Changing block 2's state leaves block 1 alone and changes block 2's actions.
    reg = inp["reg"]._replace(state=inp["reg"].state.at[:, 1].add(1.0))
    v3, a3 = _run(model, dict(inp, reg=reg))
    np.testing.assert_allclose(a3[:, :apb], a0[:, :apb], atol=1e-6)
    assert np.abs(np.asarray(a3[:, apb:] - a0[:, apb:])).max() > 1e-4
    # Noisy frame 0 sees only itself.
    v4, _ = _run(model, dict(inp, noisy=inp["noisy"].at[:, 1:].add(1.0)))
    np.testing.assert_allclose(v4[:, :1], v0[:, :1], atol=1e-6)


def test_embodiments_select_their_weights(model):
    inp = _inputs(model)
    _, a0 = _run(model, inp)
    _, a1 = _run(model, dict(inp, reg=inp["reg"]._replace(embodiment=jnp.array([1, 1]))))
    np.testing.assert_allclose(a1[1], a0[1], atol=1e-6)
    assert np.abs(np.asarray(a1[0] - a0[0])).max() > 1e-4
    with pytest.raises(ValueError, match="embodiment_id"):
        _run(model, dict(inp, reg=inp["reg"]._replace(embodiment=jnp.array([0, 5]))))


def test_register_shape_errors(model):
    inp = _inputs(model)
    bad = inp["reg"]._replace(actions=inp["reg"].actions[:, :3], action_t=inp["reg"].action_t[:, :3])
    with pytest.raises(ValueError, match="expected"):
        _run(model, dict(inp, reg=bad))


def _batch(model, seed=0, **kw):
    c = model.cfg
    r = np.random.default_rng(seed)
    arr = lambda *s: jnp.asarray(r.standard_normal(s), jnp.float32)
    na = 2 * c.actions_per_block
    base = dict(latents=arr(B, F, H, W, c.out_dim), text=arr(B, 6, c.text_dim),
                actions=jnp.clip(arr(B, na, c.action_dim), -1, 1), action_mask=jnp.ones((B, na, c.action_dim)),
                state=arr(B, 2, c.state_dim), embodiment=jnp.array([0, 1]),
                clip=arr(B, 3, c.image_dim), y=arr(B, F, H, W, c.in_dim - c.out_dim))
    base.update(kw)
    return TrainBatch(**base)


def test_loss_masks(model):
    sched = FlowMatchSchedule()
    key = jax.random.key(3)
    full = teacher_forcing_loss(model, _batch(model), key, sched)
    assert float(full.action_loss) > 0 and float(full.video_loss) > 0
    np.testing.assert_allclose(full.loss, full.video_loss + full.action_loss, rtol=1e-6)
    # a sample with no action labels (all-zero mask) trains the video loss only (tests/test_video_only.py)
    none = teacher_forcing_loss(model, _batch(model, action_mask=jnp.zeros((B, 2 * model.cfg.actions_per_block,
                                                                            model.cfg.action_dim))), key, sched)
    assert float(none.action_loss) == 0.0 and float(none.video_loss) > 0

    # padded action dims carry no loss and no gradient into the decoder's padded outputs
    c = model.cfg
    mask = jnp.ones((B, 2 * c.actions_per_block, c.action_dim)).at[..., 2:].set(0.0)

    def loss_fn(m):
        return teacher_forcing_loss(m, _batch(model, action_mask=mask), key, sched).action_loss

    grads = nnx.grad(loss_fn)(model)
    g = np.asarray(grads.action_decoder.layer2.W[...])
    assert np.abs(g[..., 2:]).max() == 0.0 and np.abs(g[..., :2]).max() > 0.0
