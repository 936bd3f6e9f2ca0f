"""Validate a dataset file before a job is queued, reporting every bad row (DESIGN.md §4, §5.4).

    result = validate_file("train.jsonl", FileFormat.JSONL, SFT_FORMATS, method="sft")
    if not result.ok:
        raise InvalidArgument(f"{result.bad_rows} of {result.total_rows} rows are invalid", result.violations)

The file is streamed, so any size validates in bounded memory. Every violation names the row (1-based,
as iter_rows numbers it), the field path (`messages[2].role`), what is wrong and how to fix it. At most
`max_violations` are listed (`truncated` says more were found); the row counts are always exact.
The formats a method accepts come from its definition (`services.trainer.methods.formats_for`, or
`methods.validate_dataset` for a job's spec). Raises InvalidArgument for a format the method does not use,
NotFound for a missing file.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path

from services.common.errors import Violation, invalid_field
from services.trainer.data.formats import (
    FORMAT_KEYS,
    DatasetFormat,
    FileFormat,
    detect_format,
    expected_fields,
    SFT_FORMATS,
)
from services.trainer.data.reader import iter_rows, type_name

CHAT_ROLES = ("system", "user", "assistant")
# ShareGPT speaker names (LLaMA-Factory's defaults) and the chat role each maps to.
SHAREGPT_ROLES = {
    "human": "user",
    "user": "user",
    "gpt": "assistant",
    "assistant": "assistant",
    "system": "system",
}


@dataclass
class ValidationResult:
    ok: bool
    format: DatasetFormat
    total_rows: int
    valid_rows: int
    bad_rows: int
    violations: list[Violation] = field(default_factory=list)
    truncated: bool = False


# ---------------------------------------------------------------------------------------------------
# Field checks. Each returns the violations of one row; `path` is the field path shown to the user.


def _check_string(
    r: int, obj: dict, key: str, path: str, required: bool = True, allow_empty: bool = False
) -> list[Violation]:
    value = obj.get(key)
    if value is None:
        if not required:
            return []
        what = "is null" if key in obj else "missing required field"
        return [Violation(r, path, what, f"add a non-empty string {key!r}")]
    if not isinstance(value, str):
        return [Violation(r, path, f"expected a string, got {type_name(value)}", f"make {key!r} a string")]
    if not allow_empty and not value.strip():
        what = "is empty" if not value else "is whitespace only"
        return [Violation(r, path, what, f"{key!r} must contain text; fill it in or drop the row")]
    return []


def _check_list(r: int, row: dict, key: str) -> tuple[list | None, list[Violation]]:
    value = row.get(key)
    if value is None:
        what = "is null" if key in row else "missing required field"
        return None, [Violation(r, key, what, f"add a non-empty list {key!r}")]
    if not isinstance(value, list):
        reason = f"expected a list, got {type_name(value)}"
        return None, [Violation(r, key, reason, f"make {key!r} a list of message objects")]
    if not value:
        hint = f"{key!r} needs at least a user and an assistant message"
        return None, [Violation(r, key, "is an empty list", hint)]
    return value, []


def _check_turns(
    r: int,
    items: list,
    key: str,
    role_key: str,
    content_key: str,
    role_map: dict[str, str],
) -> list[Violation]:
    """Per-message checks plus the conversation's order rules, shared by messages and sharegpt."""
    out: list[Violation] = []
    roles: list[str | None] = []  # mapped chat role per message, None where invalid
    allowed = ", ".join(role_map)
    for i, msg in enumerate(items):
        where = f"{key}[{i}]"
        if not isinstance(msg, dict):
            out.append(Violation(
                r, where, f"expected an object, got {type_name(msg)}",
                f'each message is an object like {{"{role_key}": ..., "{content_key}": ...}}',
            ))
            roles.append(None)
            continue
        role = msg.get(role_key)
        if role is None:
            what = "is null" if role_key in msg else "missing required field"
            out.append(Violation(r, f"{where}.{role_key}", what, f"{role_key} must be one of {allowed}"))
            roles.append(None)
        elif not isinstance(role, str):
            out.append(Violation(
                r, f"{where}.{role_key}", f"expected a string, got {type_name(role)}",
                f"{role_key} must be one of {allowed}",
            ))
            roles.append(None)
        elif role not in role_map:
            out.append(Violation(
                r, f"{where}.{role_key}", f"unknown {role_key} {role!r}", f"{role_key} must be one of {allowed}"
            ))
            roles.append(None)
        else:
            roles.append(role_map[role])
        out.extend(_check_string(r, msg, content_key, f"{where}.{content_key}"))
    if any(role is None for role in roles):
        return out  # order rules would only repeat the role problems above
    out.extend(_check_order(r, items, key, role_key, roles))
    return out


