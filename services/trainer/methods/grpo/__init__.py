"""grpo: Group Relative Policy Optimization on TRL's GRPOTrainer (recipe.py), rewards from the registry.

`hyperparameters.batch_size` counts completions, so batch_size x gradient_accumulation_steps must hold
whole groups of `num_generations` (checked at StartTraining).
"""

from __future__ import annotations

from dataclasses import dataclass, field

from services.trainer.data import DatasetFormat
from services.trainer.methods.definition import (
    MethodDefinition,
    RequestChecks,
    enum_choice,
    fixed_formats,
    optional,
)
from services.trainer.methods import rl
from services.trainer.rewards.registry import RewardFunctionSpec


@dataclass
class GrpoSpec:
    rewards: list[RewardFunctionSpec] = field(default_factory=list)
    num_generations: int = 4
    beta: float = 0.04
    epsilon: float = 0.2
    loss: str = "dapo"  # grpo | dr_grpo | dapo (TRL's names)
    max_completion_length: int = 64
    temperature: float = 1.0
    samples: rl.RolloutSampling = field(default_factory=rl.RolloutSampling)
    use_vllm: bool = False
    format: str = "prompt_only"


def from_proto(message, checks: RequestChecks) -> GrpoSpec:
    spec = GrpoSpec(rewards=rl.rewards_from_proto(message.rewards), use_vllm=message.use_vllm,
                    loss=enum_choice(message, "loss", checks, "grpo.loss", "dapo"))
    spec.epsilon = optional(message, "epsilon", spec.epsilon)
    spec.num_generations = message.num_generations or spec.num_generations
    spec.beta = optional(message, "beta", spec.beta)
    checks.in_range(spec.epsilon, "grpo.epsilon", 0, 10, low_open=True)
    checks.in_range(spec.num_generations, "grpo.num_generations", 2, 256)
    checks.in_range(spec.beta, "grpo.beta", 0, 100)
    rl.rollout_fields_from_proto(spec, message, "grpo", checks)
    rl.check_rewards(spec.rewards, "grpo.rewards", checks)
    return spec


METHOD = MethodDefinition(
    name="grpo", spec_class=GrpoSpec, from_proto=from_proto, check=rl.check_group_batch,
    recipe="services.trainer.methods.grpo.recipe", formats=fixed_formats(DatasetFormat.PROMPT_ONLY),
    required_columns=rl.reward_columns, references=lambda spec: rl.reward_model_references(spec.rewards, "grpo.rewards"),
    summary="GRPO with rewards from the registry (TRL GRPOTrainer)")
