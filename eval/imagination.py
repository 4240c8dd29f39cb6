"""Imagined futures, scored: what the world model predicted next to what really happened.

The policy runs closed loop in-process on held-out seeds. At every plan it keeps the predicted latent
block, decoded behind the frame it was planned from (``decode_predicted_latents``), and pairs imagined
frame i with the frame the environment really showed at the same offset (frame i of a block stands
``((i + 1) * actions_per_block) // (4 * frames_per_block)`` actions after the plan, as in the training
windows). Only frames whose actions were executed are scored. Per chunk index of the context (1 = the
plan that starts a context, 2 = the next one, which also sees the frames observed meanwhile, ...): PSNR
of the imagined frames and of the copy-the-last-observed-frame baseline, over the same frames.
"""

from __future__ import annotations

import json
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

import gymnasium as gym
import numpy as np
import torch
from PIL import Image, ImageDraw

import dreamzero_envs as envs
from dreamzero_policy.modeling_dreamzero import DreamZeroJaxPolicy
from dreamzero_policy.training.vae_fit import psnr


def _obs(o: dict, task: str, pre) -> dict:
    """An env observation as LeRobot's env processing hands it to the policy: named cameras (`dz_reach`) become
    `observation.images.<cam>`, a single `pixels` array (`dz_metaworld`) `observation.image`."""
    batch = {"observation.state": torch.as_tensor(o["agent_pos"], dtype=torch.float32)[None]}
    to_chw = lambda img: torch.as_tensor(img).permute(2, 0, 1)[None].float() / 255.0  # noqa: E731
    if isinstance(o["pixels"], dict):
        for cam, img in o["pixels"].items():
            batch[f"observation.images.{cam}"] = to_chw(img)
    else:
        batch["observation.image"] = to_chw(o["pixels"])
    batch["task"] = [task]
    return pre(batch) if pre is not None else batch


def reach_env(policy: DreamZeroJaxPolicy, env_name: str, image_size: int = 64,
              layout: str = "fixed") -> Callable[[], gym.Env]:
    """A factory of our reach sims with the cameras the policy reads."""
    cams = ",".join(k.split(".")[-1] for k in policy.config.camera_keys)
    return lambda: envs.make(env_name, image_size=image_size, layout=layout, cameras=cams)


@dataclass
class Plan:
    chunk: int  # position of the plan in its context (1-based)
    start: np.ndarray  # the frame planned from, [-1, 1]
    imagined: np.ndarray  # (4*fpb, H, W, 3) in [-1, 1]
    offsets: np.ndarray  # actions after the plan at which each imagined frame stands
    real: list[np.ndarray] = field(default_factory=list)  # frames seen after each executed action

    def scored(self) -> list[tuple[np.ndarray, np.ndarray]]:
        """(imagined, real) pairs whose real frame was observed."""
        return [(self.imagined[i], self.real[o - 1]) for i, o in enumerate(self.offsets) if 0 < o <= len(self.real)]


def load_policy(policy_dir: Path) -> tuple[DreamZeroJaxPolicy, object, object]:
    """A saved policy with the sampling settings it was evaluated with, and its pre/post processors."""
    from lerobot.configs.policies import PreTrainedConfig
    from lerobot.policies.factory import make_pre_post_processors

    import lerobot_policy_dreamzero  # noqa: F401  (registers the policy type)

    pcfg = PreTrainedConfig.from_pretrained(policy_dir)
    pre, post = make_pre_post_processors(pcfg, pretrained_path=str(policy_dir))
    return DreamZeroJaxPolicy.from_pretrained(policy_dir, config=pcfg), pre, post


def run_episode(policy: DreamZeroJaxPolicy, make_env: Callable[[], gym.Env], seed: int, pre=None, post=None,
                max_steps: int | None = None) -> list[Plan]:
    env = make_env()
    dit = policy.model.cfg.dit
    nf = 4 * dit.frames_per_block
    offsets = ((np.arange(nf) + 1) * dit.actions_per_block) // nf
    o, _ = env.reset(seed=seed)
    task = env.unwrapped.task_description
    policy.reset()
    plans: list[Plan] = []
    done, steps = False, 0
    while not done and (max_steps is None or steps < max_steps):
        batch = _obs(o, task, pre)
        action = policy.select_action(batch)
        if policy.last_predicted_latents is not None:  # this call planned
            imagined = policy.decode_predicted_latents(policy.last_predicted_latents).astype(np.float32) / 127.5 - 1
            policy.last_predicted_latents = None
            plans.append(Plan(policy.runner.chunks_done, policy._observe(batch)[0], imagined, offsets))
        if post is not None:
            action = post(action)
        o, _, term, trunc, _ = env.step(action[0].numpy())
        plans[-1].real.append(policy._observe(_obs(o, task, pre))[0])
        done, steps = term or trunc, steps + 1
    env.close()
    return plans


def pooled_psnr(triples: list[tuple[np.ndarray, np.ndarray, np.ndarray]]) -> tuple[float, float]:
    """(imagined, real, last observed) frames -> PSNR of the imagined frames and of copying the last frame,
    each from the mean squared error over all frames: a frame the baseline matches exactly (a robot at rest)
    adds zero error instead of an infinite PSNR that a mean of per-frame PSNRs would swallow the rest with."""
    imagined, real, last = (np.stack(x) for x in zip(*triples, strict=True))
    return psnr(imagined, real), psnr(last, real)


