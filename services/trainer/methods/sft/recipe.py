"""Supervised fine-tuning (full / LoRA / QLoRA) on TRL's SFTTrainer.

Every SFT format (messages, alpaca, sharegpt, prompt/completion) is first turned into TRL's
conversational prompt/completion form, one example per assistant turn, so the tokenizer's own chat
template renders it and the loss covers only completion tokens unless `train_on_prompt` is set.
"""

from __future__ import annotations

from services.trainer.data import DatasetFormat, FileFormat, load_for_training
from services.trainer.training.adapters import describe_loaded_model, load_base_for_training, resolve_precision
from services.trainer.training.callbacks import finish_training, standard_callbacks
from services.trainer.training.common import load_tokenizer, train_and_eval_datasets, training_arguments
from services.trainer.training.context import RecipeContext
from services.trainer.training.vocabulary import expand_for_training
from services.trainer.methods.sft import SftSpec
from services.trainer.spec import DatasetFile, TrainingSpec


def build_sft_config(spec: TrainingSpec, output_dir: str, device: str, has_eval: bool):
    """The SFTConfig for a spec; also used by bench/ to run the identical configuration bare."""
    from trl import SFTConfig

    hyper = spec.hyperparameters
    method: SftSpec = spec.method_spec
    return SFTConfig(
        **training_arguments(spec, output_dir, device, has_eval),
        max_length=hyper.max_seq_length,
        packing=hyper.packing,
        completion_only_loss=not method.train_on_prompt,
    )


def load_datasets(spec: TrainingSpec, cache_dir: str):
    """Train and (optional) eval datasets in TRL's conversational prompt/completion form."""
    method: SftSpec = spec.method_spec

    def load(dataset: DatasetFile):
        return load_for_training(dataset.path, FileFormat(dataset.file_format), DatasetFormat(dataset.format),
                                 method.default_system_prompt, cache_dir=cache_dir)

    return train_and_eval_datasets(spec, load)


def run(ctx: RecipeContext) -> str:
    from trl import SFTTrainer

    spec = ctx.spec
    base_dir = ctx.store.path_of(spec.base_model_id, "base_model_id")
    tokenizer = load_tokenizer(base_dir)  # it has a chat template: admission refuses a base without one

    ctx.log("loading dataset")
    train_dataset, eval_dataset = load_datasets(spec, str(ctx.work_dir / "datasets-cache"))
    ctx.log(f"loading {spec.base_model_id} for {spec.adapter.type} training on {ctx.device}")
    precision = resolve_precision(spec.hyperparameters, spec.adapter, ctx.device)
    model, peft_config = load_base_for_training(base_dir, spec.adapter, precision, ctx.device)
    ctx.log(describe_loaded_model(model))
    # New tokens: the checkpoints carry the grown tokenizer and are saved merged (the base lacks the rows).
    vocabulary = expand_for_training(ctx, model, tokenizer, spec.method_spec.new_tokens, peft_config)
    config = build_sft_config(spec, str(ctx.work_dir / "trainer"), ctx.device, eval_dataset is not None)
    callbacks, checkpointer = standard_callbacks(ctx, tokenizer, merge_peft=vocabulary.merge_peft)
    trainer = SFTTrainer(model=model, args=config, train_dataset=train_dataset, eval_dataset=eval_dataset,
                         processing_class=tokenizer, peft_config=peft_config,
                         callbacks=callbacks + vocabulary.callbacks)
    return finish_training(ctx, trainer, checkpointer, evaluate=eval_dataset is not None)
