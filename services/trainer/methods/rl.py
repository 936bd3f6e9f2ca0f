"""What the RL methods' definitions share (grpo, rft, ppo): rewards from the registry, rollout length and
temperature, which rollouts stream as samples, the group/batch rule, and the columns rewards read."""

from __future__ import annotations

from dataclasses import dataclass

from services.common.store import EntryKind
from services.trainer.methods.definition import ModelReference, RequestChecks, optional
from services.trainer.rewards.registry import RewardFunctionSpec, check_reward_specs, required_columns
from services.trainer.spec import TrainingSpec


@dataclass
class RolloutSampling:
    """Which rollouts stream as `rollouts` events (the proto's RolloutSampling)."""

    fraction_of_steps: float = 0.1
    max_prompts: int = 2


def rewards_from_proto(messages) -> list[RewardFunctionSpec]:
    return [RewardFunctionSpec(name=r.name, weight=optional(r, "weight", 1.0), params=dict(r.params),
                               reward_model_id=r.reward_model_id) for r in messages]


def sampling_from_proto(message, field: str, checks: RequestChecks) -> RolloutSampling:
    sampling = RolloutSampling(fraction_of_steps=optional(message, "fraction_of_steps", 0.1),
                               max_prompts=message.max_prompts or 2)
    checks.in_range(sampling.fraction_of_steps, f"{field}.fraction_of_steps", 0, 1)
    checks.in_range(sampling.max_prompts, f"{field}.max_prompts", 1, 64)
    return sampling


def rollout_fields_from_proto(spec, message, method: str, checks: RequestChecks) -> None:
    """max_completion_length, temperature and samples, which every RL message has, into `spec`."""
    spec.max_completion_length = message.max_completion_length or spec.max_completion_length
    spec.temperature = optional(message, "temperature", spec.temperature)
    spec.samples = sampling_from_proto(message.samples, f"{method}.samples", checks)
    checks.in_range(spec.max_completion_length, f"{method}.max_completion_length", 1, 131_072)
    checks.in_range(spec.temperature, f"{method}.temperature", 0, 2, low_open=True)


def check_rewards(rewards: list[RewardFunctionSpec], field: str, checks: RequestChecks) -> None:
    checks.violations += check_reward_specs(rewards, field)


def reward_columns(spec) -> dict[str, str]:
    """Extra dataset columns every row must have -> who reads them."""
    return {column: "a reward function of this job" for column in required_columns(spec.rewards)}


def reward_model_references(rewards: list[RewardFunctionSpec], field: str) -> list[ModelReference]:
    """Every `reward_model` reward's store entry, for admission."""
    return [ModelReference(f"{field}[{i}].reward_model_id", r.reward_model_id, (EntryKind.REWARD_MODEL,),
                           "a reward model", needs_tokenizer=True)
            for i, r in enumerate(rewards) if r.name == "reward_model" and r.reward_model_id]


def check_group_batch(spec: TrainingSpec, checks: RequestChecks) -> None:
    """GRPO / RLOO: the generation batch (batch_size x gradient_accumulation_steps completions) must hold
    whole groups of num_generations; with evaluation, so must batch_size alone."""
    hyper, method = spec.hyperparameters, spec.method
    num_generations = spec.method_spec.num_generations
    if num_generations < 1:
        return  # out of range: reported by from_proto
    completions = hyper.batch_size * hyper.gradient_accumulation_steps
    if completions % num_generations:
        accumulation = hyper.gradient_accumulation_steps
        fits = next(b for b in range(hyper.batch_size + 1, hyper.batch_size + num_generations + 1)
                    if b * accumulation % num_generations == 0)
        checks.require(
            False, "hyperparameters.batch_size",
            f"{method} trains on groups of {method}.num_generations = {num_generations} completions per prompt, but "
            f"batch_size x gradient_accumulation_steps = {hyper.batch_size} x {accumulation} "
            f"= {completions} completions per step is not a multiple of {num_generations}",
            f"batch_size counts completions: e.g. batch_size {fits} ({fits * accumulation // num_generations} "
            f"prompt(s) per step), or change num_generations")
    elif spec.eval.has_data and hyper.batch_size % num_generations:
        checks.require(
            False, "hyperparameters.batch_size",
            f"evaluation generates {num_generations} completions per prompt in batches of batch_size = "
            f"{hyper.batch_size}, which is not a multiple of {num_generations}",
            f"use a batch_size that is a multiple of {num_generations}, or evaluate without a held-out set")
