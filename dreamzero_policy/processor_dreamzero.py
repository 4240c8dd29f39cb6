"""Pre/post-processing pipelines of ``dreamzero_jax`` (LeRobot's standard steps plus a clamp).

Order: rename -> batch -> normalise (q01/q99 -> [-1, 1] for state and action, as the reference) ->
clamp to [-1, 1] -> device; and unnormalise -> cpu. The standard step names are kept because
``lerobot-eval`` / ``lerobot-train`` override them by name.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import torch
from lerobot.configs import PipelineFeatureType, PolicyFeature
from lerobot.lerobot_types import EnvTransition, TransitionKey
from lerobot.processor import (
    PolicyAction,
    PolicyProcessorPipeline,
    ProcessorStep,
    ProcessorStepRegistry,
)
from lerobot.processor.factory import make_default_policy_processor_steps, make_policy_processor_pipelines
from lerobot.utils.constants import OBS_STATE

from dreamzero_policy.configuration_dreamzero import DreamZeroJaxConfig


@ProcessorStepRegistry.register("dreamzero_clamp_processor")
@dataclass
class ClampNormalizedStep(ProcessorStep):
    """Clamp normalised state (and action, when present) to [-1, 1]: q01/q99 scaling leaves the 2% tails
    outside the range, and the reference clamps them."""

    keys: list[str] = field(default_factory=lambda: [OBS_STATE])
    clamp_action: bool = True

    def __call__(self, transition: EnvTransition) -> EnvTransition:
        new = transition.copy()
        obs = new.get(TransitionKey.OBSERVATION)
        if obs:
            obs = dict(obs)
            for k in self.keys:
                if k in obs and isinstance(obs[k], torch.Tensor):
                    obs[k] = obs[k].clamp(-1.0, 1.0)
            new[TransitionKey.OBSERVATION] = obs
        act = new.get(TransitionKey.ACTION)
        if self.clamp_action and isinstance(act, torch.Tensor):
            new[TransitionKey.ACTION] = act.clamp(-1.0, 1.0)
        return new

    def get_config(self) -> dict[str, Any]:
        return {"keys": self.keys, "clamp_action": self.clamp_action}

    def transform_features(
        self, features: dict[PipelineFeatureType, dict[str, PolicyFeature]]
    ) -> dict[PipelineFeatureType, dict[str, PolicyFeature]]:
        return features


def make_dreamzero_jax_pre_post_processors(
    config: DreamZeroJaxConfig,
    dataset_stats: dict[str, dict[str, torch.Tensor]] | None = None,
) -> tuple[
    PolicyProcessorPipeline[dict[str, Any], dict[str, Any]],
    PolicyProcessorPipeline[PolicyAction, PolicyAction],
]:
    s = make_default_policy_processor_steps(config, dataset_stats)
    return make_policy_processor_pipelines(
        input_steps=[s.rename_observations, s.add_batch_dim, s.normalize, ClampNormalizedStep(), s.to_device],
        output_steps=[s.unnormalize, s.to_cpu],
    )
