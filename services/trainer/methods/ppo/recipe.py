"""RLHF with PPO (full / LoRA / QLoRA): `ppo.algorithm` RLOO (the default) on TRL's RLOOTrainer, or
ACTOR_CRITIC, PPO with a learned value model, written here on torch / transformers / peft because TRL 1.16
no longer ships PPOTrainer (actor_critic.py, whose docstring has the algorithm; `run` dispatches to it).

RLOO (REINFORCE Leave-One-Out) samples `ppo.num_generations` completions per prompt and uses the mean
reward of the *other* completions of the group as each one's baseline: PPO's clipped policy update
without a critic.

Rewards: the REWARD_MODEL entry `ppo.reward_model_id` (a model trained with the `reward` method; its raw
score, weight 1) comes first, then any rule rewards of `ppo.rewards`, summed with their weights
(`rewards.runtime.build_reward_functions`). KL: `ppo.beta` (TRL's RLOO adds it to the reward); the reference is
the base with the adapter disabled under LoRA/QLoRA, a frozen copy TRL loads under full training.

Data, batch sizes and rollouts are as for GRPO (methods/grpo/recipe.py, training/online_rl.py): prompt-only rows, `batch_size` counts
completions and batch_size x gradient_accumulation_steps must be a multiple of num_generations;
transformers generate, or vLLM (colocate) when the worker has CUDA and vllm. Metrics are TRL's RLOO ones
(reward, reward_std, rewards/reward_model/mean, kl, entropy, clip_ratio/*, completions/*,
frac_reward_zero_std); samples stream as `rollouts` events. The result is an ADAPTER or a FULL_CHECKPOINT.
"""

from __future__ import annotations

from services.trainer.methods.ppo import ACTOR_CRITIC
from services.trainer.spec import TrainingSpec
from services.trainer.training.common import training_arguments
from services.trainer.training.context import RecipeContext
from services.trainer.training.online_rl import rollout_settings, train_on_rollouts


def build_rloo_config(spec: TrainingSpec, output_dir: str, device: str, has_eval: bool = False,
                      weights: list[float] | None = None):
    """TRL's RLOOConfig for a `ppo` spec with algorithm rloo."""
    from trl import RLOOConfig

    method = spec.method_spec
    rollout, _ = rollout_settings(spec, device, False)
    return RLOOConfig(
        **training_arguments(spec, output_dir, device, has_eval),
        num_generations=method.num_generations, beta=method.beta,
        max_completion_length=method.max_completion_length, temperature=method.temperature,
        reward_weights=weights or [r.weight for r in method.rewards],
        log_completions=False,  # samples stream as `rollouts` events instead
        **rollout,
    )


def run(ctx: RecipeContext) -> str:
    if ctx.spec.method_spec.algorithm == ACTOR_CRITIC:
        from services.trainer.methods.ppo.actor_critic import run as run_actor_critic

        return run_actor_critic(ctx)
    from trl import RLOOTrainer

    return train_on_rollouts(ctx, RLOOTrainer, build_rloo_config, use_vllm=False, preload_rewards=True,
                             headline="RLOO on RLOOTrainer (PPO-style, critic-free)")
