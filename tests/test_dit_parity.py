"""The JAX DiT against diffusers' WanTransformer3DModel (tiny random config, converted weights)."""

import jax.numpy as jnp
import numpy as np
import pytest
import torch
from diffusers import WanTransformer3DModel
from flax import nnx

from dreamzero_policy.convert.dit import dit_params_from_torch, dit_reference_keys_from_diffusers
from dreamzero_policy.convert.state_io import flat_params, load_flat
from dreamzero_policy.models.dit import CausalWanDiT, DiTConfig

HEADS, HEAD_DIM, LAYERS, TEXT_LEN, IMG_TOKENS = 2, 24, 2, 512, 5
DIM = HEADS * HEAD_DIM
REGISTER = ("state_encoder/", "action_encoder/", "action_decoder/")


def _peer() -> WanTransformer3DModel:
    torch.manual_seed(0)
    m = WanTransformer3DModel(
        patch_size=(1, 2, 2), num_attention_heads=HEADS, attention_head_dim=HEAD_DIM, in_channels=8,
        out_channels=4, text_dim=16, freq_dim=32, ffn_dim=64, num_layers=LAYERS, cross_attn_norm=True,
        qk_norm="rms_norm_across_heads", eps=1e-6, image_dim=12, added_kv_proj_dim=DIM, rope_max_seq_len=1024,
    ).eval()
    with torch.no_grad():  # diffusers zero-inits some tensors; randomise everything so each weight matters
        for p in m.parameters():
            p.copy_(torch.randn_like(p) * 0.2)
    return m


def _ours(peer: WanTransformer3DModel) -> CausalWanDiT:
    cfg = DiTConfig(dim=DIM, ffn_dim=64, num_heads=HEADS, num_layers=LAYERS, in_dim=8, out_dim=4, freq_dim=32,
                    text_dim=16, image_dim=12, concat_first_frame_latent=False, action_dim=4, state_dim=3,
                    register_hidden=8)
    model = CausalWanDiT(cfg, rngs=nnx.Rngs(0))
    sd = {k: v.detach().numpy() for k, v in peer.state_dict().items()}
    flat = dit_params_from_torch(dit_reference_keys_from_diffusers(sd), LAYERS)
    expected = set(flat_params(model))
    # diffusers has no action register; everything else must match one to one.
    assert expected - set(flat) == {k for k in expected if k.startswith(REGISTER)}
    load_flat(model, flat, allow_missing=True)
    return model


@pytest.fixture(scope="module")
def pair():
    peer = _peer()
    return peer, _ours(peer)


def _inputs(seed: int = 1, frames: int = 3, per_token_t: bool = False):
    g = torch.Generator().manual_seed(seed)
    b, h, w = 2, 4, 6
    x = torch.randn(b, 8, frames, h, w, generator=g)
    text = torch.randn(b, TEXT_LEN, 16, generator=g)
    img = torch.randn(b, IMG_TOKENS, 12, generator=g)
    t_frame = torch.tensor([[999.0, 700.5, 120.25], [0.0, 500.0, 999.0]])[:, :frames]
    return x, text, img, t_frame, (h // 2) * (w // 2)


def test_full_video_forward_matches_diffusers(pair):
    peer, ours = pair
    x, text, img, t_frame, per_frame = _inputs()
    t_tok = t_frame.repeat_interleave(per_frame, dim=1)  # per-token timesteps, different per frame
    with torch.no_grad():
        ref = peer(x, t_tok, text, encoder_hidden_states_image=img, return_dict=False)[0].numpy()
    got = ours.forward_video(
        jnp.asarray(x.permute(0, 2, 3, 4, 1).numpy()), jnp.asarray(t_frame.numpy()),
        jnp.asarray(text.numpy()), jnp.asarray(img.numpy()),
    )
    got = np.asarray(got).transpose(0, 4, 1, 2, 3)
    assert got.shape == ref.shape
    err = np.abs(got - ref).max()
    print("max abs err", err, "ref max", np.abs(ref).max())
    assert err <= 1e-4 * max(1.0, np.abs(ref).max()), err


def test_single_block_matches_diffusers(pair):
    peer, ours = pair
    x, text, img, t_frame, _ = _inputs(seed=2)
    captured = {}

    def hook(mod, args, kwargs, out):
        captured["args"], captured["kwargs"], captured["out"] = args, kwargs, out

    handle = peer.blocks[0].register_forward_hook(hook, with_kwargs=True)
    with torch.no_grad():
        peer(x, t_frame[:, 0], text, encoder_hidden_states_image=img, return_dict=False)
    handle.remove()
    names = ("hidden_states", "encoder_hidden_states", "temb", "rotary_emb")
    inp = dict(zip(names, captured["args"], strict=False)) | captured["kwargs"]
    hs, ctx, temb = (inp[k].numpy() for k in names[:3])
    seq = hs.shape[1]
    e0 = np.broadcast_to(temb[:, None], (temb.shape[0], seq, 6, DIM))

    from flax import nnx as _nnx

    gdef, state = _nnx.split(ours.blocks)
    block0 = _nnx.merge(gdef, __import__("jax").tree.map(lambda a: a[0], state))
    f, h, w = x.shape[2], x.shape[3] // 2, x.shape[4] // 2
    rope = ours.rope.video(jnp.arange(f), h, w)
    kv = block0.cross_attn.kv(jnp.asarray(ctx[:, IMG_TOKENS:]), jnp.asarray(ctx[:, :IMG_TOKENS]))
    got, _ = block0(jnp.asarray(hs), jnp.asarray(e0), rope, kv)
    ref = captured["out"].numpy()
    err = np.abs(np.asarray(got) - ref).max()
    print("max abs err", err, "ref max", np.abs(ref).max())
    assert err <= 1e-4 * max(1.0, np.abs(ref).max()), err
