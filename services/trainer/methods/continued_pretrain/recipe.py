"""Continued pretraining: keep training a store model (full / LoRA / QLoRA) on a domain's `text` rows.

Optionally grows the vocabulary first (`continued_pretrain.vocabulary.new_tokens`, see
training/vocabulary.py); then the model is trained by `training/text.py` on the corpus packed into blocks
of `hyperparameters.max_seq_length` tokens (capped at the model's maximum position). A LoRA run saves an
adapter of the base, unless tokens were added: then it is saved merged, as full weights with the new
tokenizer.
"""

from __future__ import annotations

from services.trainer.training.adapters import describe_loaded_model, load_base_for_training, resolve_precision
from services.trainer.training.common import load_tokenizer
from services.trainer.training.context import RecipeContext
from services.trainer.training.text import train_text
from services.trainer.training.vocabulary import expand_for_training
from services.trainer.methods.continued_pretrain import ContinuedPretrainSpec


def block_length_for(ctx: RecipeContext, model) -> int:
    """max_seq_length, capped at the model's max_position_embeddings (positions past it were never trained)."""
    wanted = ctx.spec.hyperparameters.max_seq_length
    limit = getattr(model.config, "max_position_embeddings", None) or wanted
    if wanted > limit:
        ctx.log(f"hyperparameters.max_seq_length {wanted} exceeds the model's context of {limit} tokens; "
                f"packing into blocks of {limit}", "warning")
    return min(wanted, limit)


def run(ctx: RecipeContext) -> str:
    spec = ctx.spec
    method: ContinuedPretrainSpec = spec.method_spec
    base_dir = ctx.store.path_of(spec.base_model_id, "base_model_id")
    tokenizer = load_tokenizer(base_dir)
    ctx.log(f"loading {spec.base_model_id} for {spec.adapter.type} continued pretraining on {ctx.device}")
    precision = resolve_precision(spec.hyperparameters, spec.adapter, ctx.device)
    model, peft_config = load_base_for_training(base_dir, spec.adapter, precision, ctx.device)
    ctx.log(describe_loaded_model(model))
    vocabulary = expand_for_training(ctx, model, tokenizer, method.new_tokens, peft_config)
    return train_text(ctx, model, tokenizer, block_length=block_length_for(ctx, model), peft_config=peft_config,
                      merge_peft=vocabulary.merge_peft, extra_callbacks=vocabulary.callbacks)
