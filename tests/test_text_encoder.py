"""umT5 encoder: parity with transformers UMT5EncoderModel through the reference-layout converter."""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
import pytest
import torch
from flax import nnx
from transformers import UMT5Config, UMT5EncoderModel
from transformers.models.umt5.modeling_umt5 import UMT5Attention

from dreamzero_policy.convert.state_io import flat_params, load_flat
from dreamzero_policy.convert.text_encoder import (
    text_encoder_params_from_torch,
    text_encoder_reference_keys_from_transformers,
)
from dreamzero_policy.models.text_encoder import TextEncoderConfig, UMT5Encoder, relative_position_buckets

VOCAB, DIM, HEADS, D_KV, FFN, LAYERS, BUCKETS, MAX_DIST = 300, 32, 4, 8, 64, 3, 32, 20
LENGTH = 24
PROMPT_LENGTHS = (24, 9)  # one full prompt, one padded


def _peer() -> UMT5EncoderModel:
    torch.manual_seed(0)
    hf_cfg = UMT5Config(
        vocab_size=VOCAB,
        d_model=DIM,
        d_kv=D_KV,
        d_ff=FFN,
        num_layers=LAYERS,
        num_heads=HEADS,
        relative_attention_num_buckets=BUCKETS,
        relative_attention_max_distance=MAX_DIST,  # small so LENGTH reaches the log and clipped buckets
        feed_forward_proj="gated-gelu",
        dropout_rate=0.0,
        layer_norm_epsilon=1e-6,
    )
    model = UMT5EncoderModel(hf_cfg).eval()
    with torch.no_grad():  # random norms so a transposed or swapped norm cannot pass
        for name, p in model.named_parameters():
            if "layer_norm" in name:
                p.copy_(1.0 + 0.2 * torch.randn_like(p))
    return model


def _ours_cfg() -> TextEncoderConfig:
    return TextEncoderConfig(
        vocab_size=VOCAB,
        dim=DIM,
        dim_attn=HEADS * D_KV,
        dim_ffn=FFN,
        num_heads=HEADS,
        num_layers=LAYERS,
        num_buckets=BUCKETS,
        max_distance=MAX_DIST,
        text_len=LENGTH,
    )


def _batch() -> tuple[np.ndarray, np.ndarray]:
    rng = np.random.default_rng(0)
    ids = np.zeros((len(PROMPT_LENGTHS), LENGTH), np.int32)
    mask = np.zeros_like(ids)
    for row, n in enumerate(PROMPT_LENGTHS):
        ids[row, : n - 1] = rng.integers(3, VOCAB, n - 1)
        ids[row, n - 1] = 1  # eos
        mask[row, :n] = 1
    return ids, mask


@pytest.fixture(scope="module")
def converted():
    peer = _peer()
    sd = {k: v.detach().numpy() for k, v in peer.state_dict().items()}
    cfg = _ours_cfg()
    model = UMT5Encoder(cfg, rngs=nnx.Rngs(1))
    load_flat(model, text_encoder_params_from_torch(text_encoder_reference_keys_from_transformers(sd), cfg))
    ids, mask = _batch()
    with torch.no_grad():
        want = peer(input_ids=torch.from_numpy(ids).long(), attention_mask=torch.from_numpy(mask).long())
    return model, ids, mask, want.last_hidden_state.numpy()


def test_matches_transformers_on_valid_positions(converted):
    model, ids, mask, want = converted
    got = np.asarray(model(jnp.asarray(ids), jnp.asarray(mask)))
    assert got.shape == (2, LENGTH, DIM)
    valid = mask.astype(bool)
    err = np.max(np.abs(got[valid] - want[valid]))
    assert err <= 1e-4, err
    # the padded prompt's real tokens must not see its padding: a wrong key mask shows up here
    assert np.max(np.abs(got[1, : PROMPT_LENGTHS[1]] - want[1, : PROMPT_LENGTHS[1]])) <= 1e-4


def test_encode_prompts_zeroes_padding(converted):
    model, ids, mask, want = converted
    got = np.asarray(model.encode_prompts(jnp.asarray(ids), jnp.asarray(mask)))
    for row, n in enumerate(PROMPT_LENGTHS):
        assert np.max(np.abs(got[row, :n] - want[row, :n])) <= 1e-4
        assert np.all(got[row, n:] == 0.0)
    assert np.all(np.abs(got[1, : PROMPT_LENGTHS[1]]).sum(-1) > 0)


def test_padding_content_does_not_leak(converted):
    model, ids, mask, _ = converted
    other = ids.copy()
    other[1, PROMPT_LENGTHS[1] :] = 7  # garbage where the mask is 0
    a = np.asarray(model.encode_prompts(jnp.asarray(ids), jnp.asarray(mask)))
    b = np.asarray(model.encode_prompts(jnp.asarray(other), jnp.asarray(mask)))
    np.testing.assert_allclose(a, b, atol=1e-6)


