"""The run GRPO and RLOO share on TRL's online trainers: prompts, rewards from the registry (recorded for
rollout samples), the model, the trainer, rollout samples, the final checkpoint.

A method's recipe gives its TRL trainer class and a `build_config(spec, output_dir, device, has_eval,
weights)`; everything else is here. `rollout_settings` says how rollouts are generated (transformers
`generate`, or vLLM in colocate mode when asked for and available); `load_datasets` and `build_rewards`
are also what bench/grpo_step_time.py uses to run the identical configuration bare. The group/batch rule
(batch_size x gradient_accumulation_steps holds whole groups) is checked at StartTraining
(`methods.rl.check_group_batch`).
"""

from __future__ import annotations

import os

from services.trainer.data import FileFormat, load_prompt_dataset
from services.trainer.rewards.runtime import RolloutRecorder, build_reward_functions
from services.trainer.spec import DatasetFile, TrainingSpec
from services.trainer.training.adapters import describe_loaded_model, load_base_for_training, resolve_precision
from services.trainer.training.callbacks import finish_training, standard_callbacks
from services.trainer.training.common import load_tokenizer, train_and_eval_datasets
from services.trainer.training.context import RecipeContext
from services.trainer.training.rollouts import RolloutSamplesCallback


def vllm_available(device: str) -> bool:
    """vLLM rollouts need a GPU and the vllm package."""
    if device != "cuda":
        return False
    import importlib.util

    return importlib.util.find_spec("vllm") is not None


def rollout_settings(spec: TrainingSpec, device: str, use_vllm: bool) -> tuple[dict, str]:
    """(GRPOConfig/RLOOConfig generation kwargs, one log line saying how rollouts are generated)."""
    # load_base_for_training turns the model's KV cache off (training needs none); generation does: without
    # it every new token recomputes the whole sequence (3.5x slower for SmolLM2 at 32 new tokens on CPU).
    transformers_generate = {"use_vllm": False, "generation_kwargs": {"use_cache": True}}
    if not use_vllm:
        return transformers_generate, "rollouts: transformers generate"
    if not vllm_available(device):
        why = "the worker has no GPU" if device != "cuda" else "vllm is not installed"
        return transformers_generate, f"rollouts: transformers generate (use_vllm was asked for, but {why})"
    # Colocated vLLM runs in this (single) process through torch.distributed's external launcher.
    for key, value in (("RANK", "0"), ("LOCAL_RANK", "0"), ("WORLD_SIZE", "1"), ("MASTER_ADDR", "127.0.0.1"),
                       ("MASTER_PORT", str(29500 + os.getpid() % 2000))):
        os.environ.setdefault(key, value)
    return ({"use_vllm": True, "vllm_mode": "colocate", "vllm_gpu_memory_utilization": 0.3,
             "vllm_enable_sleep_mode": False},
            "rollouts: vLLM (colocate mode, 30% of GPU memory)")


def load_datasets(spec: TrainingSpec, cache_dir: str, conversational: bool):
    """Train and (optional) eval prompt datasets: `prompt` plus the file's other columns."""

    def load(dataset: DatasetFile):
        return load_prompt_dataset(dataset.path, FileFormat(dataset.file_format), conversational=conversational,
                                   cache_dir=cache_dir)

    return train_and_eval_datasets(spec, load)


def build_rewards(ctx: RecipeContext | None, configs, *, store, device: str, recorder=None):
    """(reward callables, weights) from the registry; warnings go to the job log when there is a job."""
    return build_reward_functions(configs, store=store, device=device, log=ctx.log if ctx is not None else None,
                                  recorder=recorder)


def describe_rewards(configs, weights) -> str:
    parts = []
    for config, weight in zip(configs, weights):
        params = ", ".join(f"{k}={v!r}" for k, v in sorted((config.params or {}).items()))
        if config.reward_model_id:
            params = ", ".join(filter(None, [f"model {config.reward_model_id}", params]))
        parts.append(f"{config.name}" + (f"({params})" if params else "") + f" x {weight:g}")
    return "rewards: " + " + ".join(parts)


def describe_reference(spec: TrainingSpec, beta: float) -> str:
    if beta == 0:
        return "none (beta 0: no KL term)"
    if spec.adapter.is_peft:
        return "the base model with the adapter disabled (no second copy in memory)"
    return "a frozen copy of the base model loaded by TRL (full training)"


def train_on_rollouts(ctx: RecipeContext, trainer_class, build_config, *, headline: str, use_vllm: bool,
                      preload_rewards: bool = False) -> str:
    """The run GRPO and RLOO share: prompts, rewards (recorded for rollout samples), the TRL config from
    `build_config(spec, output_dir, device, has_eval, weights)`, the model, then `trainer_class` (a TRL
    online trainer taking reward_funcs) to the final checkpoint. `preload_rewards` loads reward models
    before training, so a bad one fails the job before any step."""
    spec = ctx.spec
    method = spec.method_spec
    base_dir = ctx.store.path_of(spec.base_model_id, "base_model_id")
    tokenizer = load_tokenizer(base_dir)
    conversational = bool(tokenizer.chat_template)

    ctx.log("loading prompts" + ("" if conversational else " (no chat template: plain-text prompts)"))
    train_dataset, eval_dataset = load_datasets(spec, str(ctx.work_dir / "datasets-cache"), conversational)
    recorder = RolloutRecorder()
    reward_funcs, weights = build_rewards(ctx, method.rewards, store=ctx.store, device=ctx.device,
                                          recorder=recorder)
    if preload_rewards:
        for fn in reward_funcs:
            prepare = getattr(getattr(fn, "_batch", None), "prepare", None)
            if callable(prepare):
                prepare()
    config = build_config(spec, str(ctx.work_dir / "trainer"), ctx.device, eval_dataset is not None, weights)
    _, rollout_line = rollout_settings(spec, ctx.device, use_vllm)
    hyper = spec.hyperparameters
    prompts = hyper.batch_size * hyper.gradient_accumulation_steps // method.num_generations
    ctx.log(f"{headline}: {method.num_generations} completions per prompt, {prompts} prompt(s) per step, "
            f"beta {method.beta}, temperature {method.temperature}, max_completion_length "
            f"{method.max_completion_length}; reference: {describe_reference(spec, method.beta)}")
    ctx.log(describe_rewards(method.rewards, weights))
    ctx.log(rollout_line)
    ctx.log(f"loading {spec.base_model_id} for {spec.adapter.type} training on {ctx.device}")
    precision = resolve_precision(hyper, spec.adapter, ctx.device)
    model, peft_config = load_base_for_training(base_dir, spec.adapter, precision, ctx.device)
    ctx.log(describe_loaded_model(model))
    callbacks, checkpointer = standard_callbacks(ctx, tokenizer)
    callbacks.append(RolloutSamplesCallback(ctx, recorder, method.samples))
    trainer = trainer_class(model=model, reward_funcs=reward_funcs, args=config, train_dataset=train_dataset,
                            eval_dataset=eval_dataset, processing_class=tokenizer, peft_config=peft_config,
                            callbacks=callbacks)
    return finish_training(ctx, trainer, checkpointer, evaluate=eval_dataset is not None)
