"""ppo: PPO-style RLHF scored by a reward model from the store. `algorithm` RLOO runs on TRL's
RLOOTrainer (recipe.py); actor-critic PPO is refused (TRL 1.16 no longer ships PPOTrainer)."""

from __future__ import annotations

from dataclasses import dataclass, field

from services.common.store import EntryKind
from services.trainer.data import DatasetFormat
from services.trainer.methods.definition import (
    MethodDefinition,
    ModelReference,
    RequestChecks,
    enum_choice,
    fixed_formats,
    optional,
)
from services.trainer.methods import rl
from services.trainer.rewards.registry import RewardFunctionSpec


@dataclass
class PpoSpec:
    algorithm: str = "rloo"  # rloo | ppo (refused: TRL 1.16 has no PPOTrainer)
    reward_model_id: str = ""
    rewards: list[RewardFunctionSpec] = field(default_factory=list)  # the reward model comes first
    num_generations: int = 4
    beta: float = 0.05
    max_completion_length: int = 64
    temperature: float = 1.0
    samples: rl.RolloutSampling = field(default_factory=rl.RolloutSampling)
    format: str = "prompt_only"


def from_proto(message, checks: RequestChecks) -> PpoSpec:
    rules = rl.rewards_from_proto(message.rewards)
    spec = PpoSpec(algorithm=enum_choice(message, "algorithm", checks, "ppo.algorithm", "rloo"),
                   reward_model_id=message.reward_model_id)
    checks.require(spec.algorithm != "ppo", "ppo.algorithm",
                   "actor-critic PPO is not available: TRL 1.16, which the trainer runs on, no longer ships "
                   "PPOTrainer", "use PPO_ALGORITHM_RLOO (critic-free, the stable choice TRL keeps)")
    checks.require(bool(spec.reward_model_id), "ppo.reward_model_id", "empty",
                   "name a REWARD_MODEL from the store (train one with the reward method)")
    if spec.reward_model_id:
        spec.rewards = [RewardFunctionSpec(name="reward_model", reward_model_id=spec.reward_model_id), *rules]
    spec.num_generations = message.num_generations or spec.num_generations
    spec.beta = optional(message, "beta", spec.beta)
    checks.in_range(spec.num_generations, "ppo.num_generations", 2, 256)
    checks.in_range(spec.beta, "ppo.beta", 0, 100)
    rl.rollout_fields_from_proto(spec, message, "ppo", checks)
    if rules:  # the reward model scores; rule rewards are optional extras
        rl.check_rewards(rules, "ppo.rewards", checks)
    return spec


def references(spec: PpoSpec) -> list[ModelReference]:
    """`ppo.reward_model_id` (the first reward), then any reward models among the rule rewards."""
    found = [ModelReference("ppo.reward_model_id", spec.reward_model_id, (EntryKind.REWARD_MODEL,),
                            "a reward model", needs_tokenizer=True)] if spec.reward_model_id else []
    rules = spec.rewards[1:] if spec.reward_model_id else spec.rewards
    return found + rl.reward_model_references(rules, "ppo.rewards")


METHOD = MethodDefinition(
    name="ppo", spec_class=PpoSpec, from_proto=from_proto, check=rl.check_group_batch, references=references,
    recipe="services.trainer.methods.ppo.recipe", formats=fixed_formats(DatasetFormat.PROMPT_ONLY),
    required_columns=rl.reward_columns, summary="PPO-style RLHF with a store reward model (RLOO)")
