"""CLIP visual tower parity against transformers CLIPVisionModel, via the reference key layout."""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
import pytest
import torch
import torch.nn.functional as F
import torchvision.transforms as T
from flax import nnx
from transformers import CLIPVisionConfig, CLIPVisionModel

from dreamzero_policy.convert.image_encoder import (
    image_encoder_params_from_torch,
    image_encoder_reference_keys_from_transformers,
)
from dreamzero_policy.convert.state_io import load_flat
from dreamzero_policy.models.image_encoder import CLIPVisionEncoder, ImageEncoderConfig, preprocess

TINY = ImageEncoderConfig(image_size=32, patch_size=8, dim=32, num_heads=4, num_layers=3)


def _peer(cfg: ImageEncoderConfig) -> CLIPVisionModel:
    torch.manual_seed(0)
    peer = CLIPVisionModel(
        CLIPVisionConfig(
            hidden_size=cfg.dim,
            intermediate_size=cfg.mlp_dim,
            num_hidden_layers=cfg.num_layers,
            num_attention_heads=cfg.num_heads,
            num_channels=3,
            image_size=cfg.image_size,
            patch_size=cfg.patch_size,
            hidden_act="gelu",
            layer_norm_eps=cfg.norm_eps,
            attention_dropout=0.0,
        )
    ).eval()
    # Random everything (norm gains and biases included) so that a misplaced tensor cannot hide.
    with torch.no_grad():
        for name, p in peer.named_parameters():
            if "norm" in name and name.endswith("weight"):
                p.copy_(1.0 + 0.2 * torch.randn_like(p))
            else:
                p.copy_(0.2 * torch.randn_like(p))
    return peer


def _state_dict_np(peer: torch.nn.Module) -> dict[str, np.ndarray]:
    return {k: v.detach().numpy() for k, v in peer.state_dict().items()}


def _ours(cfg: ImageEncoderConfig, peer: CLIPVisionModel) -> CLIPVisionEncoder:
    model = CLIPVisionEncoder(cfg, rngs=nnx.Rngs(1))
    ref_sd = image_encoder_reference_keys_from_transformers(_state_dict_np(peer))
    load_flat(model, image_encoder_params_from_torch(ref_sd, cfg))
    return model


def _torch_reference_preprocess(images_nhwc: np.ndarray, image_size: int) -> torch.Tensor:
    """WanImageEncoder.encode_image's preprocessing, written with the same torch calls: frames in
    [-1, 1] are resized one at a time (bicubic, align_corners=False), mapped to [0, 1], normalised."""
    videos = torch.from_numpy(images_nhwc).permute(0, 3, 1, 2)[:, None]  # (B, 1, C, H, W) as the head passes
    size = (image_size, image_size)
    videos = torch.cat([F.interpolate(u, size=size, mode="bicubic", align_corners=False) for u in videos])
    normalize = T.Normalize(
        mean=[0.48145466, 0.4578275, 0.40821073], std=[0.26862954, 0.26130258, 0.27577711]
    )
    return normalize(videos.mul_(0.5).add_(0.5))


def _peer_penultimate(peer: CLIPVisionModel, pixels_nchw: torch.Tensor) -> torch.Tensor:
    with torch.no_grad():
        out = peer(pixel_values=pixels_nchw, output_hidden_states=True)
        hs = out.hidden_states
        # hidden_states = (input of block 0 after pre_layrnorm, output of block 0, ..., output of last):
        # [-2] is the last block's input, i.e. the output of the second-to-last block.
        assert len(hs) == peer.config.num_hidden_layers + 1
        last_layer = peer.vision_model.encoder.layers[-1]
        np.testing.assert_allclose(last_layer(hs[-2], None).numpy(), hs[-1].numpy(), atol=1e-5)
        np.testing.assert_allclose(hs[-1].numpy(), out.last_hidden_state.numpy(), atol=0)
    return hs[-2]


def test_penultimate_block_matches_transformers() -> None:
    peer = _peer(TINY)
    model = _ours(TINY, peer)
    rng = np.random.default_rng(0)
    pixels = rng.standard_normal((2, TINY.image_size, TINY.image_size, 3)).astype(np.float32)
    want = _peer_penultimate(peer, torch.from_numpy(pixels).permute(0, 3, 1, 2)).numpy()
    got = np.asarray(model(jnp.asarray(pixels)))
    assert got.shape == (2, TINY.num_tokens, TINY.dim)
    err = np.abs(got - want).max()
    assert err <= 1e-4, err
    assert np.abs(want).max() > 0.5  # the comparison is not between near-zero tensors


def test_encode_image_matches_reference_pipeline() -> None:
    """Frames in [-1, 1] at a non-square size: our encode_image vs torch preprocessing + peer."""
    peer = _peer(TINY)
    model = _ours(TINY, peer)
    rng = np.random.default_rng(1)
    frames = rng.uniform(-1, 1, (2, 22, 40, 3)).astype(np.float32)
    want = _peer_penultimate(peer, _torch_reference_preprocess(frames, TINY.image_size)).numpy()
    got = np.asarray(model.encode_image(jnp.asarray(frames)))
    err = np.abs(got - want).max()
    assert err <= 1e-4, err


