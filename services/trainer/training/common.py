"""What every recipe shares besides callbacks: the TrainingArguments all TRL configs take, the tokenizer,
and the train/eval split. A recipe builds its own TRL config class from `training_arguments(...)` plus
its method's fields, so one set of hyperparameters means the same thing for every method.
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

from services.common.errors import InvalidArgument
from services.trainer.training.adapters import resolve_precision
from services.trainer.spec import DatasetFile, TrainingSpec


def training_arguments(spec: TrainingSpec, output_dir: str, device: str, has_eval: bool) -> dict:
    """transformers.TrainingArguments keyword arguments from the spec's hyperparameters and eval policy.

    The trainer's own checkpoints in output_dir are the job's full state (weights, optimizer, scheduler,
    RNG, data position) that a later attempt resumes from: every `spec.state_every_steps`, the newest
    `spec.keep_last` kept (plus the best, when evaluating). The user-facing checkpoints go to the store
    through our callbacks. With evaluation, metric_for_best_model / greater_is_better are set so early
    stopping can use them.
    """
    hyper = spec.hyperparameters
    precision = resolve_precision(hyper, spec.adapter, device)
    kwargs = dict(
        output_dir=output_dir,
        save_strategy="steps",
        save_steps=spec.state_every_steps,
        save_total_limit=max(1, spec.keep_last),
        report_to=[],
        disable_tqdm=True,
        logging_steps=hyper.logging_steps,
        logging_first_step=True,
        num_train_epochs=hyper.num_epochs,
        max_steps=hyper.max_steps or -1,
        learning_rate=hyper.learning_rate,
        lr_scheduler_type=hyper.lr_scheduler,
        warmup_steps=hyper.warmup_ratio if hyper.warmup_ratio > 0 else hyper.warmup_steps,
        per_device_train_batch_size=hyper.batch_size,
        gradient_accumulation_steps=hyper.gradient_accumulation_steps,
        seed=hyper.seed,
        data_seed=hyper.seed,
        weight_decay=hyper.weight_decay,
        max_grad_norm=hyper.max_grad_norm,
        bf16=precision.bf16,
        fp16=precision.fp16,
        use_cpu=device != "cuda",
        gradient_checkpointing=hyper.gradient_checkpointing,
        dataloader_num_workers=0,
    )
    if has_eval:
        every = spec.eval.every_steps
        kwargs.update(eval_strategy="steps" if every else "no", eval_steps=every or None,
                      per_device_eval_batch_size=hyper.batch_size,
                      metric_for_best_model=spec.eval.metric_for_best, greater_is_better=spec.eval.greater_is_better)
    return kwargs


def load_tokenizer(model_dir: Path):
    """The tokenizer saved with a model; a missing pad token falls back to EOS (causal LMs rarely set one)."""
    from transformers import AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(model_dir)
    if tokenizer.pad_token is None:
        tokenizer.pad_token = tokenizer.eos_token
    return tokenizer


def train_and_eval_datasets(spec: TrainingSpec, load: Callable[[DatasetFile], object]):
    """(train, eval or None): `load` each stored dataset; without an eval dataset, hold out
    `eval.split_ratio` of the training rows (seeded, so a rerun holds out the same rows)."""
    train = load(spec.dataset)
    evaluation = load(spec.eval_dataset) if spec.eval_dataset else None
    if evaluation is None and spec.eval.split_ratio > 0:
        if len(train) < 2:
            raise InvalidArgument("eval.split_ratio: the dataset has too few examples to hold some out")
        split = train.train_test_split(test_size=spec.eval.split_ratio, seed=spec.hyperparameters.seed)
        train, evaluation = split["train"], split["test"]
    return train, evaluation
