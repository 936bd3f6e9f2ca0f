"""pretrain: a new Llama or Qwen2 model trained from scratch on `text` rows (recipe.py).

The tokenizer comes from a store entry (`tokenizer_from`) or is a byte-level BPE trained on the corpus.
The result is a FULL_CHECKPOINT with a ChatML template, so the inference service serves it.
"""

from __future__ import annotations

from dataclasses import dataclass

from services.common.model_import import CAUSAL_LM_ARCHITECTURES
from services.common.store import EntryKind
from services.trainer.data import DatasetFormat
from services.trainer.methods.definition import (
    MethodDefinition,
    ModelReference,
    RequestChecks,
    fixed_formats,
)
from services.trainer.spec import TrainingSpec


@dataclass
class PretrainSpec:
    architecture: str = "llama"  # llama | qwen2
    hidden_size: int = 256
    num_layers: int = 4
    num_attention_heads: int = 4
    num_key_value_heads: int = 4
    context_length: int = 512
    intermediate_size: int = 688
    tokenizer_from: str = ""  # store id; "" = train a byte-level BPE on the corpus
    vocab_size: int = 8000
    format: str = "text"


def from_proto(message, checks: RequestChecks) -> PretrainSpec:
    spec = PretrainSpec(architecture=message.architecture or "llama", tokenizer_from=message.tokenizer_from)
    for name in ("hidden_size", "num_layers", "num_attention_heads", "context_length", "vocab_size"):
        if getattr(message, name):
            setattr(spec, name, getattr(message, name))
    spec.num_key_value_heads = message.num_key_value_heads or spec.num_attention_heads
    # Llama's MLP width is about 8/3 of the hidden size, rounded up to a multiple of 64.
    spec.intermediate_size = message.intermediate_size or -(-spec.hidden_size * 8 // 3 // 64) * 64
    f = "pretrain."
    checks.require(spec.architecture in CAUSAL_LM_ARCHITECTURES, f + "architecture",
                   f"unknown architecture {spec.architecture!r}", f"use one of {', '.join(CAUSAL_LM_ARCHITECTURES)}")
    checks.in_range(spec.hidden_size, f + "hidden_size", 16, 65_536)
    checks.in_range(spec.num_layers, f + "num_layers", 1, 512)
    checks.in_range(spec.num_attention_heads, f + "num_attention_heads", 1, 1024)
    checks.in_range(spec.num_key_value_heads, f + "num_key_value_heads", 1, 1024)
    checks.in_range(spec.context_length, f + "context_length", 16, 1_048_576)
    checks.in_range(spec.intermediate_size, f + "intermediate_size", 16, 1_048_576)
    checks.in_range(spec.vocab_size, f + "vocab_size", 300, 1_000_000)
    checks.require(spec.hidden_size % spec.num_attention_heads == 0, f + "num_attention_heads",
                   f"hidden_size {spec.hidden_size} is not divisible by {spec.num_attention_heads} heads",
                   "pick a head count that divides hidden_size")
    checks.require(spec.num_attention_heads % spec.num_key_value_heads == 0, f + "num_key_value_heads",
                   f"{spec.num_attention_heads} attention heads are not a multiple of "
                   f"{spec.num_key_value_heads} key/value heads", "use a divisor of num_attention_heads")
    return spec


def check(spec: TrainingSpec, checks: RequestChecks) -> None:
    checks.require(not spec.base_model_id, "base_model_id", "pretraining from scratch starts from no model",
                   "leave base_model_id empty, or use continued_pretrain to keep training a model")
    checks.require(spec.adapter.type == "full", "adapter.type", "a model trained from scratch has no base to adapt",
                   "use ADAPTER_FULL (the default for pretraining)")


def references(spec: PretrainSpec) -> list[ModelReference]:
    if not spec.tokenizer_from:
        return []
    return [ModelReference("pretrain.tokenizer_from", spec.tokenizer_from, tuple(EntryKind), "a tokenizer source",
                           needs_tokenizer=True)]


METHOD = MethodDefinition(
    name="pretrain", spec_class=PretrainSpec, from_proto=from_proto, check=check, references=references,
    recipe="services.trainer.methods.pretrain.recipe", formats=fixed_formats(DatasetFormat.TEXT),
    needs_base_model=False, default_adapter="full",
    summary="a new model trained from scratch on text")
