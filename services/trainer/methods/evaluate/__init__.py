"""evaluate: an Evaluate job (not a training method; made by the Evaluate RPC): scores a store model, or
a LoRA adapter on its base, on a dataset (recipe.py). Text rows give perplexity; rows with a prompt and a
reference answer are generated and scored by exact match, F1, accuracy, BLEU, ROUGE."""

from __future__ import annotations

from dataclasses import dataclass, field

from services.trainer.data import DatasetFormat
from services.trainer.data.formats import EVALUATE_FORMATS
from services.trainer.methods.definition import MethodDefinition, RequestChecks, enum_choice

EVALUATE_METRICS = ("perplexity", "exact_match", "accuracy", "f1", "macro_f1", "bleu", "rouge")


@dataclass
class EvaluateSpec:
    """Scores `TrainingSpec.base_model_id` (+ `adapter_id`) on the dataset."""

    adapter_id: str = ""
    metrics: list[str] = field(default_factory=list)  # empty: by format (see EvaluateRequest.metrics)
    max_new_tokens: int = 128
    max_samples: int = 0
    batch_size: int = 8
    format: str = "auto"


def from_proto(request, checks: RequestChecks) -> EvaluateSpec:
    """The EvaluateRequest's own fields (model_id and dataset_id are the job's, checked by convert)."""
    metrics = list(dict.fromkeys(request.metrics))
    for index, name in enumerate(metrics):
        checks.require(name in EVALUATE_METRICS, f"metrics[{index}]", f"unknown metric {name!r}",
                       f"use any of {', '.join(EVALUATE_METRICS)}")
    spec = EvaluateSpec(adapter_id=request.adapter_id, metrics=metrics,
                        format=enum_choice(request, "format", checks, "format", "auto"))
    for name in ("max_new_tokens", "max_samples", "batch_size"):
        if getattr(request, name):
            setattr(spec, name, getattr(request, name))
    answer_metrics = [m for m in metrics if m != "perplexity"]
    checks.require(not (spec.format == DatasetFormat.TEXT.value and answer_metrics), "metrics",
                   f"{', '.join(answer_metrics)} compare answers, and text rows have none",
                   "ask text rows for perplexity only, or use prompt/completion rows")
    checks.in_range(spec.max_new_tokens, "max_new_tokens", 1, 65_536)
    checks.in_range(spec.max_samples, "max_samples", 0, 100_000_000)
    checks.in_range(spec.batch_size, "batch_size", 1, 4096)
    return spec


METHOD = MethodDefinition(
    name="evaluate", spec_class=EvaluateSpec, from_proto=from_proto, trains=False,
    recipe="services.trainer.methods.evaluate.recipe", formats=lambda spec: EVALUATE_FORMATS,
    default_adapter="full", summary="scores a model or adapter on a dataset")
