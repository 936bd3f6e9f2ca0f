"""Vocabulary expansion: domain terms become single tokens whose embeddings start as a sensible average.

    added = expand_vocabulary(model, tokenizer, ["锻造炉", "forgeweld"])

Each term is first split by the *old* tokenizer; it is then added as a normal (not special) token with
`tokenizer.add_tokens`, the embedding matrices grow with `model.resize_token_embeddings`, and the new row
of the input embeddings (and of the output embeddings when they are not tied to it) is set to the mean
of the rows of the sub-tokens the term used to be split into, so the new token starts near what its
pieces meant rather than at a random point.

With LoRA the new rows must be trained too, but LoRA alone leaves embeddings frozen:
`train_new_tokens_with_lora` adds peft's `trainable_token_indices` (only those rows train; peft keeps a
tied LM head in step), and the result is saved merged as full weights with the new tokenizer, since the
base model in the store has no such rows.
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from dataclasses import dataclass, field

from transformers import TrainerCallback

from services.trainer.training.context import RecipeContext

log = logging.getLogger(__name__)


def expand_vocabulary(model, tokenizer, new_tokens: list[str], *,
                      log_line: Callable[[str], None] | None = None) -> list[str]:
    """Add `new_tokens` to the tokenizer and model; returns the terms actually added, in order.

    Terms the tokenizer already encodes as one token are skipped (and logged through `log_line`, default
    this module's logger). The model's embedding matrix only grows: a model whose matrix already has
    spare rows past the tokenizer (common: padded to a multiple of 64 or 128) uses them.
    """
    import torch

    say = log_line or log.info
    sub_tokens: dict[str, list[int]] = {}
    skipped: list[str] = []
    for term in dict.fromkeys(new_tokens):
        ids = tokenizer(term, add_special_tokens=False)["input_ids"]
        if len(ids) == 1:
            skipped.append(term)
        elif ids:
            sub_tokens[term] = ids
    if skipped:
        say(f"vocabulary: already single tokens, not added: {', '.join(skipped)}")
    if not sub_tokens:
        return []

    tokenizer.add_tokens(list(sub_tokens))
    rows = model.get_input_embeddings().weight.shape[0]
    if len(tokenizer) > rows:
        # mean_resizing=False: every new row is overwritten below, so skip transformers' covariance init.
        model.resize_token_embeddings(len(tokenizer), mean_resizing=False)
    input_rows = model.get_input_embeddings().weight
    output = model.get_output_embeddings()
    output_rows = output.weight if output is not None and output.weight is not input_rows else None
    with torch.no_grad():
        for term, ids in sub_tokens.items():
            new_id = tokenizer.convert_tokens_to_ids(term)
            index = torch.tensor(ids, device=input_rows.device)
            input_rows[new_id] = input_rows[index].mean(dim=0)
            if output_rows is not None:
                output_rows[new_id] = output_rows[index.to(output_rows.device)].mean(dim=0)
    say(f"vocabulary: added {len(sub_tokens)} token(s) ({', '.join(sub_tokens)}); "
        f"{len(tokenizer)} tokens, embedding rows initialised to the mean of their old sub-tokens")
    return list(sub_tokens)


def train_new_tokens_with_lora(peft_config, model, tokenizer, added: list[str]) -> None:
    """Make a LoRA run also train the embedding rows of `added` tokens (peft `trainable_token_indices`).

    Tied embeddings: the input embedding is named and peft ties the LM head to it. Untied: both layers
    are named, each with the new rows, so the output rows learn as well. The rows are merged into the
    weights by `merge_and_unload`.
    """
    ids = [tokenizer.convert_tokens_to_ids(term) for term in added]
    input_embeddings = model.get_input_embeddings()
    output = model.get_output_embeddings()
    names = {module: name for name, module in model.named_modules()}
    if output is None or output.weight is input_embeddings.weight:
        peft_config.trainable_token_indices = ids
    else:
        peft_config.trainable_token_indices = {names[input_embeddings]: ids, names[output]: ids}


class TrainableTokensHeadFix(TrainerCallback):
    """Lets TRL's fused LM head read a peft-wrapped, tied LM head.

    TRL 1.16's SFTTrainer scores tokens with a fused head that reads `lm_head.weight` and `lm_head.bias`.
    peft 0.21's TrainableTokensWrapper (put on a tied LM head by `trainable_token_indices`) serves `weight`
    (the base rows with the trained new rows, so gradients reach them) but not `bias`, and the step fails
    with AttributeError. Exposing the wrapped layer's own bias (None for Llama/Qwen2 heads) fixes that
    without changing what is computed: peft's own forward of that wrapper uses no bias either.
    """

    def on_train_begin(self, args, state, control, model=None, **kwargs):
        from peft.utils.other import TrainableTokensWrapper

        head = model.get_output_embeddings() if model is not None else None
        if isinstance(head, TrainableTokensWrapper) and "bias" not in vars(head):
            # object.__setattr__: a plain attribute, not a second registration of the base layer's parameter.
            object.__setattr__(head, "bias", head.original_module.bias)


@dataclass
class VocabularyExpansion:
    """What a recipe needs to know after `expand_for_training`."""

    added: list[str] = field(default_factory=list)
    callbacks: list = field(default_factory=list)  # append to the trainer's callbacks

    @property
    def merge_peft(self) -> bool:
        """Save LoRA runs merged, as full weights: the base model in the store lacks the new rows."""
        return bool(self.added)


def expand_for_training(ctx: RecipeContext, model, tokenizer, new_tokens: list[str],
                        peft_config) -> VocabularyExpansion:
    """`expand_vocabulary` for a recipe: logs to the job and sets LoRA up to train the new rows.

    Pass `merge_peft=result.merge_peft` to `standard_callbacks` and add `result.callbacks` to the trainer's.
    """
    if not new_tokens:
        return VocabularyExpansion()
    added = expand_vocabulary(model, tokenizer, new_tokens, log_line=ctx.log)
    if not added or peft_config is None:
        return VocabularyExpansion(added)
    train_new_tokens_with_lora(peft_config, model, tokenizer, added)
    ctx.log("vocabulary: LoRA also trains the new embedding rows; checkpoints are saved merged, as full "
            "weights with the new tokenizer")
    return VocabularyExpansion(added, [TrainableTokensHeadFix()])
