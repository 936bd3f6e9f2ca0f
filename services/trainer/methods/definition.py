"""What a training method declares about itself: `MethodDefinition`, and the helpers its conversion uses.

Each method package (`services/trainer/methods/<name>/__init__.py`) defines, side by side, its typed spec
dataclass, `from_proto(message, checks)` (the proto message -> spec, every field checked), its cross-field
checks, the dataset formats and columns it accepts, the other store entries it reads (for admission),
and names its recipe module (`run(ctx)`, imported only in the worker). `services.trainer.methods`
collects these into the one registry that the server, the job manager and the worker use.

Pure Python: no torch, no generated code (proto enums are read through the message's own descriptor).
"""

from __future__ import annotations

import os
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

from services.common.errors import InvalidArgument, Violation
from services.common.store import EntryKind
from services.trainer.data import DatasetFormat
from services.trainer.spec import TrainingSpec

LANGUAGE_MODELS = (EntryKind.BASE_MODEL, EntryKind.FULL_CHECKPOINT)


class RequestChecks:
    """Collects request violations; `raise_if_any` reports them all in one INVALID_ARGUMENT."""

    def __init__(self, request_name: str = "StartTrainingRequest") -> None:
        self.request_name = request_name
        self.violations: list[Violation] = []

    def require(self, ok: bool, field: str, reason: str, hint: str = "") -> None:
        if not ok:
            self.violations.append(Violation(0, field, reason, hint))

    def in_range(self, value: float, field: str, low: float, high: float, *, low_open: bool = False) -> None:
        ok = (value > low if low_open else value >= low) and value <= high
        bracket = "(" if low_open else "["
        self.require(ok, field, f"{value} is out of range", f"use a value in {bracket}{low}, {high}]")

    def raise_if_any(self) -> None:
        """One INVALID_ARGUMENT with every violation; its message names each field and what is wrong, so
        a client that shows only the status details (grpcurl, a log line) still sees the reasons."""
        if self.violations:
            reasons = "; ".join(f"{v.field}: {v.reason}" for v in self.violations)
            raise InvalidArgument(f"invalid {self.request_name}: {reasons}", self.violations)


def enum_choice(message, field: str, checks: RequestChecks, where: str, default: str) -> str:
    """A proto enum field as its lower-case domain name (`PREFERENCE_LOSS_KTO` -> "kto"); the zero
    value (UNSPECIFIED, or AUTO) gives `default`, an unknown number a violation naming `where` and the valid values."""
    enum = message.DESCRIPTOR.fields_by_name[field].enum_type
    number = getattr(message, field)
    prefix = enum_prefix(enum)
    value = enum.values_by_number.get(number)
    if value is None:
        names = ", ".join(v.name for v in enum.values if v.number)
        checks.require(False, where, f"unknown {field} {number}", f"use one of {names}")
        return default
    return default if value.number == 0 else value.name.removeprefix(prefix).lower()


def enum_prefix(enum) -> str:
    """What every value name of a proto enum starts with, up to an underscore (`PREFERENCE_LOSS_`)."""
    common = os.path.commonprefix([v.name for v in enum.values])
    return common[:common.rfind("_") + 1]


def optional(message, field: str, default):
    """The value of a proto3 `optional` field, or `default` when it is unset."""
    return getattr(message, field) if message.HasField(field) else default


@dataclass(frozen=True)
class ModelReference:
    """Another store entry a job reads (a teacher, a reward model, a tokenizer source), checked at
    StartTraining by admission: it exists, is of one of `kinds`, and has a tokenizer when asked."""

    field: str  # request field that names it, for errors
    entry_id: str
    kinds: tuple[EntryKind, ...]
    role: str  # "the teacher", "a reward model", ... for the message
    needs_tokenizer: bool = False


@dataclass(frozen=True)
class MethodDefinition:
    """One training method, as the rest of the trainer sees it (see the module docstring)."""

    name: str  # the proto `oneof method` field name
    spec_class: type
    from_proto: Callable[[Any, RequestChecks], Any]  # (method message, checks) -> spec dataclass
    recipe: str  # module with `run(ctx) -> str`, imported by the worker only
    formats: Callable[[Any], Sequence[DatasetFormat]]  # method spec -> row formats its data may use
    summary: str = ""
    # (TrainingSpec, checks): cross-field checks (method x adapter x hyperparameters); no store access.
    check: Callable[[TrainingSpec, RequestChecks], None] | None = None
    # Extra columns every row must have -> who reads them (the RL methods' rewards).
    required_columns: Callable[[Any], dict[str, str]] | None = None
    # Store entries the job reads besides its base model.
    references: Callable[[Any], list[ModelReference]] | None = None
    # Needs the base model's chat template (refused at StartTraining when the base has none).
    needs_chat_template: bool = False
    # Pretraining starts from no model; every other method trains `base_model_id`.
    needs_base_model: bool = True
    # Kinds of store entry the base may be (reward models train from language models too).
    base_kinds: tuple[EntryKind, ...] = LANGUAGE_MODELS
    default_adapter: str = "lora"
    # False for Evaluate jobs: they are made by the Evaluate RPC, not StartTraining.
    trains: bool = True


def fixed_formats(*formats: DatasetFormat) -> Callable[[Any], Sequence[DatasetFormat]]:
    """`MethodDefinition.formats` for a method whose formats do not depend on its spec."""
    return lambda _spec: formats
