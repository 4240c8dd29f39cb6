"""The causal Wan DiT with DreamZero's action/state register, in Flax NNX.

One code path for every preset. Blocks are created stacked (``nnx.vmap``) and run with ``lax.scan``
(optionally rematerialised), which also yields a layer-major KV cache for free. The model is a set of
pure token-level pieces (embed, run blocks, decode) composed by :meth:`CausalWanDiT.forward_train`
(teacher forcing) and :meth:`CausalWanDiT.forward_chunk` (cached autoregressive inference).
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any, NamedTuple

import jax
import jax.numpy as jnp
from flax import nnx

from dreamzero_policy.models.action_tokens import (
    CategorySpecificMLP,
    MultiEmbodimentActionEncoder,
    check_embodiment_ids,
)
from dreamzero_policy.models.dit_block import AttentionBlock, CrossKV
from dreamzero_policy.nn import masks
from dreamzero_policy.nn.embeddings import timestep_embedding
from dreamzero_policy.nn.linear import Dense
from dreamzero_policy.nn.norms import LayerNorm
from dreamzero_policy.nn.rope import RopeTables


@dataclass(frozen=True)
class DiTConfig:
    dim: int = 5120
    ffn_dim: int = 13824
    num_heads: int = 40
    num_layers: int = 40
    in_dim: int = 36  # noisy latent channels + conditioning channels (14B: 16 + 4 mask + 16 first frame)
    out_dim: int = 16
    freq_dim: int = 256
    text_dim: int = 4096
    image_dim: int = 1280  # CLIP ViT-H/14 width; 0 = text-only cross-attention (t2v)
    patch_size: tuple[int, int, int] = (1, 2, 2)
    eps: float = 1e-6
    concat_first_frame_latent: bool = True  # 14B I2V: channels = [noisy latent | y]
    # action / state register
    action_dim: int = 32
    state_dim: int = 64
    register_hidden: int = 1024
    num_embodiments: int = 1
    frames_per_block: int = 2
    actions_per_block: int = 24
    states_per_block: int = 1
    max_chunk_size: int = 4  # local window = max_chunk_size * frames_per_block + 1 latent frames; -1 = none
    # execution
    remat: bool = False
    attention: str = "xla"
    # The batch split of a device mesh (set by the trainer): activations are kept in it layer by layer, else
    # XLA may split them along features instead and form whole-batch temporaries on every device.
    activation_sharding: Any = None
    dtype: str = "float32"  # compute dtype of the matmuls (fp32 accumulation); norms, modulation, RoPE,
    # softmax, the timestep embedding, the head and the residual stream always run in float32
    param_dtype: str = "float32"  # storage of the matmul weights; norm scales and modulation stay float32

    @property
    def head_dim(self) -> int:
        return self.dim // self.num_heads

    @property
    def has_image(self) -> bool:
        return self.image_dim > 0

    @property
    def local_window_frames(self) -> int:
        return self.max_chunk_size * self.frames_per_block + 1 if self.max_chunk_size > 0 else -1

    def validate(self) -> None:
        if self.dim % self.num_heads or self.head_dim % 2:
            raise ValueError(f"dim={self.dim} must split into an even head_dim over {self.num_heads} heads")
        if self.actions_per_block % self.states_per_block:
            raise ValueError("actions_per_block must be a multiple of states_per_block")


class Register(NamedTuple):
    """The action/state register of one forward: noisy actions and their timesteps, states, embodiments."""

    actions: jax.Array  # (B, Na, action_dim)
    action_t: jax.Array  # (B, Na) timestep values in [0, 1000]
    state: jax.Array  # (B, Ns, state_dim)
    embodiment: jax.Array  # (B,) int32


class MLPProj(nnx.Module):
    """img_emb: LayerNorm, Linear, GELU, Linear, LayerNorm (CLIP tokens -> model width)."""

    def __init__(self, in_dim: int, out_dim: int, *, rngs: nnx.Rngs, dtype=jnp.float32, param_dtype=jnp.float32):
        self.proj_0 = LayerNorm(in_dim, eps=1e-5)
        self.proj_1 = Dense(in_dim, in_dim, rngs=rngs, dtype=dtype, param_dtype=param_dtype)
        self.proj_3 = Dense(in_dim, out_dim, rngs=rngs, dtype=dtype, param_dtype=param_dtype)
        self.proj_4 = LayerNorm(out_dim, eps=1e-5)

    def __call__(self, x: jax.Array) -> jax.Array:
        return self.proj_4(self.proj_3(jax.nn.gelu(self.proj_1(self.proj_0(x)), approximate=False)))


class Head(nnx.Module):
    """Runs in float32 whatever the weights' storage (the reference's head is under fp32 autocast)."""

    def __init__(self, dim: int, out_features: int, eps: float, *, rngs: nnx.Rngs, param_dtype=jnp.float32):
        self.norm = LayerNorm(dim, eps=eps, affine=False)
        self.head = Dense(dim, out_features, rngs=rngs, param_dtype=param_dtype)
        self.modulation = nnx.Param(jax.random.normal(rngs.params(), (1, 2, dim)) / dim**0.5)

    def __call__(self, x: jax.Array, e: jax.Array) -> jax.Array:
        """x (B, L, dim), e (B, L, dim) time embedding of each token."""
        m = self.modulation[...][:, None] + e.astype(jnp.float32)[:, :, None]  # (B, L, 2, dim)
        h = self.norm(x).astype(jnp.float32) * (1 + m[:, :, 1]) + m[:, :, 0]
        return self.head(h)


class CausalWanDiT(nnx.Module):
    def __init__(self, cfg: DiTConfig, *, rngs: nnx.Rngs):
        cfg.validate()
        self.cfg = cfg
        d = cfg.dim
        dt, pdt = jnp.dtype(cfg.dtype), jnp.dtype(cfg.param_dtype)
        kw = dict(rngs=rngs, dtype=dt, param_dtype=pdt)
        self.patch_embedding = nnx.Conv(
            cfg.in_dim, d, kernel_size=cfg.patch_size, strides=cfg.patch_size, padding="VALID",
            preferred_element_type=jnp.float32, **kw
        )
        self.text_embedding_0 = Dense(cfg.text_dim, d, **kw)
        self.text_embedding_2 = Dense(d, d, **kw)
        f32 = dict(rngs=rngs, param_dtype=pdt)  # the timestep embedding runs in float32 (reference)
        self.time_embedding_0 = Dense(cfg.freq_dim, d, **f32)
        self.time_embedding_2 = Dense(d, d, **f32)
        self.time_projection_1 = Dense(d, 6 * d, **f32)
        if cfg.has_image:
            self.img_emb = MLPProj(cfg.image_dim, d, **kw)

        @nnx.split_rngs(splits=cfg.num_layers)
        @nnx.vmap(in_axes=(0,), out_axes=0)
        def make_blocks(r: nnx.Rngs) -> AttentionBlock:
            return AttentionBlock(d, cfg.ffn_dim, cfg.num_heads, cfg.eps, cfg.has_image, rngs=r, dtype=dt,
                                  param_dtype=pdt)

        self.blocks = make_blocks(rngs)
        self.head = Head(d, math.prod(cfg.patch_size) * cfg.out_dim, cfg.eps, rngs=rngs, param_dtype=pdt)
        ne, rk = cfg.num_embodiments, dict(rngs=rngs, param_dtype=pdt)
        self.state_encoder = CategorySpecificMLP(ne, cfg.state_dim, cfg.register_hidden, d, **rk)
        self.action_encoder = MultiEmbodimentActionEncoder(cfg.action_dim, d, ne, **rk)
        self.action_decoder = CategorySpecificMLP(ne, d, cfg.register_hidden, cfg.action_dim, **rk)

    # ----------------------------------------------------------------------------------- pieces
    @property
    def rope(self) -> RopeTables:
        return RopeTables(self.cfg.head_dim)

    @property
    def compute_dtype(self):
        return jnp.dtype(self.cfg.dtype)

    def patchify(self, latents: jax.Array) -> tuple[jax.Array, tuple[int, int, int]]:
        """(B, F, H, W, C) -> tokens (B, F*h*w, dim) and the (F, h, w) grid."""
        x = self.patch_embedding(latents.astype(self.compute_dtype)).astype(self.compute_dtype)
        b, f, h, w, d = x.shape
        return x.reshape(b, f * h * w, d), (f, h, w)

    def unpatchify(self, x: jax.Array, grid: tuple[int, int, int]) -> jax.Array:
        """(B, F*h*w, pt*ph*pw*C) -> (B, F*pt, h*ph, w*pw, C)."""
        (pt, ph, pw), c = self.cfg.patch_size, self.cfg.out_dim
        f, h, w = grid
        x = x.reshape(x.shape[0], f, h, w, pt, ph, pw, c)
        x = x.transpose(0, 1, 4, 2, 5, 3, 6, 7)
        return x.reshape(x.shape[0], f * pt, h * ph, w * pw, c)

    def time_embed(self, t: jax.Array) -> tuple[jax.Array, jax.Array]:
        """Timestep values (...,) -> float32 (e (..., dim), e0 (..., 6, dim))."""
        h = timestep_embedding(t, self.cfg.freq_dim)
        e = self.time_embedding_2(jax.nn.silu(self.time_embedding_0(h)))
        e0 = self.time_projection_1(jax.nn.silu(e))
        return e, e0.reshape(*e0.shape[:-1], 6, self.cfg.dim)

    def embed_context(self, text: jax.Array, clip: jax.Array | None) -> tuple[jax.Array, jax.Array | None]:
        """text (B, Lt, text_dim) umT5 states; clip (B, Li, image_dim) penultimate CLIP tokens."""
        dt = self.compute_dtype
        ctx = self.text_embedding_2(jax.nn.gelu(self.text_embedding_0(text.astype(dt)), approximate=True))
        img = self.img_emb(clip.astype(dt)) if (self.cfg.has_image and clip is not None) else None
        return ctx, img

    def cross_kv(self, text_ctx: jax.Array, img_ctx: jax.Array | None) -> CrossKV:
        """Per-layer cross-attention K/V, stacked (num_layers, B, Lc, H, D): computed once, reused."""
        graphdef, state = nnx.split(self.blocks)

        def one(layer_state):
            return nnx.merge(graphdef, layer_state).cross_attn.kv(text_ctx, img_ctx)

        return jax.lax.map(one, state)

    def encode_register(self, reg: Register) -> jax.Array:
        check_embodiment_ids(reg.embodiment, reg.actions.shape[0], self.cfg.num_embodiments)
        dt = self.compute_dtype
        a = self.action_encoder(reg.actions.astype(dt), reg.action_t, reg.embodiment)
        s = self.state_encoder(reg.state.astype(dt), reg.embodiment)
        return jnp.concatenate([a, s], axis=1)

    def register_timesteps(self, reg: Register) -> jax.Array:
        """Per-token timesteps of [actions | states]; a state takes its chunk's first action timestep."""
        stride = self.cfg.actions_per_block // self.cfg.states_per_block
        return jnp.concatenate([reg.action_t, reg.action_t[:, ::stride]], axis=1)

    def run_blocks(
        self,
        x: jax.Array,
        e0: jax.Array,
        rope: tuple[jax.Array, jax.Array],
        cross: CrossKV | tuple[jax.Array, jax.Array | None],
        *,
        mask: jax.Array | None = None,
        prefix_kv: tuple[jax.Array, jax.Array] | None = None,
    ) -> tuple[jax.Array, tuple[jax.Array, jax.Array]]:
        """Scan the stacked blocks. ``cross`` is precomputed per-layer CrossKV or (text_ctx, img_ctx).

        ``prefix_kv`` holds layer-major cached keys/values (num_layers, B, Lc, H, D). Returns x and the
        layer-major RoPE'd keys/values of these tokens, ready to append to a cache. x leaves in float32
        (the residual stream).
        """
        graphdef, state = nnx.split(self.blocks)
        precomputed = isinstance(cross, CrossKV)
        impl = self.cfg.attention
        split = self.cfg.activation_sharding
        keep = (lambda a: jax.lax.with_sharding_constraint(a, split)) if split is not None else (lambda a: a)
        e0 = keep(e0)

        def body(h, xs):
            layer_state, layer_cross, layer_prefix = xs
            block = nnx.merge(graphdef, layer_state)
            kv = layer_cross if precomputed else block.cross_attn.kv(*cross)
            h, new_kv = block(keep(h), e0, rope, kv, mask=mask, prefix_kv=layer_prefix, implementation=impl)
            return keep(h), new_kv

        if self.cfg.remat:
            body = jax.checkpoint(body, prevent_cse=False)
        xs = (state, cross if precomputed else None, prefix_kv)
        return jax.lax.scan(body, keep(x.astype(jnp.float32)), xs)

    def decode_video(self, x: jax.Array, e: jax.Array, grid: tuple[int, int, int]) -> jax.Array:
        return self.unpatchify(self.head(x, e).astype(jnp.float32), grid)

    def decode_actions(self, x: jax.Array, embodiment: jax.Array) -> jax.Array:
        return self.action_decoder(x, embodiment).astype(jnp.float32)

    # ----------------------------------------------------------------------------------- forwards
    def _with_cond(self, latents: jax.Array, y: jax.Array | None) -> jax.Array:
        if not self.cfg.concat_first_frame_latent:
            return latents
        if y is None:
            raise ValueError("this model concatenates the first-frame conditioning y to its input; y is required")
        if y.shape[:-1] != latents.shape[:-1]:
            raise ValueError(f"y {y.shape} must match latents {latents.shape} except channels")
        return jnp.concatenate([latents, y.astype(latents.dtype)], axis=-1)

    def forward_video(
        self,
        latents: jax.Array,
        t: jax.Array,
        text: jax.Array,
        clip: jax.Array | None = None,
        y: jax.Array | None = None,
    ) -> jax.Array:
        """Plain Wan forward (full attention, no register): latents (B, F, H, W, C), t (B, F)."""
        x, grid = self.patchify(self._with_cond(latents, y))
        per_frame = grid[1] * grid[2]
        e, e0 = self.time_embed(jnp.repeat(t, per_frame, axis=1))
        rope = self.rope.video(jnp.arange(grid[0]), grid[1], grid[2])
        x, _ = self.run_blocks(x, e0, rope, self.embed_context(text, clip))
        return self.decode_video(x, e, grid)

    def forward_train(
        self,
        noisy: jax.Array,
        clean: jax.Array,
        t: jax.Array,
        reg: Register,
        text: jax.Array,
        clip: jax.Array | None = None,
        y: jax.Array | None = None,
        clean_t: jax.Array | None = None,
    ) -> tuple[jax.Array, jax.Array]:
        """Teacher forcing: tokens [clean video | noisy video | actions | states] under the block mask.

        noisy/clean (B, F, H, W, C) latents, t (B, F) per-frame timesteps of the noisy video (clean
        frames use ``clean_t``, default 0). Returns (video velocity (B, F, H, W, out_dim), action
        velocity (B, Na, action_dim)).
        """
        cfg = self.cfg
        xn, grid = self.patchify(self._with_cond(noisy, y))
        xc, _ = self.patchify(self._with_cond(clean, y))
        f, h, w = grid
        per_frame = h * w
        nb = (f - 1) // cfg.frames_per_block
        na, ns = nb * cfg.actions_per_block, nb * cfg.states_per_block
        if reg.actions.shape[1] != na or reg.state.shape[1] != ns:
            raise ValueError(
                f"{f} latent frames make {nb} blocks: expected {na} actions and {ns} states, "
                f"got {reg.actions.shape[1]} and {reg.state.shape[1]}"
            )
        x = jnp.concatenate([xc, xn, self.encode_register(reg)], axis=1)

        t_video = jnp.repeat(t, per_frame, axis=1)
        t_clean = jnp.zeros_like(t_video) if clean_t is None else jnp.repeat(clean_t, per_frame, axis=1)
        e, e0 = self.time_embed(jnp.concatenate([t_clean, t_video, self.register_timesteps(reg)], axis=1))

        cos_v, sin_v = self.rope.video(jnp.arange(f), h, w)
        cos_a, sin_a = self.rope.action(jnp.arange(na))
        cos_s, sin_s = self.rope.state(jnp.arange(ns))
        rope = (jnp.concatenate([cos_v, cos_v, cos_a, cos_s]), jnp.concatenate([sin_v, sin_v, sin_a, sin_s]))

        layout = masks.teacher_forcing_layout(f, per_frame, cfg.frames_per_block, cfg.actions_per_block,
                                              cfg.states_per_block)
        # numpy, not a jax array: under jit it stays a constant, so splash can skip fully masked blocks
        mask = masks.attention_mask(layout, layout, frames_per_block=cfg.frames_per_block,
                                    local_window_frames=cfg.local_window_frames)
        x, _ = self.run_blocks(x, e0, jnp.asarray(rope), self.embed_context(text, clip), mask=mask)

        nv = f * per_frame
        video = self.decode_video(x[:, nv : 2 * nv], e[:, nv : 2 * nv], grid)
        actions = self.decode_actions(x[:, 2 * nv : 2 * nv + na], reg.embodiment)
        return video, actions

    def forward_chunk(
        self,
        latents: jax.Array,
        t: jax.Array,
        start_frame: jax.Array | int,
        cross: CrossKV,
        prefix_kv: tuple[jax.Array, jax.Array] | None,
        prefix_valid: jax.Array | None,
        reg: Register | None = None,
        y: jax.Array | None = None,
    ) -> tuple[jax.Array, jax.Array | None, tuple[jax.Array, jax.Array]]:
        """Cached inference step (reference ``_forward_inference``).

        latents (B, f, H, W, C) at absolute latent frames start_frame..start_frame+f-1 (may be traced),
        t (B,) one timestep for the whole chunk (0 for the clean pass that fills the cache), ``cross``
        from :meth:`cross_kv`, ``prefix_kv`` the layer-major cache (L, B, Lc, H, D) with validity mask
        ``prefix_valid`` (Lc,) bool. The new tokens attend to every valid cached token and to each other
        (no mask, as the reference). With ``reg`` the action/state register of block
        (start_frame - 1) // frames_per_block is appended. Returns (video velocity, action velocity or
        None, the RoPE'd layer-major k/v of the video tokens only — registers are never cached).
        """
        cfg = self.cfg
        x, grid = self.patchify(self._with_cond(latents, y))
        f, h, w = grid
        nv = x.shape[1]
        b = x.shape[0]
        start = jnp.asarray(start_frame, jnp.int32)
        cos, sin = self.rope.video(start + jnp.arange(f), h, w)
        tok_t = jnp.broadcast_to(t[:, None].astype(jnp.float32), (b, nv))
        if reg is not None:
            bi = (start - 1) // cfg.frames_per_block
            cos_a, sin_a = self.rope.action(bi * cfg.actions_per_block + jnp.arange(reg.actions.shape[1]))
            cos_s, sin_s = self.rope.state(bi * cfg.states_per_block + jnp.arange(reg.state.shape[1]))
            cos, sin = jnp.concatenate([cos, cos_a, cos_s]), jnp.concatenate([sin, sin_a, sin_s])
            x = jnp.concatenate([x, self.encode_register(reg)], axis=1)
            tok_t = jnp.concatenate([tok_t, self.register_timesteps(reg)], axis=1)
        e, e0 = self.time_embed(tok_t)
        mask = None
        if prefix_kv is not None:
            valid = jnp.ones(prefix_kv[0].shape[2], bool) if prefix_valid is None else prefix_valid
            mask = jnp.concatenate([valid, jnp.ones(x.shape[1], bool)])[None, :]
        x, (k, v) = self.run_blocks(x, e0, (cos, sin), cross, mask=mask, prefix_kv=prefix_kv)
        video = self.decode_video(x[:, :nv], e[:, :nv], grid)
        actions = self.decode_actions(x[:, nv : nv + reg.actions.shape[1]], reg.embodiment) if reg is not None else None
        return video, actions, (k[:, :, :nv], v[:, :, :nv])

