"""Wan VAE weights: reference (original Wan / DreamZero ``action_head.vae.model.*``) layout -> ours.

Reference names: ``encoder.conv1``, ``encoder.downsamples.N`` (Wan2.1: a flat list of residual blocks and
resamplers; Wan2.2: stages ``N`` holding ``downsamples.J``), ``encoder.middle.{0,1,2}``,
``encoder.head.{0,2}``, ``conv1`` / ``conv2`` (quant / post-quant), and the mirrored decoder with
``upsamples``. Residual blocks are ``residual.{0,2,3,6}`` (norm, conv, norm, conv) and ``shortcut``;
resamplers ``resample.1`` (the 2D conv) and ``time_conv``.
"""

from __future__ import annotations

import re
from collections.abc import Mapping

import numpy as np

from dreamzero_policy.convert.torch_layout import conv, linear
from dreamzero_policy.models.vae import VAEConfig

_REFERENCE_RENAMES = (
    (".residual.0.", ".norm1."),
    (".residual.2.", ".conv1."),
    (".residual.3.", ".norm2."),
    (".residual.6.", ".conv2."),
    (".head.0.", ".head_norm."),
    (".head.2.", ".head_conv."),
    (".resample.1.", ".resample."),
)


def _reference_to_path(key: str) -> str:
    name = key
    for old, new in _REFERENCE_RENAMES:
        name = name.replace(old, new)
    stem, leaf = name.rsplit(".", 1)
    leaf = {"weight": "kernel", "bias": "bias", "gamma": "gamma"}.get(leaf)
    if leaf is None:
        raise ValueError(f"unexpected VAE parameter {key!r}")
    return stem.replace(".", "/") + "/" + leaf


def vae_params_from_torch(sd: Mapping[str, np.ndarray], cfg: VAEConfig) -> dict[str, np.ndarray]:
    """Reference-layout VAE state dict (no ``action_head.vae.model.`` prefix) -> flat NNX params.

    ``cfg`` catches a checkpoint of the other VAE variant early; every other shape is checked when the
    result is loaded with ``state_io.load_flat``.
    """
    _check_variant(sd, cfg)
    out: dict[str, np.ndarray] = {}
    for key, value in sd.items():
        w = np.asarray(value)
        path = _reference_to_path(key)
        if path.endswith("/gamma"):
            w = w.reshape(-1)  # (C, 1, 1[, 1]) broadcast shape -> (C,)
        elif path.endswith("/kernel"):
            if ".to_qkv." in key or ".proj." in key:
                w = linear(w.reshape(w.shape[0], w.shape[1]))  # 1x1 Conv2d used as a Linear
            elif w.ndim in (4, 5):
                w = conv(w)
            else:
                raise ValueError(f"{key}: expected a 4D or 5D conv weight, got shape {w.shape}")
        out[path] = w
    return out


def _check_variant(sd: Mapping[str, np.ndarray], cfg: VAEConfig) -> None:
    for key, axis, want, what in (
        ("conv2.weight", 0, cfg.z_dim, "z_dim"),
        ("encoder.conv1.weight", 1, cfg.io_channels, "input channels (3 * patch_size**2)"),
    ):
        if key in sd and np.shape(sd[key])[axis] != want:
            raise ValueError(
                f"{key} has {np.shape(sd[key])[axis]} {what}, config expects {want}: wrong VAE variant?"
            )


def vae_reference_keys_from_diffusers(sd: Mapping[str, np.ndarray], cfg: VAEConfig) -> dict[str, np.ndarray]:
    """diffusers ``AutoencoderKLWan`` state dict -> reference key names (the inverse of diffusers'
    ``convert_wan_vae_to_diffusers``, extended to the Wan2.2 residual stages)."""
    r = cfg.num_res_blocks
    out: dict[str, np.ndarray] = {}
    for key, value in sd.items():
        out[_diffusers_to_reference(key, r, cfg.is_residual)] = value
    return out


def _diffusers_to_reference(key: str, num_res_blocks: int, is_residual: bool) -> str:
    top = {
        "quant_conv.": "conv1.",
        "post_quant_conv.": "conv2.",
        "encoder.conv_in.": "encoder.conv1.",
        "decoder.conv_in.": "decoder.conv1.",
        "encoder.norm_out.": "encoder.head.0.",
        "encoder.conv_out.": "encoder.head.2.",
        "decoder.norm_out.": "decoder.head.0.",
        "decoder.conv_out.": "decoder.head.2.",
    }
    for old, new in top.items():
        if key.startswith(old):
            return new + key[len(old) :]
    key = re.sub(r"\.mid_block\.resnets\.0\.", ".middle.0.", key)
    key = re.sub(r"\.mid_block\.attentions\.0\.", ".middle.1.", key)
    key = re.sub(r"\.mid_block\.resnets\.1\.", ".middle.2.", key)
    if is_residual:
        key = re.sub(
            r"^encoder\.down_blocks\.(\d+)\.resnets\.(\d+)\.", r"encoder.downsamples.\1.downsamples.\2.", key
        )
        key = re.sub(
            r"^encoder\.down_blocks\.(\d+)\.downsampler\.",
            rf"encoder.downsamples.\1.downsamples.{num_res_blocks}.",
            key,
        )
        key = re.sub(
            r"^decoder\.up_blocks\.(\d+)\.resnets\.(\d+)\.", r"decoder.upsamples.\1.upsamples.\2.", key
        )
        key = re.sub(
            r"^decoder\.up_blocks\.(\d+)\.upsampler\.",
            rf"decoder.upsamples.\1.upsamples.{num_res_blocks + 1}.",
            key,
        )
    else:
        key = re.sub(r"^encoder\.down_blocks\.", "encoder.downsamples.", key)
        # Each Wan2.1 decoder stage is num_res_blocks + 1 residual blocks and one upsampler, flattened.
        stride = num_res_blocks + 2
        key = re.sub(
            r"^decoder\.up_blocks\.(\d+)\.resnets\.(\d+)\.",
            lambda m: f"decoder.upsamples.{int(m[1]) * stride + int(m[2])}.",
            key,
        )
        key = re.sub(
            r"^decoder\.up_blocks\.(\d+)\.upsamplers\.0\.",
            lambda m: f"decoder.upsamples.{int(m[1]) * stride + num_res_blocks + 1}.",
            key,
        )
    resnet = {
        "norm1.": "residual.0.",
        "conv1.": "residual.2.",
        "norm2.": "residual.3.",
        "conv2.": "residual.6.",
    }
    stem, _, leaf = key.rpartition(".")
    head, _, module = stem.rpartition(".")
    if module + "." in resnet and not head.endswith(("encoder", "decoder")):
        return f"{head}.{resnet[module + '.'][:-1]}.{leaf}"
    if module == "conv_shortcut":
        return f"{head}.shortcut.{leaf}"
    return key
