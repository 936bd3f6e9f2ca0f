"""ppo: RLHF with PPO. `algorithm` RLOO (the default) runs on TRL's RLOOTrainer, critic-free, scored by a
store reward model (recipe.py); ACTOR_CRITIC is PPO with a learned value model (actor_critic.py), scored
by a store reward model and/or rule rewards of the registry. The actor-critic fields and their defaults
(TRL's old PPOConfig) are documented on `PpoSpec` and in docs/trainer.md."""

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
from services.trainer.spec import TrainingSpec

ACTOR_CRITIC = "actor_critic"
# Proto fields that only actor-critic PPO reads (a value set with RLOO is refused rather than ignored).
_ACTOR_CRITIC_FIELDS = ("kl_control", "kl_target", "kl_horizon", "gamma", "lam", "cliprange", "cliprange_value",
                        "vf_coef", "ppo_epochs", "num_mini_batches", "whiten_advantages", "critic_init",
                        "critic_adapter", "critic_learning_rate")


@dataclass
class PpoSpec:
    algorithm: str = "rloo"  # rloo | actor_critic
    reward_model_id: str = ""
    rewards: list[RewardFunctionSpec] = field(default_factory=list)  # the reward model (if any) comes first
    num_generations: int = 4  # completions per prompt (actor-critic: default 1)
    beta: float = 0.05  # KL coefficient (actor-critic: the initial one, default 0.2)
    max_completion_length: int = 64
    temperature: float = 1.0
    samples: rl.RolloutSampling = field(default_factory=rl.RolloutSampling)
    format: str = "prompt_only"
    # Actor-critic only (TRL's old PPOConfig defaults).
    kl_control: str = "adaptive"  # adaptive | fixed
    kl_target: float = 6.0
    kl_horizon: float = 10000.0
    gamma: float = 1.0
    lam: float = 0.95
    cliprange: float = 0.2
    cliprange_value: float = 0.2
    vf_coef: float = 0.1
    ppo_epochs: int = 4
    num_mini_batches: int = 1
    whiten_advantages: bool = True
    critic_init: str = ""  # reward_model | policy (resolved by from_proto)
    critic_adapter: str = ""  # full | lora; "": lora when the actor is LoRA/QLoRA, full when it is full
    critic_learning_rate: float | None = None  # None: hyperparameters.learning_rate


def from_proto(message, checks: RequestChecks) -> PpoSpec:
    rules = rl.rewards_from_proto(message.rewards)
    spec = PpoSpec(algorithm=enum_choice(message, "algorithm", checks, "ppo.algorithm", "rloo"),
                   reward_model_id=message.reward_model_id)
    actor_critic = spec.algorithm == ACTOR_CRITIC
    if spec.reward_model_id:
        spec.rewards = [RewardFunctionSpec(name="reward_model", reward_model_id=spec.reward_model_id), *rules]
    else:
        spec.rewards = rules if actor_critic else []
    if actor_critic:
        checks.require(bool(spec.rewards), "ppo.reward_model_id", "no reward: neither a reward model nor rule rewards",
                       "name a REWARD_MODEL from the store (train one with the reward method), or add ppo.rewards")
        _actor_critic_from_proto(spec, message, checks)
    else:
        checks.require(bool(spec.reward_model_id), "ppo.reward_model_id", "empty",
                       "name a REWARD_MODEL from the store (train one with the reward method)")
        for name in _ACTOR_CRITIC_FIELDS:
            is_set = message.HasField(name) if message.DESCRIPTOR.fields_by_name[name].has_presence \
                else bool(getattr(message, name))
            checks.require(not is_set, f"ppo.{name}", "applies to PPO_ALGORITHM_ACTOR_CRITIC only",
                           "remove it, or set ppo.algorithm to PPO_ALGORITHM_ACTOR_CRITIC")
    spec.num_generations = message.num_generations or (1 if actor_critic else spec.num_generations)
    spec.beta = optional(message, "beta", 0.2 if actor_critic else spec.beta)
    checks.in_range(spec.num_generations, "ppo.num_generations", 1 if actor_critic else 2, 256)
    checks.in_range(spec.beta, "ppo.beta", 0, 100)
    rl.rollout_fields_from_proto(spec, message, "ppo", checks)
    if rules:  # the reward model scores; rule rewards are extras (or, for actor-critic, the only rewards)
        rl.check_rewards(rules, "ppo.rewards", checks)
    return spec


