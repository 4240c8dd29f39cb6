"""Host-side driver of the jitted rollout: compiled executables, context bookkeeping, frame history.

Each jitted piece is a pure function of (graphdef, params, ...) compiled ahead of time on the first
chunk for a given batch size (``jax.jit(...).lower(...).compile()``), so later chunks and calls can
never trigger a recompilation; a shape mismatch raises instead of silently recompiling.
"""

from __future__ import annotations

from collections import OrderedDict
from dataclasses import dataclass, field

import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx

from dreamzero_policy.configuration_dreamzero import DreamZeroJaxConfig
from dreamzero_policy.inference import rollout as ro
from dreamzero_policy.models.world_model import DreamZeroModel, make_tokenizer
from dreamzero_policy.schedulers.unipc import UniPCSchedule

# Distinct task tuples whose umT5 states stay cached (LRU). A server whose clients vary the prompt must not
# grow without bound: at 14B one entry is about 8 MiB of device memory.
TEXT_CACHE_SIZE = 32


def _compile(fn, *args, donate: tuple[int, ...] = ()):
    return jax.jit(fn, donate_argnums=donate).lower(*args).compile()


@dataclass
class _Compiled:
    encode_text: object
    start: object
    observe_first: object
    observe_block: object
    plan: object
    encode_frame: object  # one frame alone -> its latent: the context an imagined block is decoded behind


