"""Fast attention kernels against the dense ``"xla"`` reference on CPU.

- ``"splash"``: JAX's TPU Pallas splash kernel, run here in Pallas interpret mode (the same kernel body,
  evaluated by XLA on CPU), forward and backward;
- the ``jax.nn.dot_product_attention`` adapter behind ``"cudnn"``: run here with its XLA backend (cuDNN
  itself needs a GPU: its test carries the ``gpu`` marker, deselected by default; run it with ``-m gpu`` on a
  GPU machine).

Tolerance: float32 everywhere; the kernels differ from the reference only in summation order (online
softmax over 128-key blocks), ~1e-6 observed, so ATOL = 2e-5.
"""

from dataclasses import replace

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx

from dreamzero_policy.models.dit import CausalWanDiT, Register
from dreamzero_policy.models.presets import get_preset
from dreamzero_policy.nn import masks
from dreamzero_policy.nn.attention import (
    _to_bnts,
    attention,
    available_kernels,
    cudnn_attention,
    sdpa_attention,
)

ATOL = 2e-5
B, H, D = 2, 2, 8
FPB = 2


def _rand(rng: np.random.Generator, *shape: int) -> jax.Array:
    return jnp.asarray(rng.standard_normal(shape), jnp.float32)


@pytest.fixture(scope="module")
def tf_mask() -> np.ndarray:
    """Teacher-forcing mask of 5 latent frames (2 blocks), 4 tokens a frame, 4 actions + 1 state a block,
    with a 2-frame local window: L = 50, not a multiple of splash's 128-token blocks."""
    lay = masks.teacher_forcing_layout(5, 4, FPB, 4, 1)
    m = masks.attention_mask(lay, lay, frames_per_block=FPB, local_window_frames=2)
    unwindowed = masks.attention_mask(lay, lay, frames_per_block=FPB)
    assert (m != unwindowed).any()  # the window really cuts something
    return m


def _close(got: jax.Array, want: jax.Array, atol: float = ATOL) -> None:
    assert got.shape == want.shape and got.dtype == want.dtype
    np.testing.assert_allclose(np.asarray(got), np.asarray(want), atol=atol, rtol=0)


def test_splash_is_registered():
    assert {"xla", "cudnn", "splash"} <= set(available_kernels())


def test_splash_teacher_forcing_mask(tf_mask):
    rng = np.random.default_rng(0)
    L = tf_mask.shape[0]
    q, k, v = (_rand(rng, B, L, H, D) for _ in range(3))
    want = attention(q, k, v, mask=tf_mask)
    # Concrete mask: static splash NumpyMask, under jit (numpy mask closed over) and eager. The kernel built
    # while tracing is cached and reused by the later traces and the eager call: it must hold no tracer.
    for _ in range(2):  # a fresh function each time: a new trace
        _close(jax.jit(lambda q, k, v: attention(q, k, v, mask=tf_mask, implementation="splash"))(q, k, v), want)
    _close(attention(q, k, v, mask=tf_mask, implementation="splash"), want)

    # Under jit jnp.asarray(numpy mask) is a tracer (as in CausalWanDiT.forward_train): splash's dynamic
    # mask. Gradients too: training runs splash's backward kernels.
    def loss(impl: str):
        return lambda q, k, v: (attention(q, k, v, mask=jnp.asarray(tf_mask), implementation=impl) ** 2).sum()

    got_g = jax.jit(jax.grad(loss("splash"), argnums=(0, 1, 2)))(q, k, v)
    want_g = jax.grad(loss("xla"), argnums=(0, 1, 2))(q, k, v)
    for g, w in zip(got_g, want_g, strict=True):
        _close(g, w, atol=1e-4)  # gradients sum over 50 rows


def test_splash_row_without_keys_matches_dense(tf_mask):
    # Splash alone divides by zero on a row with no key; the wrapper reproduces the reference (mean of v).
    rng = np.random.default_rng(1)
    L = tf_mask.shape[0]
    q, k, v = (_rand(rng, 1, L, H, D) for _ in range(3))
    m = tf_mask.copy()
    m[[3, 40]] = False
    got = attention(q, k, v, mask=m, implementation="splash")
    assert np.isfinite(np.asarray(got)).all()
    _close(got, attention(q, k, v, mask=m))


