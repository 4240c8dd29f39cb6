"""Pre/post-processing pipelines of ``dreamzero_jax``: LeRobot's standard steps only.

Order: rename -> batch -> normalise (q01/q99 -> [-1, 1] for state and action, as the reference) ->
device; and unnormalise -> cpu. The standard step names are kept because ``lerobot-eval`` /
``lerobot-train`` override them by name. The normalised state is NOT clamped here: the policy clamps
the model's input itself and adds the true (unclamped) state back to relative actions.
"""

from __future__ import annotations

from typing import Any

import torch
from lerobot.processor import (
    PolicyAction,
    PolicyProcessorPipeline,
)
from lerobot.processor.factory import make_default_policy_processor_steps, make_policy_processor_pipelines

from dreamzero_policy.configuration_dreamzero import DreamZeroJaxConfig


def make_dreamzero_jax_pre_post_processors(
    config: DreamZeroJaxConfig,
    dataset_stats: dict[str, dict[str, torch.Tensor]] | None = None,
) -> tuple[
    PolicyProcessorPipeline[dict[str, Any], dict[str, Any]],
    PolicyProcessorPipeline[PolicyAction, PolicyAction],
]:
    s = make_default_policy_processor_steps(config, dataset_stats)
    return make_policy_processor_pipelines(
        input_steps=[s.rename_observations, s.add_batch_dim, s.normalize, s.to_device],
        output_steps=[s.unnormalize, s.to_cpu],
    )