@dataclass
class RolloutRunner:
    config: DreamZeroJaxConfig
    model: DreamZeroModel
    device: jax.Device | None = None  # where parameters live and the rollout runs; None: JAX's default
    _compiled: dict[int, _Compiled] = field(default_factory=dict)
    _text_cache: OrderedDict[tuple[str, ...], jax.Array] = field(default_factory=OrderedDict)
    state: ro.RolloutState | None = None
    tasks: tuple[str, ...] | None = None
    chunks_done: int = 0
    history: list[np.ndarray] = field(default_factory=list)
    plan_count: int = 0

    def __post_init__(self) -> None:
        self.tokenizer = make_tokenizer(self.model.cfg, self.config.tokenizer_dir)
        self.device = self.device or jax.devices()[0]
        # umT5 runs once per task; on the host it keeps its weights (11 GB at 14B in bf16) off the device.
        self.text_device = jax.devices("cpu")[0] if self.config.text_encoder_on_host else self.device
        self.set_params(self.model)
        c = self.config
        mask = [True] * c.num_inference_steps if c.dit_steps is None else [
            i in set(c.dit_steps) for i in range(c.num_inference_steps)
        ]
        self.schedule = UniPCSchedule.create(num_steps=c.num_inference_steps, shift=c.sigma_shift)
        self.dit_mask = tuple(mask)

    def set_params(self, model: DreamZeroModel) -> None:
        """Use ``model``'s weights: the text encoder's on ``text_device``, the rest on ``device``
        (executables follow their arguments). Arrays already in place are not copied."""
        self.model = model
        self.graphdef, text, rest = nnx.split(model, nnx.PathContains("text_encoder"), ...)
        # The rollout never runs umT5: it is merged back as shapes only, so its weights are not arguments.
        self._text_shapes = jax.tree.map(lambda x: jax.ShapeDtypeStruct(x.shape, x.dtype), text)
        self.params = jax.device_put(rest, self.device)
        self.text_graphdef, text_params = nnx.split(model.text_encoder)
        self.text_params = jax.device_put(text_params, self.text_device)
        nnx.update(model, self.params)  # the model holds the placed arrays: one copy of each weight
        nnx.update(model.text_encoder, self.text_params)
        self._text_cache.clear()  # umT5 states of the old weights
        self.reset()

    def bind(self, params: nnx.State) -> DreamZeroModel:
        """The model with ``params`` (everything but umT5), for use inside a traced function."""
        return nnx.merge(self.graphdef, self._text_shapes, params)

    # ------------------------------------------------------------------ context
    def reset(self) -> None:
        """Forget the context; sampling noise restarts from the seed, so an episode is reproducible."""
        self.state, self.tasks, self.chunks_done, self.history, self.plan_count = None, None, 0, [], 0

    def spec(self, batch: int) -> ro.RolloutSpec:
        h, w = self.config.frame_size
        ds = self.model.cfg.dit
        pt, ph, pw = ds.patch_size
        lat = self._latent_hw(h, w)
        if lat[0] % ph or lat[1] % pw:
            raise ValueError(f"frame {h}x{w} gives a latent grid {lat} not divisible by the patch {ph}x{pw}")
        return ro.RolloutSpec(batch=batch, frame_hw=(h, w), latent_hw=lat, max_chunks=self.config.max_chunks_before_reset,
                              cfg_scale=float(self.config.cfg_scale), schedule=self.schedule, dit_mask=self.dit_mask)

    def _latent_hw(self, h: int, w: int) -> tuple[int, int]:
        v = self.model.cfg.vae
        s = 2 ** (len(v.dim_mult) - 1) * v.patch_size
        if h % s or w % s:
            raise ValueError(f"tiled frame {h}x{w} must be divisible by the VAE stride {s}")
        return h // s, w // s

    def _fns(self, batch: int, frame: np.ndarray) -> _Compiled:
        if batch in self._compiled:
            return self._compiled[batch]
        spec = self.spec(batch)
        m = self.bind
        tg = self.text_graphdef
        ids, mask = (jax.device_put(np.asarray(a), self.text_device) for a in self.tokenizer([""] * batch))
        text_fn = _compile(lambda p, i, k: nnx.merge(tg, p).encode_prompts(i, k), self.text_params, ids, mask)
        text = jax.device_put(text_fn(self.text_params, ids, mask), self.device)

        f0 = jax.device_put(frame, self.device)
        both = jnp.concatenate([text] * spec.branches)
        start_fn = _compile(lambda p, t, f: ro.start_context(m(p), spec, t, f), self.params, both, f0)
        state = start_fn(self.params, both, f0)
        # The rollout state (KV cache) is donated: each call writes the new cache over the old one instead of
        # holding both (11 GB at 14B). Callers always replace their state with the returned one.
        obs_first = _compile(lambda p, s, f: ro.observe_first(m(p), spec, s, f), self.params, state, f0, donate=(1,))
        t = 4 * self.model.cfg.dit.frames_per_block
        frames = jax.ShapeDtypeStruct((batch, t, *frame.shape[1:]), jnp.float32)
        obs_block = None  # with one chunk per context no observed block is ever appended
        if spec.max_chunks > 1:
            obs_block = _compile(lambda p, s, f: ro.observe_block(m(p), spec, s, f), self.params, state, frames,
                                 donate=(1,))
        ds = self.model.cfg.dit
        rs = jax.ShapeDtypeStruct((batch, ds.states_per_block, ds.state_dim), jnp.float32)
        emb = jax.ShapeDtypeStruct((batch,), jnp.int32)
        seed = jax.ShapeDtypeStruct((), jnp.int32)

        def plan(p, s, r, e, n):
            key = jax.random.fold_in(jax.random.key(self.config.seed), n)
            return ro.plan(m(p), spec, s, r, e, key)

        plan_fn = _compile(plan, self.params, state, rs, emb, seed, donate=(1,))
        enc_fn = _compile(lambda p, f: m(p).encode_video(f[:, None]), self.params, f0)
        self._compiled[batch] = _Compiled(text_fn, start_fn, obs_first, obs_block, plan_fn, enc_fn)
        return self._compiled[batch]

    def _encoded_text(self, fns: _Compiled, tasks: tuple[str, ...]) -> jax.Array:
        """umT5 states per task tuple, in an LRU cache of ``TEXT_CACHE_SIZE`` entries."""
        if tasks in self._text_cache:
            self._text_cache.move_to_end(tasks)
            return self._text_cache[tasks]
        ids, mask = (jax.device_put(np.asarray(a), self.text_device) for a in self.tokenizer(list(tasks)))
        self._text_cache[tasks] = jax.device_put(fns.encode_text(self.text_params, ids, mask), self.device)
        while len(self._text_cache) > TEXT_CACHE_SIZE:
            self._text_cache.popitem(last=False)
        return self._text_cache[tasks]

    # ------------------------------------------------------------------ one chunk
    def step(self, frame: np.ndarray, robot_state: np.ndarray, tasks: tuple[str, ...],
             embodiment: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """frame (B, H, W, 3) in [-1, 1] (the latest tiled observation), robot_state (B, S) normalised
        and padded. Returns (actions (B, chunk, action_dim) normalised, latents (B, 1 + fpb, h, w, z):
        the latent of ``frame`` alone followed by the predicted block, so the block decodes in context)."""
        b = frame.shape[0]
        fns = self._fns(b, frame)
        fresh = (
            self.state is None or self.tasks != tasks or self.chunks_done >= self.config.max_chunks_before_reset
            or self.state.k.shape[1] != self.spec(b).branches * b
        )
        if fresh:
            text = self._encoded_text(fns, tasks)
            if self.spec(b).branches == 2:
                text = jnp.concatenate([text, self._encoded_text(fns, (self.config.negative_prompt,) * b)])
            self.state = fns.start(self.params, text, frame)
            self.state = fns.observe_first(self.params, self.state, frame)
            self.tasks, self.chunks_done = tasks, 0
        else:
            self.state = fns.observe_block(self.params, self.state, self._history_frames(frame))
        self.history = []
        rs = np.zeros((b, 1, self.model.cfg.dit.state_dim), np.float32)
        rs[:, 0, : robot_state.shape[1]] = robot_state
        actions, video, self.state = fns.plan(self.params, self.state, rs, embodiment.astype(np.int32),
                                              np.int32(self.plan_count))
        self.plan_count += 1
        self.chunks_done += 1
        context = fns.encode_frame(self.params, frame)
        return np.asarray(actions), np.concatenate([np.asarray(context), np.asarray(video)], axis=1)

    def record(self, frame: np.ndarray) -> None:
        """Keep a frame seen while the current chunk executes (it joins the next observed block)."""
        if self.history and self.history[0].shape != frame.shape:
            raise ValueError(f"frame {frame.shape} does not match the recorded frames {self.history[0].shape}; "
                             "call reset() before changing the batch or the cameras")
        self.history.append(frame)

    def _history_frames(self, latest: np.ndarray) -> np.ndarray:
        """The 4*fpb frames of the last chunk: the recorded frames followed by ``latest`` (the frame that
        triggers this plan, as the reference sends the newest frames), evenly subsampled and repeated
        when fewer were seen, so the block always ends with ``latest``."""
        frames = [*self.history, latest]
        if any(f.shape != latest.shape for f in frames):
            raise ValueError(f"recorded frames {[f.shape for f in self.history]} do not match the latest frame "
                             f"{latest.shape}; call reset() before changing the batch or the cameras")
        n = 4 * self.model.cfg.dit.frames_per_block
        idx = np.round(np.linspace(0, len(frames) - 1, n)).astype(int)
        return np.stack([frames[i] for i in idx], axis=1).astype(np.float32)
