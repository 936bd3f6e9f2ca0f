"""GRPO (full / LoRA / QLoRA) on TRL's GRPOTrainer, with rewards from the server's registry.

Data is prompt-only: `prompt` (a string or a message list ending with a user turn) plus any extra columns,
which reach the reward functions as keyword arguments (e.g. `answer` for `exact_match`); string prompts
become one user turn when the tokenizer has a chat template (`data.load_prompt_dataset`).

Batch sizes, as TRL counts them: `hyperparameters.batch_size` is *completions* per micro-batch, so one
optimizer step trains on batch_size x gradient_accumulation_steps completions, which are
(batch_size x gradient_accumulation_steps) / num_generations prompts with num_generations completions each.
That product must therefore be a multiple of `grpo.num_generations` (e.g. batch_size 8 with 4 generations:
2 prompts per step); otherwise StartTraining fails with INVALID_ARGUMENT naming `hyperparameters.batch_size`.
Generation happens once per optimizer step. `hyperparameters.max_seq_length` is not used (TRL 1.16's
GRPO does not truncate prompts); `grpo.max_completion_length` bounds each completion.

Method fields map to GRPOConfig: num_generations, beta (KL coefficient; 0 = no reference model),
epsilon (clipping), loss -> loss_type (grpo / dr_grpo / dapo), max_completion_length, temperature;
the reward weights -> reward_weights. Reference model (beta > 0): with LoRA/QLoRA the base with the
adapter disabled; with full training a frozen copy TRL loads itself. Rollouts use vLLM in colocate mode
when `grpo.use_vllm` is set, the worker has CUDA and vllm imports; otherwise transformers `generate` (the
job log says which).

Metrics are TRL's: reward, reward_std, rewards/<fn>/mean, rewards/<fn>/std, kl (beta > 0), entropy,
clip_ratio/*, completions/mean_length, completions/clipped_ratio, frac_reward_zero_std, ... Rollout samples
stream as `rollouts` events (training/rollouts.py). The result is an ADAPTER or a FULL_CHECKPOINT.

`build_grpo_config` and the shared `training.online_rl.load_datasets` / `build_rewards` are what `run`
uses, so bench/grpo_step_time.py runs the identical configuration bare.
"""

from __future__ import annotations

from services.trainer.spec import TrainingSpec
from services.trainer.training.common import training_arguments
from services.trainer.training.context import RecipeContext
from services.trainer.training.online_rl import rollout_settings, train_on_rollouts


def build_grpo_config(spec: TrainingSpec, output_dir: str, device: str, has_eval: bool = False,
                      weights: list[float] | None = None):
    """TRL's GRPOConfig for a GRPO spec (see the module docstring for the field mapping)."""
    from trl import GRPOConfig

    method = spec.method_spec
    rollout, _ = rollout_settings(spec, device, method.use_vllm)
    return GRPOConfig(
        **training_arguments(spec, output_dir, device, has_eval),
        num_generations=method.num_generations, beta=method.beta, epsilon=method.epsilon,
        loss_type=method.loss, max_completion_length=method.max_completion_length,
        temperature=method.temperature,
        reward_weights=weights or [r.weight for r in method.rewards],
        log_completions=False,  # samples stream as `rollouts` events instead
        **rollout,
    )


def run(ctx: RecipeContext) -> str:
    from trl import GRPOTrainer

    method = ctx.spec.method_spec
    return train_on_rollouts(ctx, GRPOTrainer, build_grpo_config, use_vllm=method.use_vllm,
                             headline=f"GRPO on GRPOTrainer: loss {method.loss}, epsilon {method.epsilon}")
