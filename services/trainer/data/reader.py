"""Stream the rows of a JSONL, CSV or Parquet file without loading it whole.

    for row_number, row in iter_rows("train.jsonl", FileFormat.JSONL):
        ...  # row is a dict, or a Violation when the row itself cannot be read

Row numbers are 1-based: the physical line for JSONL (blank lines are skipped but still counted, so the
number matches what an editor shows), the data row (after the header) for CSV, the row for Parquet.
A row that cannot be read becomes a Violation and reading goes on; only a missing file or one that is
not Parquet at all raises (NotFound, InvalidArgument).
"""

from __future__ import annotations

import csv
import json
import sys
from collections.abc import Iterator
from pathlib import Path

from services.common.errors import NotFound, Violation, invalid_field, without_path
from services.trainer.data.formats import FileFormat, file_label

_BOM = b"\xef\xbb\xbf"
_PARQUET_BATCH_ROWS = 1024

# Long chat transcripts in one CSV cell exceed the csv module's 128 KiB default field limit.
csv.field_size_limit(min(sys.maxsize, 2**31 - 1))

Row = tuple[int, "dict | Violation"]


def iter_rows(path: str | Path, file_format: FileFormat) -> Iterator[Row]:
    """Yield (row_number, row_dict_or_Violation) for every row of `path`, streaming.

    Raises NotFound if `path` is not a file, InvalidArgument if it cannot be opened as `file_format`.
    """
    path = Path(path)
    if not path.is_file():
        raise NotFound(f"{file_label(path)}: its file does not exist")
    file_format = FileFormat(file_format)
    if file_format is FileFormat.JSONL:
        return _iter_jsonl(path)
    if file_format is FileFormat.CSV:
        return _iter_csv(path)
    return _iter_parquet(path)


def _iter_jsonl(path: Path) -> Iterator[Row]:
    # Binary lines so one undecodable line costs only that line, not the rest of the file.
    with path.open("rb") as f:
        for line_no, raw in enumerate(f, start=1):
            if line_no == 1 and raw.startswith(_BOM):
                raw = raw[len(_BOM):]
            try:
                line = raw.decode("utf-8")
            except UnicodeDecodeError as e:
                yield line_no, Violation(
                    line_no, "", f"invalid UTF-8 at byte {e.start} of the line", "save the file as UTF-8"
                )
                continue
            if not line.strip():
                continue
            line = line.rstrip("\r\n")
            try:
                value = json.loads(line)
            except json.JSONDecodeError as e:
                yield line_no, Violation(
                    line_no, "", f"invalid JSON: {e.msg} at column {e.pos + 1}",
                    "each line must be one JSON object",
                )
                continue
            if not isinstance(value, dict):
                yield line_no, Violation(
                    line_no,
                    "",
                    f"row is not a JSON object (got {type_name(value)})",
                    "each line must be one JSON object, e.g. {\"messages\": [...]}",
                )
                continue
            yield line_no, value


def parse_json_cell(value):
    """A CSV cell holding a JSON list or object (e.g. a `messages` column) as that value; else unchanged."""
    if isinstance(value, str):
        text = value.strip()
        if text[:1] in ("[", "{") and text[-1:] in ("]", "}"):
            try:
                parsed = json.loads(text)
            except json.JSONDecodeError:
                return value
            if isinstance(parsed, (list, dict)):
                return parsed
    return value


class _Utf8Lines:
    """Decodes binary lines for csv.reader, remembering whether any line since the last check was bad."""

    def __init__(self, f):
        self._f = f
        self._first = True
        self.bad = False

    def __iter__(self):
        return self

    def __next__(self) -> str:
        raw = next(self._f)
        if self._first:
            self._first = False
            if raw.startswith(_BOM):
                raw = raw[len(_BOM):]
        try:
            return raw.decode("utf-8")
        except UnicodeDecodeError:
            self.bad = True
            return raw.decode("utf-8", errors="replace")


def _iter_csv(path: Path) -> Iterator[Row]:
    # Binary lines split on b"\n" only, keeping "\r\n" and newlines inside quotes for csv to handle,
    # which is what open(newline="", encoding="utf-8-sig") gives, but with per-row UTF-8 errors.
    with path.open("rb") as f:
        lines = _Utf8Lines(f)
        reader = csv.DictReader(lines)
        row_no = 0
        while True:
            try:
                record = next(reader)
            except StopIteration:
                return
            except csv.Error as e:
                row_no += 1
                yield row_no, Violation(
                    row_no, "", f"invalid CSV: {e}", "quote cells that contain commas, quotes or newlines"
                )
                continue
            row_no += 1
            if lines.bad:
                lines.bad = False
                yield row_no, Violation(row_no, "", "invalid UTF-8 in this row", "save the file as UTF-8")
                continue
            if None in record:
                extra = record[None]
                yield row_no, Violation(
                    row_no,
                    "",
                    f"row has {len(extra)} more cell(s) than the header ({len(reader.fieldnames or [])} columns)",
                    "quote cells that contain commas, or add the missing column names to the header",
                )
                continue
            # Short rows leave trailing columns as None: treat those fields as absent.
            yield row_no, {k: parse_json_cell(v) for k, v in record.items() if v is not None}


def _iter_parquet(path: Path) -> Iterator[Row]:
    import pyarrow as pa
    import pyarrow.parquet as pq

    try:
        pf = pq.ParquetFile(path)
    except (pa.ArrowException, OSError) as e:
        raise invalid_field(
            "path",
            f"{file_label(path)} is not a readable Parquet file: {without_path(str(e), path, file_label(path))}",
            "write it with pyarrow or pandas .to_parquet()",
        ) from None
    row_no = 0
    try:
        for batch in pf.iter_batches(batch_size=_PARQUET_BATCH_ROWS):
            for record in batch.to_pylist():
                row_no += 1
                yield row_no, record
    except (pa.ArrowException, OSError) as e:
        yield row_no + 1, Violation(
            row_no + 1, "", f"unreadable Parquet data from this row on: {without_path(str(e), path, file_label(path))}", "rewrite the file"
        )


def type_name(value) -> str:
    """JSON name of a value's type, for messages like "expected a string, got number"."""
    if value is None:
        return "null"
    if isinstance(value, bool):
        return "boolean"
    if isinstance(value, (int, float)):
        return "number"
    if isinstance(value, str):
        return "string"
    if isinstance(value, (list, tuple)):
        return "list"
    if isinstance(value, dict):
        return "object"
    return type(value).__name__


__all__ = ["iter_rows", "parse_json_cell", "type_name"]
