"""What the world model imagined next to what really happened, as one picture.

Runs the policy for one episode in-process; at every re-plan it keeps the predicted latent block,
decodes it with the VAE (behind the latent of the frame it was planned from, so the causal decoder
has its context) and pairs each imagined frame with the frame the environment really showed.
"""

from __future__ import annotations

from pathlib import Path

import jax.numpy as jnp
import numpy as np
import torch
from PIL import Image

import dreamzero_envs as envs
from dreamzero_policy.modeling_dreamzero import DreamZeroJaxPolicy


def _obs(o: dict, task: str, pre) -> dict:
    batch = {"observation.state": torch.as_tensor(o["agent_pos"], dtype=torch.float32)[None]}
    for cam, img in o["pixels"].items():
        batch[f"observation.images.{cam}"] = torch.as_tensor(img).permute(2, 0, 1)[None].float() / 255.0
    batch["task"] = [task]
    return pre(batch) if pre is not None else batch


def imagine_episode(policy: DreamZeroJaxPolicy, env_name: str, seed: int, out: Path, pre=None, post=None,
                    image_size: int = 64, max_plans: int = 4, layout: str = "fixed") -> Path:
    env = envs.make(env_name, image_size=image_size, layout=layout, cameras=",".join(
        k.split(".")[-1] for k in policy.config.camera_keys))
    o, _ = env.reset(seed=seed)
    task = env.unwrapped.task_description
    policy.reset()
    rows, real, pending = [], [], None
    done = False
    while not done and len(rows) < max_plans:
        batch = _obs(o, task, pre)
        replan = len(policy._action_queue) == 0
        action = policy.select_action(batch)
        if replan:
            if pending is not None:
                rows.append((pending, real))
            frame = policy._observe(batch)  # the tiled model frame, [-1, 1]
            ctx = policy.model.encode_video(jnp.asarray(frame)[:, None])
            lat = jnp.concatenate([ctx, jnp.asarray(policy.last_predicted_latents)], axis=1)
            video = np.asarray(policy.model.vae.decode(lat))[0, 1:]  # drop the context frame
            pending, real = video, []
        if post is not None:
            action = post(action)
        o, _, term, trunc, _ = env.step(action[0].numpy())
        real.append(policy._observe(_obs(o, task, pre))[0])
        done = term or trunc
    if pending is not None:
        rows.append((pending, real))
    env.close()
    return save_grid(rows, out, title=task)


def save_grid(rows: list[tuple[np.ndarray, list[np.ndarray]]], out: Path, title: str = "") -> Path:
    """Per plan: a row of imagined frames above the row of real frames (both in [-1, 1])."""
    to_u8 = lambda x: np.clip((np.asarray(x) + 1) * 127.5, 0, 255).astype(np.uint8)
    strips = []
    for imagined, real in rows:
        n = min(len(imagined), len(real)) or len(imagined)
        blank = np.zeros_like(imagined[0])
        top = np.concatenate([to_u8(imagined[i]) for i in range(n)], axis=1)
        bottom = np.concatenate([to_u8(real[i]) if i < len(real) else to_u8(blank) for i in range(n)], axis=1)
        strips.append(np.concatenate([top, bottom, np.full((4, top.shape[1], 3), 255, np.uint8)], axis=0))
    width = max(s.shape[1] for s in strips)
    strips = [np.pad(s, ((0, 0), (0, width - s.shape[1]), (0, 0))) for s in strips]
    img = Image.fromarray(np.concatenate(strips, axis=0))
    img = img.resize((img.width * 3, img.height * 3), Image.NEAREST)
    out.parent.mkdir(parents=True, exist_ok=True)
    img.save(out)
    (out.with_suffix(".txt")).write_text(f"{title}\nrows per plan: imagined (top) vs real (bottom)\n")
    return out
