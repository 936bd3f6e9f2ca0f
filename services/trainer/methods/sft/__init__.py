"""sft: supervised fine-tuning (full / LoRA / QLoRA) on chat data, TRL's SFTTrainer (recipe.py).

Data: `messages`, alpaca, sharegpt or prompt/completion rows; the loss covers completion tokens only
unless `train_on_prompt`. Optional vocabulary expansion (`vocabulary.new_tokens`).
"""

from __future__ import annotations

from dataclasses import dataclass, field

from services.trainer.data import SFT_FORMATS
from services.trainer.methods.definition import MethodDefinition, RequestChecks, enum_choice
from services.trainer.methods.vocabulary import check_vocabulary_adapter, new_tokens_from_proto
from services.trainer.spec import TrainingSpec


@dataclass
class SftSpec:
    format: str = "auto"
    train_on_prompt: bool = False
    default_system_prompt: str = ""
    new_tokens: list[str] = field(default_factory=list)  # vocabulary expansion


def from_proto(message, checks: RequestChecks) -> SftSpec:
    return SftSpec(format=enum_choice(message, "format", checks, "sft.format", "auto"),
                   train_on_prompt=message.train_on_prompt, default_system_prompt=message.default_system_prompt,
                   new_tokens=new_tokens_from_proto(message.vocabulary, "sft.vocabulary.new_tokens", checks))


def check(spec: TrainingSpec, checks: RequestChecks) -> None:
    check_vocabulary_adapter(spec.method_spec.new_tokens, spec.adapter, checks)


METHOD = MethodDefinition(
    name="sft", spec_class=SftSpec, from_proto=from_proto, check=check,
    recipe="services.trainer.methods.sft.recipe",
    formats=lambda spec: SFT_FORMATS, needs_chat_template=True,
    summary="supervised fine-tuning on chat data (TRL SFTTrainer)")
