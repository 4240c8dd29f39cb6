"""Wan VAE parity against diffusers ``AutoencoderKLWan`` (Wan2.1 z16 layout, Wan2.2 z48 layout, and the Wan2.1
blocks behind a 2x2 pixel patch of the ``small_wm`` preset)."""

from __future__ import annotations

from dataclasses import dataclass

import jax
import jax.numpy as jnp
import numpy as np
import pytest
import torch
from diffusers import AutoencoderKLWan
from diffusers.models.autoencoders.autoencoder_kl_wan import unpatchify as torch_unpatchify
from flax import nnx

from dreamzero_policy.convert.state_io import load_flat, path_str
from dreamzero_policy.convert.vae import (
    _reference_to_path,
    vae_params_from_torch,
    vae_reference_keys_from_diffusers,
)
from dreamzero_policy.models.vae import (
    WAN21_LATENTS_MEAN,
    WAN22_LATENTS_MEAN,
    WAN22_LATENTS_STD,
    VAEConfig,
    WanVAE,
)

TOL = 1e-4


def _tables(z: int, seed: int) -> tuple[tuple[float, ...], tuple[float, ...]]:
    rng = np.random.default_rng(seed)
    return tuple(rng.normal(0, 0.5, z).round(4).tolist()), tuple(rng.uniform(0.5, 2.0, z).round(4).tolist())


def _configs(variant: str) -> tuple[dict, VAEConfig, int]:
    """Tiny diffusers kwargs, the matching config of ours, and the test frame size."""
    if variant == "wan21":
        z = 4
        mean, std = _tables(z, 0)
        kw = dict(base_dim=8, z_dim=z, dim_mult=[1, 2, 4, 4], num_res_blocks=1)
        cfg = VAEConfig(
            z_dim=z,
            base_dim=8,
            num_res_blocks=1,
            latents_mean=mean,
            latents_std=std,
        )
        return dict(kw, latents_mean=list(mean), latents_std=list(std)), cfg, 16
    if variant == "patched21":  # the `small_wm` layout: Wan2.1 blocks behind Wan2.2's 2x2 pixel patch
        z = 4
        mean, std = _tables(z, 2)
        kw = dict(base_dim=8, z_dim=z, dim_mult=[1, 2, 2], temperal_downsample=[True, True], num_res_blocks=1,
                  patch_size=2, in_channels=12, out_channels=12, scale_factor_spatial=8)
        cfg = VAEConfig(z_dim=z, base_dim=8, dim_mult=(1, 2, 2), temporal_downsample=(True, True), num_res_blocks=1,
                        patch_size=2, latents_mean=mean, latents_std=std)
        return dict(kw, latents_mean=list(mean), latents_std=list(std)), cfg, 16
    z = 8
    mean, std = _tables(z, 1)
    kw = dict(
        base_dim=8,
        decoder_base_dim=12,
        z_dim=z,
        dim_mult=[1, 2, 4, 4],
        num_res_blocks=1,
        is_residual=True,
        patch_size=2,
        in_channels=12,
        out_channels=12,
        scale_factor_spatial=16,
    )
    cfg = VAEConfig.wan22(
        z_dim=z,
        base_dim=8,
        decoder_base_dim=12,
        num_res_blocks=1,
        latents_mean=mean,
        latents_std=std,
    )
    return dict(kw, latents_mean=list(mean), latents_std=list(std)), cfg, 32


def _build(variant: str) -> tuple[AutoencoderKLWan, WanVAE, int]:
    torch.manual_seed(0)
    kw, cfg, size = _configs(variant)
    peer = AutoencoderKLWan(**kw).eval()
    with torch.no_grad():  # non-trivial norm gains and attention output (proj) weights
        for name, p in peer.named_parameters():
            if name.endswith("gamma"):
                p.copy_(1.0 + 0.2 * torch.randn_like(p))
    sd = {k: v.detach().numpy() for k, v in peer.state_dict().items()}
    ours = WanVAE(cfg, rngs=nnx.Rngs(0))
    load_flat(ours, vae_params_from_torch(vae_reference_keys_from_diffusers(sd, cfg), cfg))
    return peer, ours, size


@dataclass
class Case:
    """One variant: the peer, our converted model, inputs, and our full-clip outputs (computed once)."""

    variant: str
    peer: AutoencoderKLWan
    ours: WanVAE
    size: int
    video: np.ndarray  # (2, 9, size, size, 3)
    z_raw: np.ndarray  # un-normalised latents (2, 3, h, w, z)
    latents: np.ndarray  # ours.encode(video)
    decoded: np.ndarray  # ours.decode(normalised z_raw, clip=False)