Locate = Callable[[np.ndarray], np.ndarray | None]


def bright_centroid(frame: np.ndarray, threshold: float = 0.0) -> np.ndarray | None:
    """(row, col) centroid of the pixels whose darkest channel is above ``threshold`` (frames in [-1, 1]), or
    None when there are none. In ``dz_reach`` the robot is the only near-white thing (245 grey on a dark
    floor; the targets are saturated colours whose darkest channel is <= 60/255), so this is where it is."""
    rows, cols = np.nonzero(np.asarray(frame).min(axis=-1) > threshold)
    return np.array([rows.mean(), cols.mean()]) if len(rows) else None


def robot_positions(triples: list[tuple[np.ndarray, np.ndarray, np.ndarray]], locate: Locate) -> dict[str, float | None]:
    """Where the imagined robot is against where it really was, and where copying the last frame leaves it:
    PSNR rewards an imagined frame that loses the robot (one error instead of two), this does not. Over the
    frames whose real robot is found: the share where the imagined one is found too, and on those the mean
    pixel distance of the imagined and of the last observed robot to the real one."""
    found, im_err, cp_err = 0, [], []
    for imagined, real, last in triples:
        r, s = locate(real), locate(last)
        if r is None or s is None:
            continue
        found += 1
        i = locate(imagined)
        if i is not None:
            im_err.append(float(np.linalg.norm(i - r)))
            cp_err.append(float(np.linalg.norm(s - r)))
    return {"robot_found_pct": 100.0 * len(im_err) / max(found, 1),  # None below: no imagined robot found
            "robot_error_px": float(np.mean(im_err)) if im_err else None,
            "copy_last_robot_error_px": float(np.mean(cp_err)) if cp_err else None}


def score(plans: list[Plan], locate: Locate | None = None) -> dict[str, dict[str, float]]:
    """Per chunk index: PSNR of imagined frames and of the copy-last-frame baseline (pooled over the chunk's
    frames), and the frame count; with ``locate`` (frame -> robot position or None) also
    :func:`robot_positions`."""
    by_chunk: dict[int, list[tuple[np.ndarray, np.ndarray, np.ndarray]]] = {}
    for p in plans:
        by_chunk.setdefault(p.chunk, []).extend((imagined, real, p.start) for imagined, real in p.scored())
    out = {}
    for k, triples in sorted(by_chunk.items()):
        if triples:
            im, cp = pooled_psnr(triples)
            out[str(k)] = {"imagined_psnr_db": im, "copy_last_psnr_db": cp, "frames": len(triples)}
            if locate is not None:
                out[str(k)] |= robot_positions(triples, locate)
    return out


def score_imagination(policy: DreamZeroJaxPolicy, make_env: Callable[[], gym.Env], seeds: list[int], out: Path,
                      pre=None, post=None, picture_plans: int = 4, locate: Locate | None = None) -> dict:
    """Score ``seeds`` (held-out episodes of a fresh ``make_env()`` each); save ``<out>.json`` and a labelled
    picture of the first one."""
    episodes = [run_episode(policy, make_env, s, pre, post) for s in seeds]
    result = {"seeds": list(seeds), "per_chunk": score([p for ep in episodes for p in ep], locate)}
    out.parent.mkdir(parents=True, exist_ok=True)
    out.with_suffix(".json").write_text(json.dumps(result, indent=2))
    save_picture(episodes[0][:picture_plans], out, title=f"seed {seeds[0]}")
    return result


def save_picture(plans: list[Plan], out: Path, title: str = "", scale: int = 3) -> Path:
    """Per plan: the imagined frames above the real ones, labelled, with the plan's PSNR and baseline."""
    to_u8 = lambda x: np.clip((np.asarray(x) + 1) * 127.5, 0, 255).astype(np.uint8)
    label_w, gap = 150, 6
    rows = []
    for p in plans:
        pairs = p.scored()
        if not pairs:
            continue
        top = np.concatenate([to_u8(a) for a, _ in pairs], axis=1)
        bottom = np.concatenate([to_u8(b) for _, b in pairs], axis=1)
        strip = Image.fromarray(np.concatenate([top, bottom], axis=0))
        strip = strip.resize((strip.width * scale, strip.height * scale), Image.NEAREST)
        canvas = Image.new("RGB", (label_w + strip.width, strip.height + gap), "white")
        canvas.paste(strip, (label_w, 0))
        d = ImageDraw.Draw(canvas)
        h = strip.height // 2
        im, cp = pooled_psnr([(a, b, p.start) for a, b in pairs])
        d.text((4, 4), f"imagined\nchunk {p.chunk}\nPSNR {im:.1f} dB", fill="black")
        d.text((4, h + 4), f"real\n(copy-last\n{cp:.1f} dB)", fill="black")
        rows.append(canvas)
    width = max(r.width for r in rows)
    head = 18
    img = Image.new("RGB", (width, head + sum(r.height for r in rows)), "white")
    ImageDraw.Draw(img).text((4, 3), f"imagined (top) vs real (bottom) frames after each plan; {title}", fill="black")
    y = head
    for r in rows:
        img.paste(r, (0, y))
        y += r.height
    out.parent.mkdir(parents=True, exist_ok=True)
    img.save(out)
    return out