def test_splash_kv_cache_validity_under_jit():
    rng = np.random.default_rng(2)
    lc, lnew = 140, 20  # cache of 140 slots: 160 keys, two 128-blocks
    q = _rand(rng, B, lnew, H, D)
    k, v = _rand(rng, B, lc + lnew, H, D), _rand(rng, B, lc + lnew, H, D)
    valid = jnp.asarray(rng.random(lc) < 0.6).at[130:].set(False)  # invalid slots in both key blocks

    def run(impl: str):
        def f(q, k, v, valid):  # as CausalWanDiT.forward_chunk builds it
            mask = jnp.concatenate([valid, jnp.ones(lnew, bool)])[None, :]
            return attention(q, k, v, mask=mask, implementation=impl)

        return jax.jit(f)(q, k, v, valid)

    want = run("xla")
    _close(run("splash"), want)
    # The invalid slots really are ignored: changing them changes nothing.
    k2 = k.at[:, :lc].set(jnp.where(valid[None, :, None, None], k[:, :lc], 100.0))
    _close(jax.jit(lambda k: attention(q, k, v, mask=jnp.concatenate([valid, jnp.ones(lnew, bool)])[None],
                                       implementation="splash"))(k2), want)

    # Per-batch validity (B, 1, 1, Lk), one batch element with no valid key at all.
    per_b = jnp.stack([jnp.concatenate([valid, jnp.ones(lnew, bool)]), jnp.zeros(lc + lnew, bool)])[:, None, None]
    got = jax.jit(lambda m: attention(q, k, v, mask=m, implementation="splash"))(per_b)
    _close(got, attention(q, k, v, mask=per_b))


@pytest.mark.parametrize("lq,lk", [(50, 50), (50, 6), (128, 128)])
def test_splash_no_mask(lq, lk):
    # (50, 6): cross-attention to a short context (keys padded to 128 and masked); (128, 128): no padding.
    rng = np.random.default_rng(3)
    q, k, v = _rand(rng, B, lq, H, D), _rand(rng, B, lk, H, D), _rand(rng, B, lk, H, D)
    _close(attention(q, k, v, implementation="splash", scale=0.3), attention(q, k, v, scale=0.3))


def test_splash_errors(tf_mask):
    rng = np.random.default_rng(4)
    L = tf_mask.shape[0]
    q = k = v = _rand(rng, B, L, H, D)
    with pytest.raises(ValueError, match="bias"):
        attention(q, k, v, bias=jnp.zeros((1, H, L, L)), implementation="splash")
    per_batch = np.stack([tf_mask, tf_mask.T])[:, None]  # (B, 1, L, L): differs per batch element
    with pytest.raises(ValueError, match="key-validity row"):
        attention(q, k, v, mask=per_batch, implementation="splash")
    with pytest.raises(ValueError, match="key-validity row"):
        jax.jit(lambda m: attention(q, k, v, mask=m, implementation="splash"))(jnp.asarray(per_batch))
    with pytest.raises(ValueError, match="does not broadcast"):
        attention(q, k, v, mask=tf_mask[:, :10], implementation="splash")
    with pytest.raises(ValueError, match="unknown attention implementation"):
        attention(q, k, v, implementation="flash")


# ---------------------------------------------------------------- jax.nn.dot_product_attention adapter
@pytest.mark.parametrize("kind", ["none", "block", "key_row", "bias"])
def test_sdpa_adapter_matches_dense(tf_mask, kind):
    rng = np.random.default_rng(5)
    L = tf_mask.shape[0]
    q, k, v = (_rand(rng, B, L, H, D) for _ in range(3))
    kw = {
        "none": {},
        "block": {"mask": tf_mask},  # (Lq, Lk)
        "key_row": {"mask": jnp.asarray(rng.random((1, L)) < 0.7).at[0, 0].set(True)},  # (1, Lk)
        "bias": {"mask": tf_mask, "bias": _rand(rng, 1, H, L, L)},
    }[kind]
    want = attention(q, k, v, **kw)
    _close(jax.jit(lambda q, k, v: sdpa_attention(q, k, v, implementation="xla", **kw))(q, k, v), want)
    _close(sdpa_attention(q, k, v, implementation=None, **kw), want)


def test_sdpa_adapter_shapes():
    # cuDNN turns the mask into a bias that must be rank 4 with exactly (Tq, Tk) as its last two dims.
    q, k = jnp.zeros((B, 5, H, D)), jnp.zeros((B, 7, H, D))
    assert _to_bnts(jnp.ones((5, 7), bool), q, k).shape == (1, 1, 5, 7)
    assert _to_bnts(jnp.ones((1, 7), bool), q, k).shape == (1, 1, 5, 7)
    assert _to_bnts(jnp.ones((B, 1, 1, 7), bool), q, k).shape == (B, 1, 5, 7)
    assert _to_bnts(jnp.ones((1, H, 5, 7)), q, k).shape == (1, H, 5, 7)
    assert _to_bnts(None, q, k) is None


def test_sdpa_adapter_compute_dtype_and_errors(tf_mask):
    # What "cudnn" does to float32 inputs (cast to bf16, output back in float32), on the XLA backend.
    rng = np.random.default_rng(6)
    L = tf_mask.shape[0]
    q, k, v = (_rand(rng, B, L, H, D) for _ in range(3))
    got = sdpa_attention(q, k, v, mask=tf_mask, implementation="xla", compute_dtype=jnp.bfloat16)
    assert got.dtype == jnp.float32
    want = attention(q, k, v, mask=tf_mask)
    err = float(jnp.abs(got - want).max())
    assert 0 < err < 5e-2  # bf16 rounding, not exact
    with pytest.raises(ValueError, match="does not broadcast"):
        sdpa_attention(q, k, v, mask=tf_mask[:10], implementation="xla")


