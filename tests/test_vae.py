"""Wan VAE parity against diffusers ``AutoencoderKLWan`` (Wan2.1 z16 layout and Wan2.2 z48 layout)."""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
import pytest
import torch
from diffusers import AutoencoderKLWan
from diffusers.models.autoencoders.autoencoder_kl_wan import unpatchify as torch_unpatchify
from flax import nnx

from dreamzero_policy.convert.state_io import load_flat
from dreamzero_policy.convert.vae import vae_params_from_torch, vae_reference_keys_from_diffusers
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
        kw = dict(base_dim=8, z_dim=z, dim_mult=[1, 2, 4, 4], num_res_blocks=2)
        cfg = VAEConfig(z_dim=z, base_dim=8, latents_mean=mean, latents_std=std)
        return dict(kw, latents_mean=list(mean), latents_std=list(std)), cfg, 16
    z = 8
    mean, std = _tables(z, 1)
    kw = dict(
        base_dim=8,
        decoder_base_dim=12,
        z_dim=z,
        dim_mult=[1, 2, 4, 4],
        num_res_blocks=2,
        is_residual=True,
        patch_size=2,
        in_channels=12,
        out_channels=12,
        scale_factor_spatial=16,
    )
    cfg = VAEConfig.wan22(z_dim=z, base_dim=8, decoder_base_dim=12, latents_mean=mean, latents_std=std)
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


@pytest.fixture(scope="module", params=["wan21", "wan22"])
def models(request):
    return (request.param, *_build(request.param))


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
        outs.append(peer.decoder(x[:, :, i : i + 1], feat_cache=peer._feat_map, feat_idx=peer._conv_idx, first_chunk=i == 0))
    out = torch.cat(outs, 2)
    peer.clear_cache()
    return torch_unpatchify(out, peer.config.patch_size) if peer.config.patch_size else out


def test_encode_matches_diffusers(models):
    variant, peer, ours, size = models
    video = _video(2, 9, size)
    with torch.no_grad():
        mu = peer.encode(_to_torch(video)).latent_dist.mean
    mean = np.asarray(ours.cfg.latents_mean, np.float32)
    std = np.asarray(ours.cfg.latents_std, np.float32)
    want = (_from_torch(mu) - mean) / std
    got = np.asarray(jax.jit(ours.encode)(jnp.asarray(video)))
    s = ours.cfg.spatial_factor
    assert got.shape == (2, 3, size // s, size // s, ours.cfg.z_dim)
    err = np.abs(got - want).max()
    print(f"{variant} encode max abs err {err:.2e} (latent scale {np.abs(want).max():.2f})")
    assert err <= TOL


def test_decode_matches_diffusers(models):
    variant, peer, ours, size = models
    s = ours.cfg.spatial_factor
    z_raw = np.random.default_rng(3).normal(size=(2, 3, size // s, size // s, ours.cfg.z_dim)).astype(np.float32)
    z_norm = np.asarray(ours.normalize_latents(jnp.asarray(z_raw)))
    with torch.no_grad():
        want_raw = _from_torch(_peer_decode_unclamped(peer, _to_torch(z_raw)))
        want_clamped = _from_torch(peer.decode(_to_torch(z_raw)).sample)
    got_raw = np.asarray(jax.jit(lambda z: ours.decode(z, clip=False))(jnp.asarray(z_norm)))
    got = np.clip(got_raw, -1, 1)
    assert got_raw.shape == (2, 9, size, size, 3)
    err = np.abs(got_raw - want_raw).max()
    print(f"{variant} decode max abs err {err:.2e} (output scale {np.abs(want_raw).max():.2f})")
    assert err <= TOL
    assert np.abs(got - want_clamped).max() <= TOL


def test_streaming_encode_equals_full_clip(models):
    _, _, ours, size = models
    video = jnp.asarray(_video(1, 13, size, seed=5))
    full = ours.encode(video)
    first, cache = ours.encode_chunk(video[:, :1], None)
    second, cache = ours.encode_chunk(video[:, 1:5], cache)
    rest, cache = ours.encode_chunk(video[:, 5:], cache)  # two chunks in one call
    streamed = jnp.concatenate([first, second, rest], axis=1)
    assert streamed.shape == full.shape == (1, 4, *full.shape[2:])
    assert float(jnp.abs(streamed - full).max()) <= 1e-5
    template = ours.init_encode_cache(1, size, size)
    assert jax.tree.structure(template) == jax.tree.structure(cache)
    assert [a.shape for a in template] == [a.shape for a in cache]


def test_streaming_decode_equals_full_clip(models):
    _, _, ours, size = models
    s = ours.cfg.spatial_factor
    z = jnp.asarray(np.random.default_rng(7).normal(size=(1, 3, size // s, size // s, ours.cfg.z_dim)), jnp.float32)
    full = ours.decode(z, clip=False)
    head, cache = ours.decode_chunk(z[:, :1], None, clip=False)
    tail, _ = ours.decode_chunk(z[:, 1:], cache, clip=False)
    assert head.shape[1] == 1 and tail.shape[1] == 8
    assert float(jnp.abs(jnp.concatenate([head, tail], axis=1) - full).max()) <= 1e-5


def test_latent_normalisation_round_trip():
    vae = WanVAE(VAEConfig.wan22(base_dim=4, decoder_base_dim=4), rngs=nnx.Rngs(0))
    z = jnp.asarray(np.random.default_rng(0).normal(size=(1, 2, 1, 1, 48)), jnp.float32)
    n = vae.normalize_latents(z)
    np.testing.assert_allclose(n[0, 0, 0, 0], (z[0, 0, 0, 0] - jnp.asarray(WAN22_LATENTS_MEAN)) / jnp.asarray(WAN22_LATENTS_STD), atol=1e-5)
    np.testing.assert_allclose(vae.denormalize_latents(n), z, atol=1e-5)


def test_real_configs():
    assert VAEConfig().latents_mean == WAN21_LATENTS_MEAN and VAEConfig().z_dim == 16
    assert VAEConfig().spatial_factor == 8 and VAEConfig().temporal_factor == 4
    big = VAEConfig.wan22()
    assert (big.z_dim, big.base_dim, big.dec_dim, big.spatial_factor, big.io_channels) == (48, 160, 256, 16, 12)
    with pytest.raises(ValueError, match="latents_mean"):
        VAEConfig(z_dim=8)


def test_bad_inputs_raise():
    _, cfg, size = _configs("wan21")
    vae = WanVAE(cfg, rngs=nnx.Rngs(0))
    with pytest.raises(ValueError, match="1 \\+ 4k"):
        vae.encode(jnp.zeros((1, 6, size, size, 3)))
    with pytest.raises(ValueError, match=r"\(B, T, H, W, 3\)"):
        vae.encode(jnp.zeros((1, 5, 3, size, size)))
    with pytest.raises(ValueError, match="multiples of 8"):
        vae.encode(jnp.zeros((1, 5, 12, size, 3)))
    _, cache = vae.encode_chunk(jnp.zeros((1, 1, size, size, 3)), None)
    with pytest.raises(ValueError, match="multiple of 4"):
        vae.encode_chunk(jnp.zeros((1, 3, size, size, 3)), cache)
    with pytest.raises(ValueError, match="latents must be"):
        vae.decode(jnp.zeros((1, 2, 2, 2, cfg.z_dim + 1)))
