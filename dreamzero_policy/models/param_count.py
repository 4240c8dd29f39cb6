"""``dreamzero-params``: parameter counts of every preset from abstract shapes (nothing allocated).

    dreamzero-params
    dreamzero-params --presets='[tiny,small]'

Without ``--presets`` every preset is counted.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field

import draccus
import jax
import numpy as np
from flax import nnx

from dreamzero_policy.models.dit import CausalWanDiT
from dreamzero_policy.models.image_encoder import CLIPVisionEncoder
from dreamzero_policy.models.presets import PRESETS, get_preset
from dreamzero_policy.models.text_encoder import UMT5Encoder
from dreamzero_policy.models.vae import WanVAE


def _count(ctor) -> int:
    abstract = nnx.eval_shape(lambda: ctor(nnx.Rngs(0)))
    return int(sum(np.prod(x.shape) for x in jax.tree.leaves(nnx.state(abstract, nnx.Param))))


def preset_param_counts(name: str) -> dict[str, int]:
    cfg = get_preset(name)
    return {
        "dit": _count(lambda r: CausalWanDiT(cfg.dit, rngs=r)),
        "vae": _count(lambda r: WanVAE(cfg.vae, rngs=r)),
        "text_encoder": _count(lambda r: UMT5Encoder(cfg.text, rngs=r)),
        "image_encoder": _count(lambda r: CLIPVisionEncoder(cfg.image, rngs=r)),
    }


@dataclass
class ParamCountConfig:
    presets: list[str] = field(default_factory=lambda: list(PRESETS))  # to count: --presets='[tiny,small]'


def main(argv: Sequence[str] | None = None) -> None:
    args = draccus.parse(ParamCountConfig, args=argv)
    print(f"{'preset':<11} {'DiT':>16} {'VAE':>13} {'umT5':>15} {'CLIP':>13}")
    for name in args.presets:
        c = preset_param_counts(name)
        print(f"{name:<11} {c['dit']:>16,} {c['vae']:>13,} {c['text_encoder']:>15,} {c['image_encoder']:>13,}")


if __name__ == "__main__":
    main()
