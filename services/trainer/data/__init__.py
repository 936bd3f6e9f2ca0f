"""Dataset formats, streaming validation and conversion for training (DESIGN.md §4).

    from services.trainer.data import FileFormat, file_format_from_name, validate_file, load_for_training
    ff = file_format_from_name("train.jsonl")
    result = validate_file("train.jsonl", ff, SFT_FORMATS)        # every bad row, in bounded memory
    ds = load_for_training("train.jsonl", ff, result.format)      # prompt/completion conversations
    pref = load_preference_for_training("pairs.jsonl", ff, conversational=True)  # prompt/chosen/rejected
    rl = load_prompt_dataset("prompts.jsonl", ff, conversational=True)  # prompt + extra columns (RL)

Pure Python (no torch); `datasets` is imported only by the `load_*_for_training` functions.
"""

from services.trainer.data.formats import (
    SFT_FORMATS,
    DatasetFormat,
    FileFormat,
    detect_format,
    file_format_from_name,
)
from services.trainer.data.normalize import (
    PREFERENCE_COLUMNS,
    load_for_training,
    load_preference_for_training,
    load_prompt_dataset,
    to_conversational_examples,
    to_messages,
    to_preference_example,
)
from services.trainer.data.reader import iter_rows
from services.trainer.data.validation import ValidationResult, check_row, validate_file

__all__ = [
    "PREFERENCE_COLUMNS",
    "SFT_FORMATS",
    "DatasetFormat",
    "FileFormat",
    "ValidationResult",
    "check_row",
    "detect_format",
    "file_format_from_name",
    "iter_rows",
    "load_for_training",
    "load_preference_for_training",
    "load_prompt_dataset",
    "to_conversational_examples",
    "to_messages",
    "to_preference_example",
    "validate_file",
]
