"""The registry of training methods: one package per method under this folder (DESIGN.md §5.1).

    from services.trainer import methods
    definition = methods.get("sft")              # MethodDefinition (raises NotFound-style InvalidArgument)
    methods.names()                              # every training method StartTraining accepts
    methods.formats_for("dpo")                   # dataset formats of a method (ValidateDataset)
    methods.validate_dataset(spec, spec.dataset) # every row checked against the job's method
    methods.load_spec(spec_json)                 # a TrainingSpec back from its JSON
    methods.load_recipe("sft").run(ctx)          # in the worker only: pulls in torch and TRL

Each package `methods/<name>/__init__.py` holds the method's typed spec, proto conversion, checks and data
rules and sets `METHOD = MethodDefinition(...)`; its `recipe.py` holds `run(ctx)`. The packages are
discovered here, so adding a method touches its own package, its proto message and its tests only
(docs/architecture.md, "How to add a training method"). Discovery imports no torch.
"""

from __future__ import annotations

import functools
import importlib
import json
import pkgutil
from collections.abc import Sequence
from pathlib import Path

from services.common.errors import invalid_field
from services.trainer.data import DatasetFormat, FileFormat, ValidationResult, validate_file
from services.trainer.methods.definition import MethodDefinition
from services.trainer.spec import DatasetFile, TrainingSpec


@functools.cache
def _definitions() -> dict[str, MethodDefinition]:
    found: dict[str, MethodDefinition] = {}
    for info in sorted(pkgutil.iter_modules(__path__), key=lambda i: i.name):
        if info.ispkg:
            definition: MethodDefinition = importlib.import_module(f"{__name__}.{info.name}").METHOD
            found[definition.name] = definition
    return found


def all_definitions() -> list[MethodDefinition]:
    """Every method, Evaluate included, by name."""
    return list(_definitions().values())


def names() -> tuple[str, ...]:
    """The training methods (Evaluate is a job kind of its own, not a training method)."""
    return tuple(name for name, d in _definitions().items() if d.trains)


def get(name: str, field: str = "method") -> MethodDefinition:
    """The definition of `name`. Raises InvalidArgument naming `field` and the known methods."""
    try:
        return _definitions()[name]
    except KeyError:
        raise invalid_field(field, f"unknown training method {name!r}",
                            f"use one of {', '.join(_definitions())}") from None


def formats_for(name: str, field: str = "method") -> Sequence[DatasetFormat]:
    """The dataset formats a method accepts with its default settings."""
    definition = get(name, field)
    return definition.formats(definition.spec_class())


def load_recipe(name: str):
    """The recipe module of a method (imported lazily: it pulls in torch and TRL)."""
    return importlib.import_module(get(name).recipe)


def load_spec(text: str) -> TrainingSpec:
    """A TrainingSpec from `TrainingSpec.to_json` output, with its method's spec class."""
    return TrainingSpec.from_json(text, get(json.loads(text)["method"]).spec_class)


def validate_dataset(spec: TrainingSpec, dataset: DatasetFile, max_violations: int = 1000) -> ValidationResult:
    """Stream every row of one of the job's datasets through the checks of its method: the formats the
    method accepts with this spec, the format the request asked for, and the columns its rewards read."""
    definition = get(spec.method)
    columns = definition.required_columns(spec.method_spec) if definition.required_columns else {}
    return validate_file(Path(dataset.path), FileFormat(dataset.file_format), definition.formats(spec.method_spec),
                         DatasetFormat(getattr(spec.method_spec, "format", "auto")), max_violations, columns,
                         method=spec.method)