def _check_order(r: int, items: list, key: str, role_key: str, roles: list[str]) -> list[Violation]:
    out: list[Violation] = []

    def shown(i: int) -> str:  # the role as written in the file (sharegpt's "human", "gpt")
        return repr(items[i][role_key])

    turns: list[int] = []  # indices of the user/assistant messages, in order
    for i, role in enumerate(roles):
        if role == "system":
            if i > 0:
                out.append(Violation(
                    r, f"{key}[{i}].{role_key}",
                    f"system message at position {i}; only the first message may be system",
                    "move the system prompt to the first message",
                ))
        else:
            turns.append(i)
    if not turns:
        out.append(Violation(r, key, "has only a system message", "add a user message and an assistant reply"))
        return out
    first = turns[0]
    if roles[first] != "user":
        out.append(Violation(
            r, f"{key}[{first}].{role_key}",
            f"conversation starts with {shown(first)}; the first turn must be from the user",
            "start with a user message (after an optional system message)",
        ))
    for prev, cur in zip(turns, turns[1:]):
        if roles[prev] == roles[cur]:
            out.append(Violation(
                r, f"{key}[{cur}].{role_key}",
                f"two {roles[cur]} messages in a row ({key}[{prev}] and {key}[{cur}])",
                f"user and assistant must alternate; merge the consecutive {roles[cur]} messages into one",
            ))
    if "assistant" not in roles:
        out.append(Violation(r, key, "has no assistant message", "add the assistant reply the model should learn"))
    elif roles[turns[-1]] != "assistant":
        last = turns[-1]
        out.append(Violation(
            r, f"{key}[{last}].{role_key}",
            f"the last message is from {shown(last)}; there is nothing to learn from the final turn",
            "drop the trailing user turn or add the assistant reply",
        ))
    return out


def _check_messages(r: int, row: dict) -> list[Violation]:
    items, out = _check_list(r, row, "messages")
    if items is None:
        return out
    return _check_turns(r, items, "messages", "role", "content", {role: role for role in CHAT_ROLES})


def _check_sharegpt(r: int, row: dict) -> list[Violation]:
    out = _check_string(r, row, "system", "system", required=False, allow_empty=True)
    items, problems = _check_list(r, row, "conversations")
    if items is None:
        return out + problems
    return out + _check_turns(r, items, "conversations", "from", "value", SHAREGPT_ROLES)


def _check_alpaca(r: int, row: dict) -> list[Violation]:
    return (
        _check_string(r, row, "instruction", "instruction")
        + _check_string(r, row, "input", "input", required=False, allow_empty=True)
        + _check_string(r, row, "output", "output")
        + _check_string(r, row, "system", "system", required=False, allow_empty=True)
    )


def _check_prompt_completion(r: int, row: dict) -> list[Violation]:
    return _check_string(r, row, "prompt", "prompt") + _check_string(r, row, "completion", "completion")


def _check_text(r: int, row: dict) -> list[Violation]:
    return _check_string(r, row, "text", "text")


