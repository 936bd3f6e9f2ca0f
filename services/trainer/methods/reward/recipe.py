"""Reward modelling (full / LoRA) on TRL's RewardTrainer.

The model is the base loaded as `AutoModelForSequenceClassification(num_labels=1)`: the base's transformer
with a new one-output `score` head, trained with the Bradley-Terry loss -log sigmoid(r(chosen) -
r(rejected)) on `prompt`/`chosen`/`rejected` pairs (conversational when the tokenizer has a chat template).
With LoRA (task type SEQ_CLS) the adapter *and* the score head are trained, and both are merged into full
weights when saved, so the result is always a REWARD_MODEL entry: full weights + tokenizer that
`AutoModelForSequenceClassification.from_pretrained` reloads. QLoRA is refused at request time (a 4-bit
base cannot be merged into full weights).

Metrics are TRL's: `accuracy` (share of pairs with r(chosen) > r(rejected)), `margin` (mean
r(chosen) - r(rejected)), `min_reward`, `mean_reward`, `max_reward`, `num_tokens`; with evaluation the same
with an `eval_` prefix (`eval_accuracy` on held-out pairs).

Loading and scoring a stored reward model (by the RL methods) is `services.trainer.rewards.reward_model`.
"""

from __future__ import annotations

from pathlib import Path

from services.common.errors import InvalidArgument, Violation
from services.common.store import EntryKind
from services.trainer.data import DatasetFormat, FileFormat, load_preference_for_training
from services.trainer.training.adapters import lora_config, resolve_precision
from services.trainer.training.callbacks import finish_training, standard_callbacks
from services.trainer.training.common import load_tokenizer, train_and_eval_datasets, training_arguments
from services.trainer.training.context import RecipeContext
from services.trainer.methods.reward import RewardSpec
from services.trainer.spec import AdapterSpec, DatasetFile, TrainingSpec


def build_reward_config(spec: TrainingSpec, output_dir: str, device: str, has_eval: bool):
    """TRL's RewardConfig for a spec. `max_length` is prompt + response; longer pairs are dropped by TRL."""
    from trl import RewardConfig as TrlRewardConfig

    method: RewardSpec = spec.method_spec
    return TrlRewardConfig(**training_arguments(spec, output_dir, device, has_eval),
                           max_length=spec.hyperparameters.max_seq_length,
                           center_rewards_coefficient=method.center_rewards_coefficient)


def load_datasets(spec: TrainingSpec, cache_dir: str, conversational: bool):
    """Train and (optional) eval preference datasets: prompt/chosen/rejected in TRL's form."""

    def load(dataset: DatasetFile):
        return load_preference_for_training(dataset.path, FileFormat(dataset.file_format),
                                            DatasetFormat(dataset.format), conversational=conversational,
                                            cache_dir=cache_dir)

    return train_and_eval_datasets(spec, load)


def load_reward_base(model_dir: Path, adapter: AdapterSpec, tokenizer, seed: int):
    """The base as a one-output sequence classifier (fp32 weights; mixed precision comes from the trainer
    config) and, for LoRA, a SEQ_CLS LoraConfig (peft then also trains and saves the `score` head).
    Returns (model, peft_config or None)."""
    import torch
    from transformers import AutoModelForSequenceClassification, set_seed

    set_seed(seed)  # the score head is initialised randomly: same seed, same head
    model = AutoModelForSequenceClassification.from_pretrained(model_dir, num_labels=1, dtype=torch.float32)
    # The classifier pools the last non-pad token, so it must know the pad id.
    model.config.pad_token_id = tokenizer.pad_token_id
    # The base's config names its causal-LM class; the store manifest and reloads need this one.
    model.config.architectures = [type(model).__name__]
    model.config.use_cache = False
    peft_config = None
    if adapter.is_peft:
        peft_config = lora_config(adapter, task_type="SEQ_CLS")
    return model, peft_config


def run(ctx: RecipeContext) -> str:
    from trl import RewardTrainer

    spec = ctx.spec
    base_dir = ctx.store.path_of(spec.base_model_id, "base_model_id")
    tokenizer = load_tokenizer(base_dir)
    conversational = bool(tokenizer.chat_template)

    ctx.log("loading dataset" + ("" if conversational else " (no chat template: plain-text prompts and responses)"))
    train_dataset, eval_dataset = load_datasets(spec, str(ctx.work_dir / "datasets-cache"), conversational)
    resolve_precision(spec.hyperparameters, spec.adapter, ctx.device)  # refuses fp16 on CPU etc. up front
    config = build_reward_config(spec, str(ctx.work_dir / "trainer"), ctx.device, eval_dataset is not None)
    ctx.log(f"loading {spec.base_model_id} as a reward model (sequence classifier, 1 output, new score head) for "
            f"{spec.adapter.type} training on {ctx.device}"
            + ("; the LoRA adapter and score head are merged into full weights when saved" if spec.adapter.is_peft
               else ""))
    model, peft_config = load_reward_base(base_dir, spec.adapter, tokenizer, spec.hyperparameters.seed)
    callbacks, checkpointer = standard_callbacks(ctx, tokenizer, kind=EntryKind.REWARD_MODEL, merge_peft=True)
    rows = len(train_dataset)
    trainer = RewardTrainer(model=model, args=config, train_dataset=train_dataset, eval_dataset=eval_dataset,
                            processing_class=tokenizer, peft_config=peft_config, callbacks=callbacks)
    kept = len(trainer.train_dataset)
    if kept == 0:
        raise InvalidArgument(
            f"hyperparameters.max_seq_length: every pair is longer than {config.max_length} tokens",
            [Violation(0, "hyperparameters.max_seq_length", "no pair fits (prompt + response)",
                       "raise max_seq_length or shorten the rows")])
    if kept < rows:
        ctx.log(f"{rows - kept} of {rows} training pairs are longer than {config.max_length} tokens and were left "
                "out; raise hyperparameters.max_seq_length to keep them", "warning")
    if eval_dataset is not None and len(trainer.eval_dataset) == 0:
        raise InvalidArgument(
            f"hyperparameters.max_seq_length: every evaluation pair is longer than {config.max_length} tokens",
            [Violation(0, "hyperparameters.max_seq_length", "no evaluation pair fits (prompt + response)",
                       "raise max_seq_length, or hold out more pairs (eval.split_ratio)")])
    return finish_training(ctx, trainer, checkpointer, evaluate=eval_dataset is not None)
