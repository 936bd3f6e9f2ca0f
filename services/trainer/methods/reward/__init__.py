"""reward: a reward model (one-output sequence classifier) trained on preference pairs with TRL's
RewardTrainer, full or LoRA (merged), stored as a REWARD_MODEL (recipe.py). Loading and scoring a stored
reward model is `services.trainer.rewards.reward_model`."""

from __future__ import annotations

from dataclasses import dataclass

from services.common.store import EntryKind
from services.trainer.data import DatasetFormat
from services.trainer.methods.definition import (
    LANGUAGE_MODELS,
    MethodDefinition,
    RequestChecks,
    fixed_formats,
    optional,
)
from services.trainer.spec import TrainingSpec


@dataclass
class RewardSpec:
    center_rewards_coefficient: float | None = None
    format: str = "preference"


def from_proto(message, checks: RequestChecks) -> RewardSpec:
    spec = RewardSpec(center_rewards_coefficient=optional(message, "center_rewards_coefficient", None))
    if spec.center_rewards_coefficient is not None:
        checks.in_range(spec.center_rewards_coefficient, "reward.center_rewards_coefficient", 0, 100)
    return spec


def check(spec: TrainingSpec, checks: RequestChecks) -> None:
    checks.require(spec.adapter.type != "qlora", "adapter.type",
                   "a reward model is saved as full weights and a 4-bit base cannot be merged into them",
                   "use ADAPTER_LORA (merged at the end) or ADAPTER_FULL")


METHOD = MethodDefinition(
    name="reward", spec_class=RewardSpec, from_proto=from_proto, check=check,
    recipe="services.trainer.methods.reward.recipe", formats=fixed_formats(DatasetFormat.PREFERENCE),
    base_kinds=(*LANGUAGE_MODELS, EntryKind.REWARD_MODEL),  # a reward model may be trained further
    summary="a reward model from preference pairs (TRL RewardTrainer)")
