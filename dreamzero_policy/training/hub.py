"""Pushing an exported policy directory to the Hugging Face Hub (``--policy.repo_id``).

The exported directory is what LeRobot's ``push_model_to_hub`` uploads for its own policies: config,
weights, processor files and a model card. Offline (``HF_HUB_OFFLINE=1``) a push is refused before
training starts, not discovered after it.
"""

from __future__ import annotations

from pathlib import Path


def check_can_push(repo_id: str) -> None:
    from huggingface_hub import constants

    if constants.HF_HUB_OFFLINE:
        raise ValueError(
            f"--policy.repo_id={repo_id} asks to push the policy to the Hub, but HF_HUB_OFFLINE is set: "
            "unset it, or pass --policy.push_to_hub=false (the policy is exported locally either way)"
        )
    if "/" not in repo_id:
        raise ValueError(f"--policy.repo_id must look like 'user/name', got {repo_id!r}")


def push_policy(folder: Path, repo_id: str, private: bool | None = None) -> str:
    from huggingface_hub import HfApi

    check_can_push(repo_id)
    api = HfApi()
    repo = api.create_repo(repo_id=repo_id, private=private, exist_ok=True).repo_id
    info = api.upload_folder(
        repo_id=repo, repo_type="model", folder_path=folder, commit_message="Upload dreamzero_jax policy",
        allow_patterns=["*.safetensors", "*.json", "*.md"],
    )
    return info.commit_url


def write_model_card(
    folder: Path,
    policy,
    *,
    dataset_repo_id: str,
    steps: int,
    success: dict[str, float] | None = None,
    eval_note: str = "",
) -> Path:
    """README.md with the Hub's model-card metadata: the dataset it was trained on and, once measured,
    the closed-loop success (``success``: evaluation name -> % of episodes)."""
    from huggingface_hub import ModelCard, ModelCardData

    data = ModelCardData(
        license=policy.license or "apache-2.0", library_name="lerobot", pipeline_tag="robotics",
        tags=sorted({"robotics", "lerobot", "dreamzero_jax", "jax", "world-action-model", *(policy.tags or [])}),
        datasets=[dataset_repo_id],
    )
    if success:
        rows = "\n".join(f"| {name} | {pct:.1f} % |" for name, pct in success.items())
        measured = f"| evaluation | success |\n|---|---:|\n{rows}\n\n{eval_note}".rstrip()
    else:
        measured = "Not measured yet: evaluate with the command below."
    body = f"""---
{data.to_yaml()}
---

# dreamzero_jax policy (preset `{policy.preset}`)

DreamZero world-action model (JAX / Flax NNX) trained with `dreamzero-train` for {steps} steps on the
LeRobot dataset `{dataset_repo_id}`.

## Measured success

{measured}

## Use

```bash
pip install lerobot_policy_dreamzero
lerobot-eval --policy.path=<this repo or directory> --env.type=<env> --eval.n_episodes=50
```
"""
    path = Path(folder) / "README.md"
    ModelCard(body).save(str(path))
    return path