def test_jit_matches_eager() -> None:
    peer = _peer(TINY)
    model = _ours(TINY, peer)
    frames = jnp.asarray(np.random.default_rng(2).uniform(-1, 1, (3, 24, 20, 3)).astype(np.float32))
    eager = model.encode_image(frames)

    graphdef, state = nnx.split(model)

    @jax.jit
    def encode(state: nnx.State, x: jax.Array) -> jax.Array:
        return nnx.merge(graphdef, state).encode_image(x)

    jitted = encode(state, frames)
    assert np.abs(np.asarray(jitted) - np.asarray(eager)).max() <= 1e-5


@pytest.mark.parametrize(
    ("cfg", "shape"),
    [
        (TINY, (3, 20, 44)),  # upsample rows, downsample columns
        (TINY, (1, 32, 32)),  # same size: identity resize
        (ImageEncoderConfig(), (1, 176, 320)),  # one DROID view -> 224
        (ImageEncoderConfig(), (1, 352, 640)),  # the tiled 3-view frame -> 224
    ],
)
def test_preprocess_matches_torch_reference(cfg: ImageEncoderConfig, shape: tuple[int, int, int]) -> None:
    b, h, w = shape
    frames = np.random.default_rng(h * w).uniform(-1, 1, (b, h, w, 3)).astype(np.float32)
    want = _torch_reference_preprocess(frames, cfg.image_size).permute(0, 2, 3, 1).numpy()
    got = np.asarray(preprocess(jnp.asarray(frames), cfg))
    assert got.shape == (b, cfg.image_size, cfg.image_size, 3)
    err = np.abs(got - want).max()
    assert err <= 1e-4, err


def test_wrong_channels_and_sizes_raise() -> None:
    model = CLIPVisionEncoder(TINY, rngs=nnx.Rngs(0))
    with pytest.raises(ValueError, match="3 channels"):
        preprocess(jnp.zeros((1, 16, 16, 4)), TINY)
    with pytest.raises(ValueError, match="3 channels"):
        model(jnp.zeros((1, 3, 32, 32)))  # channels-first
    with pytest.raises(ValueError, match="channels-last"):
        model.encode_image(jnp.zeros((16, 16, 3)))
    with pytest.raises(ValueError, match="32x32"):
        model(jnp.zeros((1, 24, 24, 3)))


def test_converter_is_strict_but_drops_unused_reference_keys() -> None:
    ref_sd = image_encoder_reference_keys_from_transformers(_state_dict_np(_peer(TINY)))
    # Keys the reference has and never uses: the last block (present here), post_norm, head.
    assert "transformer.2.attn.to_qkv.weight" in ref_sd and "post_norm.weight" in ref_sd
    with_head = {**ref_sd, "head": np.zeros((TINY.dim, 16), np.float32)}
    flat = image_encoder_params_from_torch(with_head, TINY)
    assert flat["transformer/attn/to_qkv/kernel"].shape == (2, TINY.dim, 3 * TINY.dim)
    # Same flat dict without the unused keys.
    trimmed = {k: v for k, v in ref_sd.items() if not k.startswith(("transformer.2.", "post_norm."))}
    assert image_encoder_params_from_torch(trimmed, TINY).keys() == flat.keys()

    with pytest.raises(ValueError, match="missing.*transformer.1.mlp.0.weight"):
        image_encoder_params_from_torch(
            {k: v for k, v in ref_sd.items() if k != "transformer.1.mlp.0.weight"}, TINY
        )
    with pytest.raises(ValueError, match="unexpected.*transformer.3.norm1.weight"):
        image_encoder_params_from_torch({**ref_sd, "transformer.3.norm1.weight": np.ones(TINY.dim)}, TINY)
    with pytest.raises(ValueError, match="not a CLIPVisionModel key"):
        image_encoder_reference_keys_from_transformers({"text_model.x": np.zeros(1)})


def test_vit_h_shapes_and_parameter_count() -> None:
    cfg = ImageEncoderConfig()
    model = nnx.eval_shape(lambda: CLIPVisionEncoder(cfg, rngs=nnx.Rngs(0)))
    n_params = sum(int(np.prod(v.shape)) for v in jax.tree.leaves(nnx.state(model, nnx.Param)))
    per_block = (
        (1280 * 3840 + 3840) + (1280 * 1280 + 1280) + (1280 * 5120 + 5120) + (5120 * 1280 + 1280) + 4 * 1280
    )
    assert n_params == 31 * per_block + 14 * 14 * 3 * 1280 + 1280 + 257 * 1280 + 2 * 1280
    graphdef, state = nnx.split(model)
    out = jax.eval_shape(
        lambda s, x: nnx.merge(graphdef, s)(x), state, jax.ShapeDtypeStruct((2, 224, 224, 3), jnp.float32)
    )
    assert out.shape == (2, 257, 1280)
