"""PPO-style RLHF with a reward model from the store: RLOO on TRL's RLOOTrainer (full / LoRA / QLoRA).

`ppo.algorithm` RLOO is the one that runs: TRL 1.16 no longer ships the actor-critic PPOTrainer, so
PPO_ALGORITHM_PPO is refused when the request arrives (services/trainer/convert.py). RLOO (REINFORCE
Leave-One-Out) samples `ppo.num_generations` completions per prompt and uses the mean reward of the
*other* completions of the group as each one's baseline: PPO's clipped policy update without a critic.

Rewards: the REWARD_MODEL entry `ppo.reward_model_id` (a model trained with the `reward` method; its raw
score, weight 1) comes first, then any rule rewards of `ppo.rewards`, summed with their weights
(`rewards.build_reward_functions`). KL: `ppo.beta` (TRL's RLOO adds it to the reward); the reference is
the base with the adapter disabled under LoRA/QLoRA, a frozen copy TRL loads under full training.

Data, batch sizes and rollouts are as for GRPO (recipes/grpo.py): prompt-only rows, `batch_size` counts
completions and batch_size x gradient_accumulation_steps must be a multiple of num_generations;
transformers generate, or vLLM (colocate) when the worker has CUDA and vllm. Metrics are TRL's RLOO ones
(reward, reward_std, rewards/reward_model/mean, kl, entropy, clip_ratio/*, completions/*,
frac_reward_zero_std); samples stream as `rollouts` events. The result is an ADAPTER or a FULL_CHECKPOINT.
"""

from __future__ import annotations

from services.common.errors import invalid_field
from services.trainer.recipes.adapters import describe_loaded_model, load_base_for_training, resolve_precision
from services.trainer.recipes.callbacks import finish_training, standard_callbacks
from services.trainer.recipes.common import load_tokenizer, training_arguments
from services.trainer.recipes.context import RecipeContext
from services.trainer.recipes.grpo import (
    build_rewards,
    describe_reference,
    describe_rewards,
    load_datasets,
    rollout_settings,
)
from services.trainer.recipes.rollouts import RolloutSamplesCallback
from services.trainer.spec import PpoConfig, TrainingSpec, check_group_batch


def build_rloo_config(spec: TrainingSpec, output_dir: str, device: str, has_eval: bool = False,
                      weights: list[float] | None = None):
    """TRL's RLOOConfig for a `ppo` spec with algorithm rloo."""
    from trl import RLOOConfig

    method: PpoConfig = spec.method_config
    if method.algorithm != "rloo":
        raise invalid_field("ppo.algorithm", f"{method.algorithm!r} is not available (TRL 1.16 has no PPOTrainer)",
                            "use PPO_ALGORITHM_RLOO")
    check_group_batch(spec.hyperparameters, method.num_generations, "ppo", has_eval)
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
    from trl import RLOOTrainer

    from services.trainer.rewards import RolloutRecorder

    spec = ctx.spec
    method: PpoConfig = spec.method_config
    base_dir = ctx.store.path_of(spec.base_model_id, "base_model_id")
    tokenizer = load_tokenizer(base_dir)
    conversational = bool(tokenizer.chat_template)

    ctx.log("loading prompts" + ("" if conversational else " (no chat template: plain-text prompts)"))
    train_dataset, eval_dataset = load_datasets(spec, str(ctx.work_dir / "datasets-cache"), conversational)
    recorder = RolloutRecorder()
    reward_funcs, weights = build_rewards(ctx, method.rewards, store=ctx.store, device=ctx.device,
                                          recorder=recorder)
    for fn in reward_funcs:  # load the reward model now: a bad id fails the job before training starts
        prepare = getattr(getattr(fn, "_batch", None), "prepare", None)
        if callable(prepare):
            prepare()
    config = build_rloo_config(spec, str(ctx.work_dir / "trainer"), ctx.device, eval_dataset is not None, weights)
    _, rollout_line = rollout_settings(spec, ctx.device, False)
    hyper = spec.hyperparameters
    prompts = hyper.batch_size * hyper.gradient_accumulation_steps // method.num_generations
    ctx.log(f"RLOO on RLOOTrainer (PPO-style, critic-free): {method.num_generations} completions per prompt, "
            f"{prompts} prompt(s) per step, beta {method.beta}, temperature {method.temperature}, "
            f"max_completion_length {method.max_completion_length}; reference: "
            f"{describe_reference(spec, method.beta)}")
    ctx.log(describe_rewards(method.rewards, weights))
    ctx.log(rollout_line)
    ctx.log(f"loading {spec.base_model_id} for {spec.adapter.type} training on {ctx.device}")
    precision = resolve_precision(hyper, spec.adapter, ctx.device)
    model, peft_config = load_base_for_training(base_dir, spec.adapter, precision, ctx.device)
    ctx.log(describe_loaded_model(model))
    callbacks, checkpointer = standard_callbacks(ctx, tokenizer)
    callbacks.append(RolloutSamplesCallback(ctx, recorder, method.samples))
    trainer = RLOOTrainer(model=model, reward_funcs=reward_funcs, args=config, train_dataset=train_dataset,
                          eval_dataset=eval_dataset, processing_class=tokenizer, peft_config=peft_config,
                          callbacks=callbacks)
    return finish_training(ctx, trainer, checkpointer, evaluate=eval_dataset is not None)
