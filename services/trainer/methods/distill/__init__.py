"""distill: a teacher model from the store teaches the student (recipe.py). Offline: the teacher answers
every prompt through the generation engine and the student is fine-tuned on the answers; on_policy:
TRL's GKD on the teacher's token distribution (teacher and student must share a tokenizer)."""

from __future__ import annotations

from dataclasses import dataclass

from services.trainer.data import DatasetFormat
from services.trainer.methods.definition import (
    LANGUAGE_MODELS,
    MethodDefinition,
    ModelReference,
    RequestChecks,
    enum_choice,
    fixed_formats,
    optional,
)


@dataclass
class DistillSpec:
    teacher_model_id: str = ""
    mode: str = "offline"  # offline | on_policy
    max_new_tokens: int = 128
    temperature: float = 0.0
    lmbda: float = 0.5
    beta: float = 0.5
    format: str = "prompt_only"


def from_proto(message, checks: RequestChecks) -> DistillSpec:
    spec = DistillSpec(teacher_model_id=message.teacher_model_id,
                       mode=enum_choice(message, "mode", checks, "distill.mode", "offline"))
    spec.max_new_tokens = message.max_new_tokens or spec.max_new_tokens
    for name in ("temperature", "lmbda", "beta"):
        setattr(spec, name, optional(message, name, getattr(spec, name)))
    checks.require(bool(spec.teacher_model_id), "distill.teacher_model_id", "empty",
                   "name the teacher model from the checkpoint store")
    checks.in_range(spec.max_new_tokens, "distill.max_new_tokens", 1, 131_072)
    checks.in_range(spec.temperature, "distill.temperature", 0, 2)
    checks.in_range(spec.lmbda, "distill.lmbda", 0, 1)
    checks.in_range(spec.beta, "distill.beta", 0, 1)
    return spec


def references(spec: DistillSpec) -> list[ModelReference]:
    return [ModelReference("distill.teacher_model_id", spec.teacher_model_id, LANGUAGE_MODELS,
                           "a language model (the teacher must be a base model or full checkpoint)", needs_tokenizer=True)]


METHOD = MethodDefinition(
    name="distill", spec_class=DistillSpec, from_proto=from_proto, references=references,
    recipe="services.trainer.methods.distill.recipe", formats=fixed_formats(DatasetFormat.PROMPT_ONLY),
    needs_chat_template=True, summary="distillation from a teacher model (offline answers or on-policy GKD)")
