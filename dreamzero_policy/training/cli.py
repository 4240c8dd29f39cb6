"""``dreamzero-train``: train, resume, precompute encoder outputs, or export a checkpoint.

    dreamzero-train --config_path configs/train_tiny_reach.yaml --dataset_root data/dz_reach
    dreamzero-train --config_path configs/train_tiny_reach.yaml --precompute_only true --precomputed out/pre
    dreamzero-train --export_from outputs/train --export_to outputs/train/pretrained

Multi-host: run the same command on every host with ``--distributed true`` (``jax.distributed.initialize``
reads the coordinator from the cluster environment: SLURM, TPU pods, or JAX_COORDINATOR_ADDRESS /
JAX_NUM_PROCESSES / JAX_PROCESS_ID) and a mesh whose data*fsdp*tensor equals the global device count.
"""

from __future__ import annotations

import sys
from collections.abc import Sequence

import draccus

from dreamzero_policy.training.config import TrainConfig


def main(argv: Sequence[str] | None = None) -> None:
    argv = list(sys.argv[1:] if argv is None else argv)
    if "--export_from" in argv:
        from dreamzero_policy.training.export import export_pretrained

        src = argv[argv.index("--export_from") + 1]
        dst = argv[argv.index("--export_to") + 1] if "--export_to" in argv else f"{src}/pretrained"
        print(f"exported to {export_pretrained(src, dst)}")
        return
    cfg = draccus.parse(TrainConfig, args=argv)
    if cfg.precompute_only:
        from lerobot.datasets.lerobot_dataset import LeRobotDataset

        from dreamzero_policy.models.world_model import make_tokenizer
        from dreamzero_policy.training.data import WindowDataset
        from dreamzero_policy.training.export import build_model
        from dreamzero_policy.training.precompute import precompute

        if not cfg.precomputed:
            raise ValueError("--precompute_only needs --precomputed <output directory>")
        model = build_model(cfg)
        ds = WindowDataset(
            LeRobotDataset(cfg.repo_id, root=cfg.dataset_root),
            cfg.policy_config(),
            model.cfg,
            make_tokenizer(model.cfg),
            num_chunks=cfg.num_chunks,
            seed=cfg.seed,
            train=False,
            crop=cfg.crop,
        )
        if cfg.latent_stats_frames > 0 and cfg.latents_mean is None:
            from dreamzero_policy.training.latent_stats import apply_latent_stats, estimate_latent_stats

            apply_latent_stats(model, cfg, *estimate_latent_stats(model, ds, cfg.latent_stats_frames))
        print(f"wrote {precompute(ds, model, cfg.precomputed, cfg.batch_size)}")
        return
    from dreamzero_policy.training.run import train

    recs = train(cfg)
    if recs:
        print(f"done: step {recs[-1]['step']} loss {recs[-1]['loss']:.5f} -> {cfg.output_dir}")


if __name__ == "__main__":
    main()
