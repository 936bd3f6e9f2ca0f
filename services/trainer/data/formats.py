"""Dataset and file formats, and which dataset formats each training method accepts (DESIGN.md §4).

Names follow TRL, LLaMA-Factory and verl: `messages`, alpaca, sharegpt, `prompt`/`completion`, `text`,
and `prompt`/`chosen`/`rejected` for preference data. Pure Python; raises InvalidArgument only.
"""

from __future__ import annotations

from enum import Enum
from pathlib import PurePath

from services.common.errors import invalid_field


# An uploaded dataset's id (and the name of its folder in the registry): "ds-" + 20 hex digits of its sha256.
DATASET_ID_PREFIX = "ds-"


def file_label(path: str | PurePath) -> str:
    """How a message names a data file: `dataset ds-...` for an uploaded dataset (stored in its id's folder),
    else the file's name in quotes; never a server path."""
    path = PurePath(path)
    parent = path.parent.name
    return f"dataset {parent}" if parent.startswith(DATASET_ID_PREFIX) else repr(path.name)


class DatasetFormat(str, Enum):
    AUTO = "auto"
    MESSAGES = "messages"
    ALPACA = "alpaca"
    SHAREGPT = "sharegpt"
    PROMPT_COMPLETION = "prompt_completion"
    TEXT = "text"
    PREFERENCE = "preference"
    UNPAIRED_PREFERENCE = "unpaired_preference"  # KTO: prompt, completion, label (true = desirable)
    PROMPT_ONLY = "prompt_only"  # RL and distillation: prompt + any extra columns (e.g. answer)


class FileFormat(str, Enum):
    JSONL = "jsonl"
    PARQUET = "parquet"
    CSV = "csv"


# ".json" is read as JSON lines, as `datasets.load_dataset("json")` does for one object per line.
_EXTENSIONS: dict[str, FileFormat] = {
    ".jsonl": FileFormat.JSONL,
    ".json": FileFormat.JSONL,
    ".parquet": FileFormat.PARQUET,
    ".csv": FileFormat.CSV,
}

SFT_FORMATS: tuple[DatasetFormat, ...] = (
    DatasetFormat.MESSAGES,
    DatasetFormat.ALPACA,
    DatasetFormat.SHAREGPT,
    DatasetFormat.PROMPT_COMPLETION,
)

# Which formats each method accepts is part of the method's definition (services/trainer/methods/).
EVALUATE_FORMATS: tuple[DatasetFormat, ...] = (DatasetFormat.TEXT, *SFT_FORMATS)

# The keys that identify each format, in detection order: the most specific first, so a preference
# row (prompt+chosen+rejected) is not taken for something else and `messages` wins over a stray `text`.
FORMAT_KEYS: dict[DatasetFormat, tuple[str, ...]] = {
    DatasetFormat.MESSAGES: ("messages",),
    DatasetFormat.SHAREGPT: ("conversations",),
    DatasetFormat.ALPACA: ("instruction", "output"),
    DatasetFormat.PREFERENCE: ("prompt", "chosen", "rejected"),
    DatasetFormat.UNPAIRED_PREFERENCE: ("prompt", "completion", "label"),
    DatasetFormat.PROMPT_COMPLETION: ("prompt", "completion"),
    DatasetFormat.TEXT: ("text",),
    DatasetFormat.PROMPT_ONLY: ("prompt",),  # last: every prompt/... format also has a prompt
}


def file_format_from_name(name: str) -> FileFormat:
    """The file format from a file name's extension (.jsonl, .json as JSON lines, .parquet, .csv).

    Raises InvalidArgument (field "name") for any other extension.
    """
    suffix = PurePath(str(name)).suffix.lower()
    try:
        return _EXTENSIONS[suffix]
    except KeyError:
        supported = ", ".join(_EXTENSIONS)
        raise invalid_field(
            "name",
            f"unsupported file extension {suffix or '(none)'!r} in {str(name)!r}",
            f"use one of {supported} (.json is read as JSON lines)",
        ) from None


def expected_fields(fmt: DatasetFormat) -> str:
    """Human-readable field names of one format, e.g. "instruction + output"."""
    return " + ".join(FORMAT_KEYS[fmt])


def detect_format(row: dict, allowed=None) -> DatasetFormat | None:
    """The first format in `allowed` (default: all) whose identifying keys are all in `row`, else None."""
    if not isinstance(row, dict):
        return None
    candidates = tuple(allowed) if allowed is not None else tuple(FORMAT_KEYS)
    for fmt in FORMAT_KEYS:
        if fmt in candidates and all(key in row for key in FORMAT_KEYS[fmt]):
            return fmt
    return None
