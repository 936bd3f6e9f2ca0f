"""Pretraining from scratch: a new Llama / Qwen2 model from a `PretrainSpec`, trained on `text` rows.

The tokenizer is the one of store entry `pretrain.tokenizer_from`, or a byte-level BPE of `vocab_size`
trained with the `tokenizers` library on the training corpus, streamed row by row from the dataset file
(never read whole), with ChatML special tokens and chat template so the result can also be chatted with
once it has learnt something. The model is initialised by transformers (`AutoModelForCausalLM.from_config`,
input and output embeddings tied) and trained by `training/text.py`: the corpus is packed into blocks of
`min(context_length, hyperparameters.max_seq_length)` tokens.

The result is a FULL_CHECKPOINT (no base model: its manifest's base_model_id is "") holding weights,
tokenizer and a generation config whose EOS / PAD are the tokenizer's, so the inference service loads
it like any model.
"""

from __future__ import annotations

from collections.abc import Iterator

from services.common.errors import FailedPrecondition
from services.trainer.data import FileFormat, iter_rows
from services.trainer.training.common import load_tokenizer
from services.trainer.training.context import RecipeContext
from services.trainer.training.text import train_text
from services.trainer.methods.pretrain import PretrainSpec
from services.trainer.spec import DatasetFile

# The phase (RecipeContext.save_phase) holding the tokenizer trained on the corpus.
TOKENIZER_PHASE = "tokenizer"


def corpus_texts(dataset: DatasetFile) -> Iterator[str]:
    """The `text` of every readable row of a dataset file, streamed (rows were validated before queueing)."""
    for _, row in iter_rows(dataset.path, FileFormat(dataset.file_format)):
        if isinstance(row, dict) and isinstance(row.get("text"), str):
            yield row["text"]


def build_tokenizer(ctx: RecipeContext, method: PretrainSpec):
    """The tokenizer of `tokenizer_from`, or a byte-level BPE trained on the corpus.

    Raises FailedPrecondition if the borrowed tokenizer has no EOS token (documents could not be separated)."""
    from services.common.model_import import train_tiny_tokenizer

    if method.tokenizer_from:
        tokenizer = load_tokenizer(ctx.store.path_of(method.tokenizer_from, "pretrain.tokenizer_from"))
        if tokenizer.eos_token is None:
            raise FailedPrecondition(f"pretrain.tokenizer_from: the tokenizer of {method.tokenizer_from!r} has no "
                                     "EOS token to end documents with; use another model's tokenizer, or leave "
                                     "tokenizer_from empty to train one on the corpus")
        if not tokenizer.chat_template:
            ctx.log(f"the tokenizer of {method.tokenizer_from!r} has no chat template: the model will complete "
                    "text, but chat requests to it will be refused", "warning")
        ctx.log(f"tokenizer: {len(tokenizer)} tokens, from {method.tokenizer_from!r}")
        return tokenizer
    trained = ctx.finished_phase(TOKENIZER_PHASE)
    if trained is not None:  # an earlier attempt trained it: a later one never trains it again
        tokenizer = load_tokenizer(trained)
        ctx.log(f"tokenizer: {len(tokenizer)} tokens, trained by an earlier attempt of this job")
        return tokenizer
    ctx.log(f"training a byte-level BPE tokenizer (vocab_size {method.vocab_size}) on the corpus")
    tokenizer = train_tiny_tokenizer(corpus_texts(ctx.spec.dataset), method.vocab_size, builtin_corpus=False)
    note = "" if len(tokenizer) >= method.vocab_size else " (the corpus is too small for more merges)"
    ctx.log(f"tokenizer: {len(tokenizer)} tokens{note}")
    with ctx.save_phase(TOKENIZER_PHASE) as folder:
        tokenizer.save_pretrained(folder)
    return tokenizer


def build_model(method: PretrainSpec, tokenizer, seed: int):
    """A randomly initialised causal LM of the configured shape, vocabulary and special ids of `tokenizer`."""
    import torch
    from transformers import AutoModelForCausalLM, set_seed

    from services.common.model_import import causal_lm_config

    config = causal_lm_config(
        method.architecture, tokenizer, hidden_size=method.hidden_size, num_layers=method.num_layers,
        num_attention_heads=method.num_attention_heads, num_key_value_heads=method.num_key_value_heads,
        intermediate_size=method.intermediate_size, context_length=method.context_length,
    )
    set_seed(seed)
    model = AutoModelForCausalLM.from_config(config, dtype=torch.float32)
    generation = model.generation_config
    generation.bos_token_id = tokenizer.bos_token_id
    generation.eos_token_id = tokenizer.eos_token_id
    generation.pad_token_id = tokenizer.pad_token_id
    return model


def run(ctx: RecipeContext) -> str:
    spec = ctx.spec
    method: PretrainSpec = spec.method_spec
    tokenizer = build_tokenizer(ctx, method)
    model = build_model(method, tokenizer, spec.hyperparameters.seed)
    parameters = sum(p.numel() for p in model.parameters())
    ctx.log(f"new {method.architecture} model: {parameters:,} parameters ({parameters / 1e6:.2f}M); "
            f"{method.num_layers} layers, hidden {method.hidden_size}, {method.num_attention_heads} heads "
            f"({method.num_key_value_heads} key/value), MLP {method.intermediate_size}, vocabulary {len(tokenizer)}, "
            f"context {method.context_length}")
    block_length = min(method.context_length, spec.hyperparameters.max_seq_length)
    return train_text(ctx, model, tokenizer, block_length=block_length)
