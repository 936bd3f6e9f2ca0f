"""Dataset formats, streaming validation and conversion for training (DESIGN.md §4).

    from services.trainer.data import FileFormat, file_format_from_name, validate_file, load_for_training
    ff = file_format_from_name("train.jsonl")
    result = validate_file("train.jsonl", ff, method="sft")       # every bad row, in bounded memory
    ds = load_for_training("train.jsonl", ff, result.format)      # prompt/completion conversations

Pure Python (no torch); `datasets` is imported only by `load_for_training`.
"""

from services.trainer.data.formats import (
    METHOD_FORMATS,
    DatasetFormat,
    FileFormat,
    detect_format,
    file_format_from_name,
    formats_for_method,
)
from services.trainer.data.normalize import load_for_training, to_conversational_examples, to_messages
from services.trainer.data.reader import iter_rows
from services.trainer.data.validation import ValidationResult, check_row, validate_file

__all__ = [
    "METHOD_FORMATS",
    "DatasetFormat",
    "FileFormat",
    "ValidationResult",
    "check_row",
    "detect_format",
    "file_format_from_name",
    "formats_for_method",
    "iter_rows",
    "load_for_training",
    "to_conversational_examples",
    "to_messages",
    "validate_file",
]
