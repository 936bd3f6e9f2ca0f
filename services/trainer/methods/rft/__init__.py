"""rft: rejection-sampling fine-tuning (expert iteration): generate candidates with the current policy,
score them with the reward registry, keep the good ones, fine-tune; `rounds` times (recipe.py)."""

from __future__ import annotations

from dataclasses import dataclass, field

from services.trainer.data import DatasetFormat
from services.trainer.methods.definition import MethodDefinition, RequestChecks, fixed_formats, optional
from services.trainer.methods import rl
from services.trainer.rewards.registry import RewardFunctionSpec


@dataclass
class RftSpec:
    rewards: list[RewardFunctionSpec] = field(default_factory=list)
    num_candidates: int = 4
    rounds: int = 2
    threshold: float | None = None  # None: keep each prompt's best candidate (when its reward > 0)
    max_completion_length: int = 64
    temperature: float = 1.0
    samples: rl.RolloutSampling = field(default_factory=rl.RolloutSampling)
    format: str = "prompt_only"


def from_proto(message, checks: RequestChecks) -> RftSpec:
    spec = RftSpec(rewards=rl.rewards_from_proto(message.rewards), threshold=optional(message, "threshold", None))
    spec.num_candidates = message.num_candidates or spec.num_candidates
    spec.rounds = message.rounds or spec.rounds
    checks.in_range(spec.num_candidates, "rft.num_candidates", 1, 256)
    checks.in_range(spec.rounds, "rft.rounds", 1, 1000)
    rl.rollout_fields_from_proto(spec, message, "rft", checks)
    rl.check_rewards(spec.rewards, "rft.rewards", checks)
    return spec


METHOD = MethodDefinition(
    name="rft", spec_class=RftSpec, from_proto=from_proto,
    recipe="services.trainer.methods.rft.recipe", formats=fixed_formats(DatasetFormat.PROMPT_ONLY),
    required_columns=rl.reward_columns, references=lambda spec: rl.reward_model_references(spec.rewards, "rft.rewards"),
    needs_chat_template=True, summary="rejection-sampling fine-tuning with rewards from the registry")