def _check_text_or_messages(r: int, row: dict, key: str) -> list[Violation]:
    value = row.get(key)
    if isinstance(value, list):
        if not value:
            hint = f"{key!r} must be a non-empty string or list of messages"
            return [Violation(r, key, "is an empty list", hint)]
        out: list[Violation] = []
        allowed = ", ".join(CHAT_ROLES)
        for i, msg in enumerate(value):
            where = f"{key}[{i}]"
            if not isinstance(msg, dict):
                out.append(Violation(
                    r, where, f"expected an object, got {type_name(msg)}",
                    'each message is {"role": ..., "content": ...}'
                ))
                continue
            role = msg.get("role")
            if role not in CHAT_ROLES:
                if role is None:
                    reason = "missing required field"
                elif isinstance(role, str):
                    reason = f"unknown role {role!r}"
                else:
                    reason = f"expected a string, got {type_name(role)}"
                out.append(Violation(r, f"{where}.role", reason, f"role must be one of {allowed}"))
            out.extend(_check_string(r, msg, "content", f"{where}.content"))
        return out
    if value is not None and not isinstance(value, str):
        return [Violation(
            r, key, f"expected a string or a list of messages, got {type_name(value)}",
            f"make {key!r} a string or a list of role/content messages",
        )]
    return _check_string(r, row, key, key)


def _check_turn_roles(r: int, row: dict, key: str) -> list[Violation]:
    """Role rules of a message-list cell: a prompt ends with the user turn being answered; a response
    (chosen, rejected, completion) holds assistant messages only. Strings have no roles to check."""
    value = row.get(key)
    if not isinstance(value, list) or not value:
        return []
    roles = [m.get("role") for m in value]
    if key == "prompt":
        if roles[-1] != "user":
            return [Violation(r, f"{key}[{len(roles) - 1}].role", f"the prompt ends with a {roles[-1]!r} message",
                              "end the prompt with the user turn that the responses answer")]
        return []
    return [Violation(r, f"{key}[{i}].role", f"{role!r} message in a response",
                      "a response holds only assistant messages; move earlier turns into the prompt")
            for i, role in enumerate(roles) if role != "assistant"]


def _check_preference(r: int, row: dict) -> list[Violation]:
    out: list[Violation] = []
    for key in ("prompt", "chosen", "rejected"):
        problems = _check_text_or_messages(r, row, key)
        out.extend(problems or _check_turn_roles(r, row, key))
    if not out and row["chosen"] == row["rejected"]:
        out.append(Violation(
            r, "rejected", "is identical to chosen", "a preference pair needs two different responses"
        ))
    return out


def _check_unpaired_preference(r: int, row: dict) -> list[Violation]:
    out: list[Violation] = []
    for key in ("prompt", "completion"):
        problems = _check_text_or_messages(r, row, key)
        out.extend(problems or _check_turn_roles(r, row, key))
    label = row.get("label")
    if isinstance(label, str) and label.strip().lower() in ("true", "false"):
        return out  # CSV cells are strings; "true"/"false" are read as booleans
    if not isinstance(label, bool):
        reason = "missing required field" if "label" not in row else f"expected true or false, got {type_name(label)}"
        out.append(Violation(r, "label", reason,
                             "label is true when the completion is a desirable answer, false when it is not"))
    return out


def _check_prompt_only(r: int, row: dict) -> list[Violation]:
    problems = _check_text_or_messages(r, row, "prompt")
    return problems or _check_turn_roles(r, row, "prompt")


ROW_CHECKS: dict[DatasetFormat, Callable[[int, dict], list[Violation]]] = {
    DatasetFormat.MESSAGES: _check_messages,
    DatasetFormat.ALPACA: _check_alpaca,
    DatasetFormat.SHAREGPT: _check_sharegpt,
    DatasetFormat.PROMPT_COMPLETION: _check_prompt_completion,
    DatasetFormat.TEXT: _check_text,
    DatasetFormat.PREFERENCE: _check_preference,
    DatasetFormat.UNPAIRED_PREFERENCE: _check_unpaired_preference,
    DatasetFormat.PROMPT_ONLY: _check_prompt_only,
}