def test_jit_matches_eager(converted):
    model, ids, mask, _ = converted
    graphdef, state = nnx.split(model)

    @jax.jit
    def encode(state, ids, mask):
        return nnx.merge(graphdef, state).encode_prompts(ids, mask)

    eager = np.asarray(model.encode_prompts(jnp.asarray(ids), jnp.asarray(mask)))
    jitted = np.asarray(encode(state, jnp.asarray(ids), jnp.asarray(mask)))
    assert np.max(np.abs(jitted - eager)) <= 1e-5


def test_buckets_match_transformers_for_umt5_xxl():
    # the real settings (32 buckets, max distance 128) over the full 512-token prompt window
    attn = UMT5Attention(UMT5Config(relative_attention_num_buckets=32, relative_attention_max_distance=128))
    n = 512
    rel = torch.arange(n)[None, :] - torch.arange(n)[:, None]
    want = attn._relative_position_bucket(rel).numpy()
    got = relative_position_buckets(n, n, 32, 128)
    np.testing.assert_array_equal(got, want)
    assert got.min() == 0 and got.max() == 31


def test_buckets_small_offsets_are_exact():
    # 32 buckets: 16 per direction, offsets below 8 exact, keys after the query use the upper half
    forward = relative_position_buckets(1, 9, 32, 128)[0]  # key - query = 0..8
    np.testing.assert_array_equal(forward, [0, 17, 18, 19, 20, 21, 22, 23, 24])
    backward = relative_position_buckets(9, 1, 32, 128)[:, 0]  # key - query = 0..-8
    np.testing.assert_array_equal(backward, [0, 1, 2, 3, 4, 5, 6, 7, 8])


def test_param_names_mirror_reference():
    cfg = _ours_cfg()
    names = set(flat_params(UMT5Encoder(cfg, rngs=nnx.Rngs(0))))
    assert names == {
        "token_embedding/embedding",
        "norm/scale",
        *(
            f"blocks/{p}"
            for p in (
                "norm1/scale",
                "norm2/scale",
                "attn/q/kernel",
                "attn/k/kernel",
                "attn/v/kernel",
                "attn/o/kernel",
                "ffn/gate/kernel",
                "ffn/fc1/kernel",
                "ffn/fc2/kernel",
                "pos_embedding/embedding",
            )
        ),
    }


def test_converter_is_strict():
    cfg = _ours_cfg()
    sd = text_encoder_reference_keys_from_transformers(
        {k: v.detach().numpy() for k, v in _peer().state_dict().items()}
    )
    with pytest.raises(ValueError, match="missing 1"):
        text_encoder_params_from_torch({k: v for k, v in sd.items() if k != "blocks.2.attn.q.weight"}, cfg)
    with pytest.raises(ValueError, match="unexpected 1"):
        text_encoder_params_from_torch({**sd, "blocks.3.norm1.weight": np.ones(DIM)}, cfg)
    with pytest.raises(ValueError, match="unrecognised"):
        text_encoder_reference_keys_from_transformers({"encoder.block.0.layer.1.DenseReluDense.wi.weight": 0})


def test_rejects_bad_shapes_and_config():
    model = UMT5Encoder(_ours_cfg(), rngs=nnx.Rngs(0))
    with pytest.raises(ValueError, match="mask shape"):
        model(jnp.zeros((2, 5), jnp.int32), jnp.ones((2, 4), jnp.int32))
    with pytest.raises(ValueError, match="divisible"):
        TextEncoderConfig(dim_attn=30, num_heads=4)


def test_defaults_are_umt5_xxl():
    cfg = TextEncoderConfig()
    assert (cfg.vocab_size, cfg.dim, cfg.dim_ffn, cfg.num_heads, cfg.num_layers) == (
        256384,
        4096,
        10240,
        64,
        24,
    )
    assert (cfg.head_dim, cfg.num_buckets, cfg.max_distance, cfg.text_len) == (64, 32, 128, 512)
    shapes = nnx.eval_shape(lambda: UMT5Encoder(cfg, rngs=nnx.Rngs(0)))
    total = sum(int(np.prod(v.shape)) for v in jax.tree.leaves(nnx.state(shapes, nnx.Param)))
    # embedding + 24 * (4 attn + 3 ffn + 2 norms + bias table) + final norm
    per_layer = 4 * 4096 * 4096 + 3 * 4096 * 10240 + 2 * 4096 + 32 * 64
    assert total == 256384 * 4096 + 24 * per_layer + 4096
