"""Causal language modelling on `text` rows: the training loop shared by `pretrain` and `continued_pretrain`.

    train_text(ctx, model, tokenizer, block_length=512)                  # full training
    train_text(ctx, model, tokenizer, block_length=512, peft_config=cfg)  # LoRA / QLoRA

The corpus is read with `load_for_training` as an Arrow dataset memory-mapped from the datasets cache, so
a corpus larger than RAM is never held in memory whole; tokenization and packing are `datasets.map` passes
that write to that cache too. TRL's SFTTrainer treats the `text` column as a language-modelling dataset:
it appends EOS to every row, and with packing strategy "wrapped" concatenates all rows and cuts them into
blocks of exactly `block_length` tokens (GPT-2 style: a block may span a document boundary, marked by
EOS), so no compute goes to padding. The loss covers every token. The eval dataset (or the held-out
split) is packed the same way, so `eval_loss` / `eval_perplexity` are per-token over the held-out text.
"""

from __future__ import annotations

from services.trainer.data import DatasetFormat, FileFormat, load_for_training
from services.trainer.training.callbacks import finish_training, standard_callbacks
from services.trainer.training.common import train_and_eval_datasets, training_arguments
from services.trainer.training.context import RecipeContext
from services.trainer.spec import DatasetFile, TrainingSpec


def load_text_datasets(spec: TrainingSpec, cache_dir: str):
    """(train, eval or None) datasets with one `text` column, Arrow-backed and memory-mapped."""

    def load(dataset: DatasetFile):
        return load_for_training(dataset.path, FileFormat(dataset.file_format), DatasetFormat.TEXT,
                                 cache_dir=cache_dir)

    return train_and_eval_datasets(spec, load)


def build_text_config(spec: TrainingSpec, output_dir: str, device: str, has_eval: bool, block_length: int):
    """TRL SFTConfig for language modelling: rows packed ("wrapped") into `block_length`-token blocks,
    loss on all tokens. `hyperparameters.packing` and `max_seq_length` are not read here: text is always
    packed, and the recipe decides the block length."""
    from trl import SFTConfig

    return SFTConfig(
        **training_arguments(spec, output_dir, device, has_eval),
        dataset_text_field="text",
        max_length=block_length,
        packing=True,
        packing_strategy="wrapped",
        completion_only_loss=False,
    )


def train_text(ctx: RecipeContext, model, tokenizer, *, block_length: int, peft_config=None,
               merge_peft: bool = False, extra_callbacks: list | None = None) -> str:
    """Train `model` on the job's text corpus and save it to the store; returns the final checkpoint id.

    `peft_config` (LoRA) is applied by the trainer; `merge_peft` saves merged full weights instead of an
    adapter (needed when the vocabulary grew); `extra_callbacks` go to the trainer too. Raises Cancelled
    if the job was cancelled.
    """
    from trl import SFTTrainer

    spec = ctx.spec
    ctx.log("loading dataset")
    train_dataset, eval_dataset = load_text_datasets(spec, str(ctx.work_dir / "datasets-cache"))
    ctx.log(f"packing {len(train_dataset)} text rows into blocks of {block_length} tokens")
    config = build_text_config(spec, str(ctx.work_dir / "trainer"), ctx.device, eval_dataset is not None,
                               block_length)
    callbacks, checkpointer = standard_callbacks(ctx, tokenizer, merge_peft=merge_peft)
    trainer = SFTTrainer(model=model, args=config, train_dataset=train_dataset, eval_dataset=eval_dataset,
                         processing_class=tokenizer, peft_config=peft_config,
                         callbacks=callbacks + list(extra_callbacks or []))
    return finish_training(ctx, trainer, checkpointer, evaluate=eval_dataset is not None)