def check_row(row_number: int, row: dict, fmt: DatasetFormat) -> list[Violation]:
    """The violations of one row in format `fmt` (empty when the row is valid)."""
    return ROW_CHECKS[DatasetFormat(fmt)](row_number, row)


# ---------------------------------------------------------------------------------------------------


def validate_file(
    path: str | Path,
    file_format: FileFormat,
    formats: Sequence[DatasetFormat] = SFT_FORMATS,
    fmt: DatasetFormat = DatasetFormat.AUTO,
    max_violations: int = 1000,
    required_columns: dict[str, str] | None = None,
    *,
    method: str = "sft",
) -> ValidationResult:
    """Stream every row of `path` and check it against `fmt` (AUTO: detected from the first row that
    matches one of `formats`, the formats `method` accepts; `method` names it in messages).
    `required_columns` maps extra columns every row must have to who reads them (e.g. {"answer":
    "reward exact_match"}). See the module docstring for what is reported."""
    allowed = tuple(formats)
    fmt = DatasetFormat(fmt)
    if fmt is not DatasetFormat.AUTO and fmt not in allowed:
        raise invalid_field(
            "format",
            f"format {fmt.value!r} cannot be used for method {method!r}",
            f"use one of {', '.join(f.value for f in allowed)} (or auto)",
        )
    detected: DatasetFormat | None = None if fmt is DatasetFormat.AUTO else fmt
    detected_at = 0
    expected = " or ".join(expected_fields(f) for f in allowed)

    violations: list[Violation] = []
    truncated = False
    total = bad = 0

    for row_no, row in iter_rows(path, file_format):
        total += 1
        if isinstance(row, Violation):
            problems = [row]
        elif detected is None:
            guess = detect_format(row, allowed)
            if guess is None:
                problems = [_no_format(row_no, row, method, expected)]
            else:
                detected, detected_at = guess, row_no
                problems = check_row(row_no, row, detected)
        else:
            problems = _check_in_format(row_no, row, detected, detected_at, allowed)
        if required_columns and isinstance(row, dict):
            problems = problems + [
                Violation(row_no, column, "missing required field" if column not in row else "is null",
                          f"{reader} reads {column!r}: give every row a value for it")
                for column, reader in required_columns.items() if row.get(column) is None]
        if problems:
            bad += 1
            room = max_violations - len(violations)
            if len(problems) > room:
                truncated = True
            if room > 0:
                violations.extend(problems[:room])

    if total == 0:
        hint = f"add rows with {expected} for method {method!r}"
        violations.append(Violation(0, "", "dataset has no rows", hint))
    return ValidationResult(
        ok=total > 0 and bad == 0,
        format=detected or DatasetFormat.AUTO,
        total_rows=total,
        valid_rows=total - bad,
        bad_rows=bad,
        violations=violations,
        truncated=truncated,
    )


def _no_format(row_no: int, row: dict, method: str, expected: str) -> Violation:
    keys = ", ".join(sorted(map(str, row))[:8]) or "none"
    hint = f"{method} rows need {expected}"
    if method == "dpo" and detect_format(row, (DatasetFormat.UNPAIRED_PREFERENCE,)):
        hint += "; these are unpaired (KTO) rows: set dpo.loss to PREFERENCE_LOSS_KTO to train on them"
    return Violation(row_no, "", f"row matches no {method} format (fields found: {keys})", hint)


def _check_in_format(
    row_no: int, row: dict, fmt: DatasetFormat, detected_at: int, allowed: tuple[DatasetFormat, ...]
) -> list[Violation]:
    missing = [key for key in FORMAT_KEYS[fmt] if key not in row]
    if missing:
        other = detect_format(row, allowed)
        since = f" (detected from row {detected_at})" if detected_at else ""
        if other is not None:
            return [Violation(
                row_no, missing[0],
                f"row is in {other.value} format but the dataset is in {fmt.value} format{since}",
                f"put every row in one format: {expected_fields(fmt)}",
            )]
    return check_row(row_no, row, fmt)
