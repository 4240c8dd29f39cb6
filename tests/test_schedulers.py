"""Schedulers: flow-matching training tables and the UniPC sampler against diffusers and the reference.

The reference formulas (DreamZero's FlowMatchScheduler / FlowUniPCMultistepScheduler) are transcribed
here in torch/numpy because the reference classes hard-code CUDA; diffusers is the runnable peer.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
import pytest
import torch
from diffusers import FlowMatchEulerDiscreteScheduler, UniPCMultistepScheduler

from dreamzero_policy.schedulers.flow_matching import FlowMatchSchedule
from dreamzero_policy.schedulers.unipc import UniPCSchedule, denoise, dit_step_mask

T = 1000


# ----------------------------------------------------------------------------------- reference formulas
def reference_training_tables() -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """FlowMatchScheduler(shift=5, sigma_min=0, extra_one_step=True).set_timesteps(1000, training=True)."""
    sigmas = torch.linspace(1.0, 0.0, T + 1)[:-1]
    sigmas = 5.0 * sigmas / (1 + 4.0 * sigmas)
    timesteps = sigmas * T
    y = torch.exp(-2 * ((timesteps - T / 2) / T) ** 2)
    y_shifted = y - y.min()
    weights = y_shifted * (T / y_shifted.sum())
    return sigmas, timesteps, weights


def reference_unipc_tables(num_steps: int, shift: float) -> tuple[np.ndarray, np.ndarray]:
    """FlowUniPCMultistepScheduler(shift=1).set_timesteps(num_steps, shift=shift): (sigmas, timesteps)."""
    alphas = np.linspace(1, 1 / T, T)[::-1].copy()
    train_sigmas = torch.from_numpy(1.0 - alphas).to(torch.float32)
    sigma_max, sigma_min = train_sigmas[0].item(), train_sigmas[-1].item()
    sigmas = np.linspace(sigma_max, sigma_min, num_steps + 1).copy()[:-1]
    sigmas = shift * sigmas / (1 + (shift - 1) * sigmas)
    timesteps = torch.from_numpy(sigmas * T).to(torch.int64).numpy()
    return np.concatenate([sigmas, [0.0]]).astype(np.float32), timesteps


def reference_grid(num_steps: int) -> np.ndarray:
    """The unshifted grid the reference shifts; passing it to diffusers reproduces its table."""
    sigma_max = float(np.float32(1.0 - 1.0 / T))
    return np.linspace(sigma_max, 0.0, num_steps + 1)[:-1].copy()


def diffusers_unipc(num_steps: int = 16, **overrides) -> UniPCMultistepScheduler:
    cfg = dict(
        num_train_timesteps=T,
        prediction_type="flow_prediction",
        use_flow_sigmas=True,
        flow_shift=5.0,
        solver_order=2,
        solver_type="bh2",
        predict_x0=True,
        lower_order_final=True,
        final_sigmas_type="zero",
    )
    cfg.update(overrides)
    sched = UniPCMultistepScheduler(**cfg)
    sched.set_timesteps(sigmas=reference_grid(num_steps))
    return sched


# A smooth analytic "model": the same float32 formula in torch and jnp.
def velocity_torch(x: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
    s = t.to(torch.float32) / T
    return 1.3 * x - 0.7 * torch.tanh(x) + 0.4 * torch.sin(2.0 * x + 3.0 * s) * s


def velocity_jnp(x: jax.Array, t: jax.Array) -> jax.Array:
    s = jnp.asarray(t, jnp.float32) / T
    return 1.3 * x - 0.7 * jnp.tanh(x) + 0.4 * jnp.sin(2.0 * x + 3.0 * s) * s


def rel_err(a: np.ndarray, b: np.ndarray) -> float:
    return float(np.max(np.abs(np.asarray(a) - np.asarray(b))) / np.max(np.abs(np.asarray(b))))


def diffusers_trajectory(sched, x0: np.ndarray, mask: tuple[bool, ...]) -> list[np.ndarray]:
    """The reference loop: skipped steps re-feed the last velocity to step() with the current sample."""
    x = torch.from_numpy(x0.copy())
    v = None
    out = []
    for i, t in enumerate(sched.timesteps):
        if mask[i]:
            v = velocity_torch(x, t)
        x = sched.step(v, t, x).prev_sample
        out.append(x.numpy().copy())
    return out


def eager_trajectory(schedule: UniPCSchedule, x0: np.ndarray, mask: tuple[bool, ...]) -> list[np.ndarray]:
    x = jnp.asarray(x0)
    state = schedule.init_state(x)
    v = None
    out = []
    for i in range(schedule.num_steps):
        if mask[i]:
            v = velocity_jnp(x, schedule.timesteps[i])
        x, state = schedule.step(state, v, i, x)
        out.append(np.asarray(x))
    return out


# --------------------------------------------------------------------------------- training schedule
def test_training_tables_match_reference_and_diffusers():
    ours = FlowMatchSchedule()
    ref_sigmas, ref_timesteps, ref_weights = reference_training_tables()
    peer = FlowMatchEulerDiscreteScheduler(num_train_timesteps=T, shift=5.0)

    assert ours.sigmas.shape == ours.timesteps.shape == ours.weights.shape == (T,)
    assert ours.sigmas.dtype == np.float32
    np.testing.assert_allclose(ours.sigmas, ref_sigmas.numpy(), rtol=0, atol=1e-6)
    np.testing.assert_allclose(ours.sigmas, peer.sigmas.numpy(), rtol=0, atol=1e-6)
    np.testing.assert_allclose(ours.timesteps, ref_timesteps.numpy(), rtol=1e-6, atol=0)
    np.testing.assert_allclose(ours.timesteps, peer.timesteps.numpy(), rtol=1e-6, atol=0)
    assert ours.sigmas[0] == 1.0 and np.all(np.diff(ours.sigmas) < 0)

    np.testing.assert_allclose(ours.weights, ref_weights.numpy(), rtol=0, atol=2e-6)
    assert ours.weights[0] == 0.0  # the pure-noise end is furthest from t = 500
    assert abs(float(ours.weights.astype(np.float64).mean()) - 1.0) < 1e-6
    peak = int(np.argmax(ours.weights))
    assert abs(float(ours.timesteps[peak]) - 500.0) < 1.0


def test_add_noise_target_and_weights_ops():
    sched = FlowMatchSchedule()
    rng = np.random.default_rng(0)
    x0 = rng.standard_normal((2, 3, 4, 4, 5)).astype(np.float32)
    noise = rng.standard_normal(x0.shape).astype(np.float32)
    ids = np.array([[0, 17, 999], [500, 123, 998]], np.int32)

    noisy = jax.jit(sched.add_noise)(jnp.asarray(x0), jnp.asarray(noise), jnp.asarray(ids))
    sigma = sched.sigmas[ids][..., None, None, None]
    np.testing.assert_allclose(np.asarray(noisy), (1 - sigma) * x0 + sigma * noise, rtol=0, atol=1e-6)

    # diffusers' scale_noise looks sigmas up by its own timestep values; one id per batch row there.
    peer = FlowMatchEulerDiscreteScheduler(num_train_timesteps=T, shift=5.0)
    flat_x0, flat_noise = x0.reshape(6, 4, 4, 5), noise.reshape(6, 4, 4, 5)
    peer_noisy = peer.scale_noise(
        torch.from_numpy(flat_x0),
        peer.timesteps[torch.from_numpy(ids.reshape(-1)).long()],
        torch.from_numpy(flat_noise),
    )
    np.testing.assert_allclose(np.asarray(noisy).reshape(6, 4, 4, 5), peer_noisy.numpy(), rtol=0, atol=1e-6)

    target = sched.velocity_target(jnp.asarray(x0), jnp.asarray(noise))
    np.testing.assert_array_equal(np.asarray(target), noise - x0)
    np.testing.assert_array_equal(np.asarray(sched.training_weight(jnp.asarray(ids))), sched.weights[ids])
    np.testing.assert_array_equal(np.asarray(sched.timestep(jnp.asarray(ids))), sched.timesteps[ids])

    with pytest.raises(ValueError, match="leading axes"):
        sched.add_noise(jnp.asarray(x0), jnp.asarray(noise), jnp.zeros((3, 2), jnp.int32))
    with pytest.raises(ValueError, match="shapes differ"):
        sched.add_noise(jnp.asarray(x0), jnp.asarray(noise[:1]), jnp.asarray(ids))
    with pytest.raises(ValueError, match="sigma_min"):
        FlowMatchSchedule(sigma_min=0.5, sigma_max=0.2)


def test_timestep_id_sampling():
    sched = FlowMatchSchedule()
    ids = sched.sample_timestep_ids(jax.random.key(0), (4096,))
    assert ids.dtype == jnp.int32 and int(ids.min()) >= 0 and int(ids.max()) < T
    assert abs(float(ids.mean()) - (T - 1) / 2) < 20  # uniform over [0, T)

    video, action = jax.jit(sched.sample_blockwise_timestep_ids, static_argnums=(1, 2, 3, 4))(
        jax.random.key(1), 8, 4, 2, 24
    )
    video, action = np.asarray(video), np.asarray(action)
    assert video.shape == (8, 9) and action.shape == (8, 96)
    blocks = video[:, 1:].reshape(8, 4, 2)
    assert np.all(blocks == blocks[:, :, :1])  # frames of a block share one id
    assert np.all(action.reshape(8, 4, 24) == blocks[:, :, :1])  # the block's actions reuse it
    assert not np.all(video[:, 0] == video[:, 1])  # frame 0 drawn independently
    with pytest.raises(ValueError, match=">= 1"):
        sched.sample_blockwise_timestep_ids(jax.random.key(0), 1, 0, 2, 24)


# ------------------------------------------------------------------------------------ UniPC sampling
def test_unipc_tables_match_reference_and_diffusers():
    ours = UniPCSchedule.create(num_steps=16, shift=5.0)
    ref_sigmas, ref_timesteps = reference_unipc_tables(16, 5.0)
    peer = diffusers_unipc(16)

    assert ours.sigmas.shape == (17,) and ours.timesteps.shape == (16,)
    np.testing.assert_allclose(ours.sigmas, ref_sigmas, rtol=0, atol=1e-6)
    np.testing.assert_allclose(ours.sigmas, peer.sigmas.numpy(), rtol=0, atol=1e-6)
    np.testing.assert_array_equal(ours.timesteps, ref_timesteps)
    np.testing.assert_array_equal(ours.timesteps, peer.timesteps.numpy())
    assert ours.timesteps[0] == 999 and ours.timesteps[-1] == 249 and ours.sigmas[-1] == 0.0

    # diffusers' own default flow grid starts at 1 (minus 1e-6) and is offset by 1/T before the shift:
    # a different table, which is why the peer above is given the reference grid explicitly.
    default = UniPCMultistepScheduler(
        num_train_timesteps=T, prediction_type="flow_prediction", use_flow_sigmas=True, flow_shift=5.0
    )
    default.set_timesteps(16)
    assert np.max(np.abs(default.sigmas.numpy() - ours.sigmas)) > 1e-4


@pytest.mark.parametrize(
    ("overrides", "num_dit_steps"),
    [
        ({}, 16),
        ({}, 8),
        ({"solver_type": "bh1", "disable_corrector": (0, 5)}, 16),
        ({"solver_order": 1}, 8),
    ],
)
def test_unipc_trajectory_matches_diffusers_step_by_step(overrides, num_dit_steps):
    mask = dit_step_mask(num_dit_steps)
    ours = UniPCSchedule.create(16, 5.0, **overrides)
    peer_overrides = dict(overrides)
    if "disable_corrector" in peer_overrides:
        peer_overrides["disable_corrector"] = list(peer_overrides["disable_corrector"])
    peer = diffusers_unipc(16, **peer_overrides)

    x0 = np.random.default_rng(1).standard_normal((2, 3, 4, 5)).astype(np.float32)
    ref = diffusers_trajectory(peer, x0, mask)
    got = eager_trajectory(ours, x0, mask)
    errs = [rel_err(g, r) for g, r in zip(got, ref, strict=True)]
    assert max(errs) <= 1e-5, errs
    # The chain actually denoises: the last step lands on the final x0 estimate, far from the noise.
    assert rel_err(got[-1], x0) > 0.1


def test_decoupled_final_sigma_matches_reference_rescale():
    f = 0.8
    ours = UniPCSchedule.create(16, 5.0, final_sigma=f)
    # The reference overwrites the tables of an ordinary scheduler after set_timesteps; do the same.
    peer = diffusers_unipc(16)
    sigma_max = peer.sigmas[0].item()
    peer.sigmas = peer.sigmas * (sigma_max - f) / sigma_max + f
    peer.timesteps = (peer.sigmas[:-1] * 1000).to(torch.int64)
    np.testing.assert_allclose(ours.sigmas, peer.sigmas.numpy(), rtol=0, atol=1e-6)
    np.testing.assert_array_equal(ours.timesteps, peer.timesteps.numpy())
    assert abs(float(ours.sigmas[-1]) - f) < 1e-6

    x0 = np.random.default_rng(2).standard_normal((1, 2, 3, 4)).astype(np.float32)
    mask = dit_step_mask(8)
    errs = [
        rel_err(g, r)
        for g, r in zip(eager_trajectory(ours, x0, mask), diffusers_trajectory(peer, x0, mask), strict=True)
    ]
    assert max(errs) <= 1e-5, errs


def test_jit_fori_loop_equals_eager_on_a_pytree():
    schedule = UniPCSchedule.create(16, 5.0)
    mask = dit_step_mask(8)
    rng = np.random.default_rng(3)
    noise = {
        "video": jnp.asarray(rng.standard_normal((1, 2, 4, 4, 3)).astype(np.float32)),
        "action": jnp.asarray(rng.standard_normal((1, 24, 8)).astype(np.float32)),
    }

    def velocity_fn(sample, timestep, step_index):
        return jax.tree.map(lambda x: velocity_jnp(x, timestep), sample)

    jitted = jax.jit(lambda n: denoise(schedule, velocity_fn, n, mask))(noise)

    # Eager reference: Python loop over step() with a Python step index and stale velocities.
    x, state, v = noise, schedule.init_state(noise), None
    for i in range(16):
        if mask[i]:
            v = jax.tree.map(lambda a, i=i: velocity_jnp(a, schedule.timesteps[i]), x)
        x, state = schedule.step(state, v, i, x)
    for key in noise:
        assert rel_err(jitted[key], x[key]) <= 1e-6
        assert jitted[key].dtype == noise[key].dtype and jitted[key].shape == noise[key].shape

    # Each leaf also matches diffusers run on that leaf alone.
    for key in noise:
        ref = diffusers_trajectory(diffusers_unipc(16), np.asarray(noise[key]), mask)[-1]
        assert rel_err(jitted[key], ref) <= 1e-5


def test_invalid_configurations_raise():
    with pytest.raises(ValueError, match="solver_order"):
        UniPCSchedule.create(solver_order=3)
    with pytest.raises(ValueError, match="solver_type"):
        UniPCSchedule.create(solver_type="midpoint")
    with pytest.raises(ValueError, match="singular"):
        UniPCSchedule.create(lower_order_final=False)
    with pytest.raises(ValueError, match="final_sigma"):
        UniPCSchedule.create(final_sigma=1.0)
    with pytest.raises(ValueError, match="num_steps"):
        UniPCSchedule.create(num_steps=0)
    with pytest.raises(ValueError, match="num_dit_steps"):
        dit_step_mask(9)
    schedule = UniPCSchedule.create()
    x = jnp.zeros((1, 2))
    with pytest.raises(ValueError, match="step_index"):
        schedule.step(schedule.init_state(x), x, 16, x)
    with pytest.raises(ValueError, match="run_model\\[0\\]"):
        denoise(schedule, lambda s, t, i: s, x, (False,) + (True,) * 15)
    with pytest.raises(ValueError, match="16 entries"):
        denoise(schedule, lambda s, t, i: s, x, (True,) * 8)