@pytest.fixture(scope="module", params=["wan21", "wan22", "patched21"])
def case(request) -> Case:
    peer, ours, size = _build(request.param)
    s, z = ours.cfg.spatial_factor, ours.cfg.z_dim
    video = _video(2, 9, size)
    z_raw = np.random.default_rng(3).normal(size=(2, 3, size // s, size // s, z)).astype(np.float32)
    latents = np.asarray(nnx.jit(lambda m, v: m.encode(v))(ours, jnp.asarray(video)))
    z_norm = ours.normalize_latents(jnp.asarray(z_raw))
    decoded = np.asarray(nnx.jit(lambda m, x: m.decode(x, clip=False))(ours, z_norm))
    return Case(request.param, peer, ours, size, video, z_raw, latents, decoded)


def _video(b: int, t: int, size: int, seed: int = 0) -> np.ndarray:
    return np.random.default_rng(seed).uniform(-1, 1, (b, t, size, size, 3)).astype(np.float32)


def _to_torch(x: np.ndarray) -> torch.Tensor:
    return torch.from_numpy(np.ascontiguousarray(np.moveaxis(x, -1, 1)))  # (B,T,H,W,C) -> (B,C,T,H,W)


def _from_torch(x: torch.Tensor) -> np.ndarray:
    return np.moveaxis(x.detach().numpy(), 1, -1)


def _peer_decode_unclamped(peer: AutoencoderKLWan, z: torch.Tensor) -> torch.Tensor:
    """diffusers' ``_decode`` without its final clamp (random weights put much of the output past +-1)."""
    peer.clear_cache()
    x = peer.post_quant_conv(z)
    outs = []
    for i in range(z.shape[2]):
        peer._conv_idx = [0]
        outs.append(
            peer.decoder(
                x[:, :, i : i + 1], feat_cache=peer._feat_map, feat_idx=peer._conv_idx, first_chunk=i == 0
            )
        )
    out = torch.cat(outs, 2)
    peer.clear_cache()
    return torch_unpatchify(out, peer.config.patch_size) if peer.config.patch_size else out


def test_encode_matches_diffusers(case):
    cfg = case.ours.cfg
    with torch.no_grad():
        mu = case.peer.encode(_to_torch(case.video)).latent_dist.mean
    want = (_from_torch(mu) - np.asarray(cfg.latents_mean, np.float32)) / np.asarray(
        cfg.latents_std, np.float32
    )
    s = cfg.spatial_factor
    assert case.latents.shape == (2, 3, case.size // s, case.size // s, cfg.z_dim)
    err = np.abs(case.latents - want).max()
    print(f"{case.variant} encode max abs err {err:.2e} (latent scale {np.abs(want).max():.2f})")
    assert err <= TOL


def test_decode_matches_diffusers(case):
    with torch.no_grad():
        want_raw = _from_torch(_peer_decode_unclamped(case.peer, _to_torch(case.z_raw)))
        want_clamped = _from_torch(case.peer.decode(_to_torch(case.z_raw)).sample)
    assert case.decoded.shape == (2, 9, case.size, case.size, 3)
    err = np.abs(case.decoded - want_raw).max()
    print(f"{case.variant} decode max abs err {err:.2e} (output scale {np.abs(want_raw).max():.2f})")
    assert err <= TOL
    # decode() clamps to [-1, 1] like the reference and diffusers
    assert np.abs(np.clip(case.decoded, -1, 1) - want_clamped).max() <= TOL


def test_streaming_encode_equals_full_clip(case):
    ours, video = case.ours, jnp.asarray(case.video)
    # jit with the module as an argument (nnx.jit), so weights are inputs rather than baked-in constants
    start = nnx.jit(lambda m, v: m.encode_chunk(v, None))
    step = nnx.jit(lambda m, v, c: m.encode_chunk(v, c))
    head, cache = start(ours, video[:, :5])  # first frame alone + one 4-frame chunk
    tail, cache = step(ours, video[:, 5:], cache)  # continues from the returned cache
    assert head.shape[1] == 2 and tail.shape[1] == 1
    streamed = np.concatenate([head, tail], axis=1)
    assert np.abs(streamed - case.latents).max() <= 1e-5
    template = ours.init_encode_cache(2, case.size, case.size)
    assert jax.tree.structure(template) == jax.tree.structure(cache)
    assert [a.shape for a in template] == [a.shape for a in cache]


def test_streaming_decode_equals_full_clip(case):
    ours = case.ours
    z = ours.normalize_latents(jnp.asarray(case.z_raw))
    head, cache = nnx.jit(lambda m, x: m.decode_chunk(x, None, clip=False))(ours, z[:, :1])
    tail, _ = nnx.jit(lambda m, x, c: m.decode_chunk(x, c, clip=False))(ours, z[:, 1:], cache)
    assert head.shape[1] == 1 and tail.shape[1] == 8
    assert np.abs(np.concatenate([head, tail], axis=1) - case.decoded).max() <= 1e-5


def test_bad_inputs_raise(case):
    vae, size = case.ours, case.size
    s, z = vae.cfg.spatial_factor, vae.cfg.z_dim
    with pytest.raises(ValueError, match="1 \\+ 4k"):
        vae.encode(jnp.zeros((1, 6, size, size, 3)))
    with pytest.raises(ValueError, match=r"\(B, T, H, W, 3\)"):
        vae.encode(jnp.zeros((1, 5, 3, size, size)))
    with pytest.raises(ValueError, match=f"multiples of {s}"):
        vae.encode(jnp.zeros((1, 5, size + s // 2, size, 3)))
    cache = vae.init_encode_cache(1, size, size)
    with pytest.raises(ValueError, match="multiple of 4"):
        vae.encode_chunk(jnp.zeros((1, 3, size, size, 3)), cache)
    with pytest.raises(ValueError, match="latents must be"):
        vae.decode(jnp.zeros((1, 2, 2, 2, z + 1)))


def test_latent_normalisation_round_trip():
    vae = nnx.eval_shape(lambda: WanVAE(VAEConfig.wan22(base_dim=4, decoder_base_dim=4), rngs=nnx.Rngs(0)))
    z = jnp.asarray(np.random.default_rng(0).normal(size=(1, 2, 1, 1, 48)), jnp.float32)
    n = vae.normalize_latents(z)
    np.testing.assert_allclose(
        n[0, 0, 0, 0],
        (z[0, 0, 0, 0] - jnp.asarray(WAN22_LATENTS_MEAN)) / jnp.asarray(WAN22_LATENTS_STD),
        atol=1e-5,
    )
    np.testing.assert_allclose(vae.denormalize_latents(n), z, atol=1e-5)


def test_real_configs():
    assert VAEConfig().latents_mean == WAN21_LATENTS_MEAN and VAEConfig().z_dim == 16
    assert VAEConfig().spatial_factor == 8 and VAEConfig().temporal_factor == 4
    big = VAEConfig.wan22()
    assert (big.z_dim, big.base_dim, big.dec_dim, big.spatial_factor, big.io_channels) == (
        48,
        160,
        256,
        16,
        12,
    )
    with pytest.raises(ValueError, match="latents_mean"):
        VAEConfig(z_dim=8)


def _expected_shape(ref_key: str, torch_shape: tuple[int, ...]) -> tuple[int, ...]:
    if ref_key.endswith("gamma"):
        return (int(np.prod(torch_shape)),)
    if not ref_key.endswith("weight"):
        return torch_shape
    if ".to_qkv." in ref_key or ".proj." in ref_key:
        return (torch_shape[1], torch_shape[0])
    return (*torch_shape[2:], torch_shape[1], torch_shape[0])


@pytest.mark.parametrize("variant", ["wan21", "wan22"])
def test_real_size_layout_matches_diffusers(variant):
    """Full-size VAEs, built without memory (torch meta device, nnx.eval_shape): same parameters."""
    if variant == "wan21":
        peer_kw, cfg = {}, VAEConfig.wan21()
    else:
        peer_kw = dict(
            base_dim=160, decoder_base_dim=256, z_dim=48, is_residual=True, patch_size=2,
            in_channels=12, out_channels=12, scale_factor_spatial=16,
            latents_mean=list(WAN22_LATENTS_MEAN), latents_std=list(WAN22_LATENTS_STD),
        )  # fmt: skip
        cfg = VAEConfig.wan22()
    with torch.device("meta"):
        peer = AutoencoderKLWan(**peer_kw)
    shapes = {k: tuple(v.shape) for k, v in peer.state_dict().items()}
    ref = vae_reference_keys_from_diffusers(shapes, cfg)
    want = {_reference_to_path(k): _expected_shape(k, v) for k, v in ref.items()}
    abstract = nnx.eval_shape(lambda: WanVAE(cfg, rngs=nnx.Rngs(0)))
    got = {
        path_str(p): tuple(v.get_value().shape) for p, v in nnx.to_flat_state(nnx.state(abstract, nnx.Param))
    }
    assert got == want
    n_params = sum(int(np.prod(s)) for s in got.values())
    assert n_params == sum(p.numel() for p in peer.parameters())
    print(f"{variant} VAE parameters: {n_params:,}")