@pytest.mark.gpu
def test_cudnn_matches_dense(tf_mask):
    assert jax.default_backend() == "gpu", "run the gpu marker on a machine with an NVIDIA GPU and jax[cuda12]"
    rng = np.random.default_rng(7)
    L = 64  # cuDNN with a bias (our mask) wants even lengths
    q, k, v = (_rand(rng, B, L, H, 16) for _ in range(3))
    m = tf_mask[:L, :L]
    row = jnp.asarray(rng.random((1, L)) < 0.7).at[0, 0].set(True)
    for mask in (None, m, row):
        _close(cudnn_attention(q, k, v, mask=mask), attention(q, k, v, mask=mask), atol=3e-2)


# ---------------------------------------------------------------- the DiT with splash
def test_tiny_dit_splash_equals_xla():
    cfg = get_preset("tiny").dit
    model = CausalWanDiT(cfg, rngs=nnx.Rngs(0))
    c = cfg
    rng = np.random.default_rng(8)
    f, hw, z = 3, 4, c.out_dim  # frame 0 + one block: L = 2*3*4 + 4 + 1 = 29 tokens
    reg = Register(_rand(rng, 1, c.actions_per_block, c.action_dim), jnp.full((1, c.actions_per_block), 600.0),
                   _rand(rng, 1, 1, c.state_dim), jnp.array([0]))
    noisy, clean = _rand(rng, 1, f, hw, hw, z), _rand(rng, 1, f, hw, hw, z)
    text, clip, y = _rand(rng, 1, 6, c.text_dim), _rand(rng, 1, 3, c.image_dim), _rand(rng, 1, f, hw, hw, c.in_dim - z)
    # Cached chunk: frames 3-4 against a 20-slot cache of which 12 are valid (traced validity).
    lc = 20
    cache = tuple(_rand(rng, c.num_layers, 1, lc, c.num_heads, c.head_dim) for _ in range(2))
    chunk, y2 = _rand(rng, 1, FPB, hw, hw, z), _rand(rng, 1, FPB, hw, hw, c.in_dim - z)

    def run(m: CausalWanDiT, valid: jax.Array):
        # Under jit, as training and inference run: forward_train's block mask is traced here.
        train = m.forward_train(noisy, clean, jnp.full((1, f), 600.0), reg, text, clip, y)
        cross = m.cross_kv(*m.embed_context(text, clip))
        return train, m.forward_chunk(chunk, jnp.full((1,), 500.0), 3, cross, cache, valid, reg, y2)

    outs = {}
    for impl in ("xla", "splash"):
        model.cfg = replace(cfg, attention=impl)  # same weights, other kernel
        outs[impl] = nnx.jit(run)(model, jnp.arange(lc) < 12)
    for got, want in zip(jax.tree.leaves(outs["splash"]), jax.tree.leaves(outs["xla"]), strict=True):
        _close(got, want)


def test_policy_config_rejects_unknown_kernel():
    from dreamzero_policy.configuration_dreamzero import DreamZeroJaxConfig

    assert DreamZeroJaxConfig(attention_impl="splash").model_config().dit.attention == "splash"
    with pytest.raises(ValueError, match="attention_impl='flash'"):
        DreamZeroJaxConfig(attention_impl="flash")


# ---------------------------------------------------------------- query-chunked dense attention
def test_chunked_equals_dense_for_every_mask_kind_and_its_gradient(tf_mask):
    from dreamzero_policy.nn.chunked import chunked_attention

    rng = np.random.default_rng(11)
    L = tf_mask.shape[0]  # 50 queries in blocks of 16: the last block is padded
    q, k, v = (_rand(rng, B, L, H, D) for _ in range(3))
    row = jnp.asarray(rng.random((1, L)) < 0.6).at[0, 0].set(True)
    bias = _rand(rng, 1, H, L, L)  # umT5's relative-position bias varies along the queries too
    for kw in ({}, {"mask": tf_mask}, {"mask": jnp.asarray(tf_mask)}, {"mask": row}, {"bias": bias, "mask": row}):
        want = attention(q, k, v, **kw)
        _close(jax.jit(lambda q, k, v, kw=kw: chunked_attention(q, k, v, block=16, **kw))(q, k, v), want)
        _close(attention(q, k, v, implementation="xla_chunked", **kw), want)  # one block: the dense path
    loss = lambda fn: lambda q, k, v: jnp.sum(fn(q, k, v) ** 2)
    dense = jax.grad(loss(lambda q, k, v: attention(q, k, v, mask=tf_mask)), argnums=(0, 1, 2))(q, k, v)
    chunk = jax.grad(loss(lambda q, k, v: chunked_attention(q, k, v, mask=tf_mask, block=16)), argnums=(0, 1, 2))(q, k, v)
    for g, w in zip(chunk, dense, strict=True):
        _close(g, w, atol=1e-4)