def _actor_critic_from_proto(spec: PpoSpec, message, checks: RequestChecks) -> None:
    """The actor-critic fields of `message` into `spec`, each checked."""
    spec.kl_control = enum_choice(message, "kl_control", checks, "ppo.kl_control", "adaptive")
    for name in ("kl_target", "kl_horizon", "gamma", "lam", "cliprange", "cliprange_value", "vf_coef",
                 "whiten_advantages", "critic_learning_rate"):
        setattr(spec, name, optional(message, name, getattr(spec, name)))
    spec.ppo_epochs = message.ppo_epochs or spec.ppo_epochs
    spec.num_mini_batches = message.num_mini_batches or spec.num_mini_batches
    spec.critic_init = enum_choice(message, "critic_init", checks, "ppo.critic_init",
                                   "reward_model" if spec.reward_model_id else "policy")
    spec.critic_adapter = enum_choice(message, "critic_adapter", checks, "ppo.critic_adapter", "")
    checks.require(spec.critic_init != "reward_model" or bool(spec.reward_model_id), "ppo.critic_init",
                   "the critic is to start from the reward model, but the job has no ppo.reward_model_id",
                   "name a REWARD_MODEL in ppo.reward_model_id, or use PPO_CRITIC_INIT_POLICY")
    checks.in_range(spec.kl_target, "ppo.kl_target", 0, 1e6, low_open=True)
    checks.in_range(spec.kl_horizon, "ppo.kl_horizon", 0, 1e12, low_open=True)
    checks.in_range(spec.gamma, "ppo.gamma", 0, 1)
    checks.in_range(spec.lam, "ppo.lam", 0, 1)
    checks.in_range(spec.cliprange, "ppo.cliprange", 0, 10, low_open=True)
    checks.in_range(spec.cliprange_value, "ppo.cliprange_value", 0, 1e6, low_open=True)
    checks.in_range(spec.vf_coef, "ppo.vf_coef", 0, 1e3)
    checks.in_range(spec.ppo_epochs, "ppo.ppo_epochs", 1, 100)
    checks.in_range(spec.num_mini_batches, "ppo.num_mini_batches", 1, 4096)
    if spec.critic_learning_rate is not None:
        checks.in_range(spec.critic_learning_rate, "ppo.critic_learning_rate", 0, 1, low_open=True)


def check(spec: TrainingSpec, checks: RequestChecks) -> None:
    """The group/batch rule; for actor-critic also: mini-batches fit in a step's rollouts, and no evaluation
    (its metrics come from the rollouts; nothing held out is scored)."""
    rl.check_group_batch(spec, checks)
    method: PpoSpec = spec.method_spec
    if method.algorithm != ACTOR_CRITIC:
        return
    hyper = spec.hyperparameters
    completions = hyper.batch_size * hyper.gradient_accumulation_steps
    checks.require(method.num_mini_batches <= completions, "ppo.num_mini_batches",
                   f"{method.num_mini_batches} mini-batches but a step has only batch_size x "
                   f"gradient_accumulation_steps = {completions} rollouts",
                   f"use at most {completions}, or a larger batch_size")
    checks.require(not spec.eval.has_data, "eval", "actor-critic PPO does not evaluate on held-out data",
                   "remove eval.split_ratio and eval.eval_dataset_id (its metrics are computed on the rollouts)")
    checks.require(hyper.lr_scheduler != "reduce_lr_on_plateau", "hyperparameters.lr_scheduler",
                   "reduce_lr_on_plateau needs an evaluation metric, which actor-critic PPO does not compute",
                   "use linear, cosine or constant")


def references(spec: PpoSpec) -> list[ModelReference]:
    """`ppo.reward_model_id` (the first reward), then any reward models among the rule rewards."""
    found = [ModelReference("ppo.reward_model_id", spec.reward_model_id, (EntryKind.REWARD_MODEL,),
                            "a reward model", needs_tokenizer=True)] if spec.reward_model_id else []
    rules = spec.rewards[1:] if spec.reward_model_id else spec.rewards
    return found + rl.reward_model_references(rules, "ppo.rewards")


METHOD = MethodDefinition(
    name="ppo", spec_class=PpoSpec, from_proto=from_proto, check=check, references=references,
    recipe="services.trainer.methods.ppo.recipe", formats=fixed_formats(DatasetFormat.PROMPT_ONLY),
    required_columns=rl.reward_columns,
    summary="RLHF with PPO: RLOO (critic-free) or actor-critic PPO with a value model")
