"""Proto enum values from the names people type ("running", "nf4", "adapter") and back, for both services."""

from __future__ import annotations

from typing import Any

from lmforge.v1 import common_pb2, trainer_pb2

# States a job stays in until someone acts: the three ends, and PAUSED (ResumeJob continues a PAUSED,
# FAILED or CANCELLED job as its next attempt).
TERMINAL_STATES = frozenset(
    {trainer_pb2.JOB_STATE_SUCCEEDED, trainer_pb2.JOB_STATE_FAILED, trainer_pb2.JOB_STATE_CANCELLED,
     trainer_pb2.JOB_STATE_PAUSED}
)


def enum_value(enum_type, value: Any, prefixes: tuple[str, ...], aliases: dict[str, str] | None = None) -> int:
    """An enum value from an int, a full name ("JOB_STATE_RUNNING") or a short one ("running")."""
    if isinstance(value, int):
        return value
    text = str(value).strip()
    if text.isdigit():
        return int(text)
    key = text.upper().replace("-", "_")
    if aliases and key.lower() in aliases:
        key = aliases[key.lower()]
    for candidate in (key, *(p + key for p in prefixes)):
        if candidate in enum_type.keys():
            return enum_type.Value(candidate)
    names = sorted({short_name(n, prefixes) for n in enum_type.keys()} - {"UNSPECIFIED"})
    raise ValueError(f"unknown value {value!r}; expected one of: {', '.join(n.lower() for n in names)}")


def short_name(name: str, prefixes: tuple[str, ...]) -> str:
    for p in prefixes:
        if name.startswith(p):
            return name[len(p):]
    return name


def parse_job_state(value: Any) -> int:
    """JobState from 3, "JOB_STATE_RUNNING" or "running"."""
    return enum_value(trainer_pb2.JobState, value, ("JOB_STATE_",))


def job_state_name(state: int) -> str:
    """Short name of a JobState: "RUNNING", "SUCCEEDED", ... ("UNSPECIFIED" for 0)."""
    try:
        return short_name(trainer_pb2.JobState.Name(state), ("JOB_STATE_",))
    except ValueError:
        return str(state)


def parse_dataset_format(value: Any) -> int:
    """DatasetFormat from 1, "DATASET_FORMAT_MESSAGES", "messages", "prompt-completion" or "auto"."""
    return enum_value(trainer_pb2.DatasetFormat, value, ("DATASET_FORMAT_",))


def dataset_format_name(fmt: int) -> str:
    try:
        return short_name(trainer_pb2.DatasetFormat.Name(fmt), ("DATASET_FORMAT_",))
    except ValueError:
        return str(fmt)


_KIND_ALIASES = {"base": "BASE_MODEL", "full": "FULL_CHECKPOINT", "adapter": "ADAPTER", "any": "UNSPECIFIED",
                 "": "UNSPECIFIED"}


def parse_checkpoint_kind(value: Any) -> int:
    """CheckpointKind from 3, "ADAPTER", "adapter", "base" or "full" ("" / "any" = 0, no filter)."""
    return enum_value(common_pb2.CheckpointKind, value, ("CHECKPOINT_KIND_",), _KIND_ALIASES)


def checkpoint_kind_name(kind: int) -> str:
    """"base", "full" or "adapter" ("-" when unspecified)."""
    return {common_pb2.BASE_MODEL: "base", common_pb2.FULL_CHECKPOINT: "full",
            common_pb2.ADAPTER: "adapter"}.get(kind, "-")


def is_terminal(state: Any) -> bool:
    """True for SUCCEEDED, FAILED and CANCELLED (accepts the enum int or a name like "succeeded")."""
    return parse_job_state(state) in TERMINAL_STATES
