"""continued_pretrain: more causal-LM training of a stored model on `text` rows (full / LoRA / QLoRA),
packed into blocks, with optional vocabulary expansion (recipe.py)."""

from __future__ import annotations

from dataclasses import dataclass, field

from services.trainer.data import DatasetFormat
from services.trainer.methods.definition import MethodDefinition, RequestChecks, fixed_formats
from services.trainer.methods.vocabulary import check_vocabulary_adapter, new_tokens_from_proto
from services.trainer.spec import TrainingSpec


@dataclass
class ContinuedPretrainSpec:
    new_tokens: list[str] = field(default_factory=list)  # vocabulary expansion
    format: str = "text"


def from_proto(message, checks: RequestChecks) -> ContinuedPretrainSpec:
    return ContinuedPretrainSpec(new_tokens=new_tokens_from_proto(
        message.vocabulary, "continued_pretrain.vocabulary.new_tokens", checks))


def check(spec: TrainingSpec, checks: RequestChecks) -> None:
    check_vocabulary_adapter(spec.method_spec.new_tokens, spec.adapter, checks)


METHOD = MethodDefinition(
    name="continued_pretrain", spec_class=ContinuedPretrainSpec, from_proto=from_proto, check=check,
    recipe="services.trainer.methods.continued_pretrain.recipe", formats=fixed_formats(DatasetFormat.TEXT),
    summary="continued pretraining on text")
