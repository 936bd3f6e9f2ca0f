"""Turn validated SFT rows into TRL's conversational prompt-completion examples.

    to_conversational_examples({"instruction": "Add", "input": "1+1", "output": "2"}, DatasetFormat.ALPACA)
    -> [{"prompt": [{"role": "user", "content": "Add\\n\\n1+1"}],
         "completion": [{"role": "assistant", "content": "2"}]}]

A conversation yields one example per assistant turn (prompt = every message before it), so multi-turn
data trains on every reply, not just the last. Rows must already have passed `validate_file`.
`load_for_training` builds the Arrow-backed, memory-mapped `datasets.Dataset` the SFT recipe trains on.
"""

from __future__ import annotations

from pathlib import Path

from services.common.errors import invalid_field
from services.trainer.data.formats import SFT_FORMATS, DatasetFormat, FileFormat, detect_format
from services.trainer.data.reader import iter_rows, parse_json_cell
from services.trainer.data.validation import SHAREGPT_ROLES

_BUILDERS = {FileFormat.JSONL: "json", FileFormat.CSV: "csv", FileFormat.PARQUET: "parquet"}
_MAP_BATCH_ROWS = 256


def _msg(role: str, content: str) -> dict:
    return {"role": role, "content": content}


def to_messages(row: dict, fmt: DatasetFormat, default_system_prompt: str = "") -> list[dict]:
    """One valid SFT row as a list of {role, content} chat messages."""
    fmt = DatasetFormat(fmt)
    if fmt is DatasetFormat.MESSAGES:
        messages = [_msg(m["role"], m["content"]) for m in row["messages"]]
    elif fmt is DatasetFormat.SHAREGPT:
        messages = [_msg(SHAREGPT_ROLES[m["from"]], m["value"]) for m in row["conversations"]]
        system = row.get("system")
        if system and (not messages or messages[0]["role"] != "system"):
            messages.insert(0, _msg("system", system))
    elif fmt is DatasetFormat.ALPACA:
        user = row["instruction"]
        if row.get("input"):
            user = f"{user}\n\n{row['input']}"
        messages = [_msg("user", user), _msg("assistant", row["output"])]
        if row.get("system"):
            messages.insert(0, _msg("system", row["system"]))
    elif fmt is DatasetFormat.PROMPT_COMPLETION:
        messages = [_msg("user", row["prompt"]), _msg("assistant", row["completion"])]
    else:
        raise invalid_field(
            "format",
            f"format {fmt.value!r} is not a conversational SFT format",
            f"use one of {', '.join(f.value for f in SFT_FORMATS)}",
        )
    if default_system_prompt and (not messages or messages[0]["role"] != "system"):
        messages.insert(0, _msg("system", default_system_prompt))
    return messages


def to_conversational_examples(row: dict, fmt: DatasetFormat, default_system_prompt: str = "") -> list[dict]:
    """One valid SFT row -> [{"prompt": [messages...], "completion": [assistant message]}], one per
    assistant turn. Raises InvalidArgument (field "format") for a non-SFT format."""
    messages = to_messages(row, fmt, default_system_prompt)
    return [
        {"prompt": messages[:i], "completion": [messages[i]]}
        for i, message in enumerate(messages)
        if message["role"] == "assistant" and i > 0
    ]


def load_for_training(
    path: str | Path,
    file_format: FileFormat,
    fmt: DatasetFormat,
    default_system_prompt: str = "",
    cache_dir: str | Path | None = None,
):
    """A `datasets.Dataset` for training, Arrow-backed and memory-mapped (never loaded whole into Python).

    SFT formats -> only `prompt` and `completion` columns (conversational, one row per assistant turn);
    TEXT -> only `text`; PREFERENCE -> `prompt`, `chosen`, `rejected`. AUTO detects the format from the
    first row. Validate the file first; raises InvalidArgument if the format cannot be used here.
    """
    import datasets

    path = Path(path)
    file_format = FileFormat(file_format)
    fmt = DatasetFormat(fmt)
    if fmt is DatasetFormat.AUTO:
        fmt = _detect_file_format(path, file_format)

    kwargs: dict = {}
    if file_format is FileFormat.CSV:
        # pandas would turn "42" into an int and empty cells into NaN; keep every cell as written.
        columns = _csv_header(path)
        kwargs = {
            "features": datasets.Features({name: datasets.Value("string") for name in columns}),
            "keep_default_na": False,
            "encoding": "utf-8-sig",
        }
    ds = datasets.load_dataset(
        _BUILDERS[file_format],
        data_files=str(path),
        split="train",
        cache_dir=str(cache_dir) if cache_dir is not None else None,
        **kwargs,
    )

    if fmt is DatasetFormat.TEXT:
        return ds.select_columns(["text"])
    if fmt is DatasetFormat.PREFERENCE:
        # CSV preference cells stay strings (a message list would stay its JSON text): use JSONL/Parquet.
        return ds.select_columns(["prompt", "chosen", "rejected"])

    columns = list(ds.column_names)
    parse_cells = file_format is FileFormat.CSV

    def explode(batch: dict) -> dict:
        prompts: list = []
        completions: list = []
        n = len(batch[columns[0]]) if columns else 0
        for i in range(n):
            # Arrow fills fields a row lacks with None; optional fields are treated as absent.
            row = {k: batch[k][i] for k in columns if batch[k][i] is not None}
            if parse_cells:
                row = {k: parse_json_cell(v) for k, v in row.items()}
            for example in to_conversational_examples(row, fmt, default_system_prompt):
                prompts.append(example["prompt"])
                completions.append(example["completion"])
        return {"prompt": prompts, "completion": completions}

    features = datasets.Features({
        "prompt": datasets.List({"role": datasets.Value("string"), "content": datasets.Value("string")}),
        "completion": datasets.List({"role": datasets.Value("string"), "content": datasets.Value("string")}),
    })
    return ds.map(
        explode,
        batched=True,
        batch_size=_MAP_BATCH_ROWS,
        remove_columns=columns,
        features=features,
        desc="Formatting conversations",
    )


def _csv_header(path: Path) -> list[str]:
    import csv

    with path.open(newline="", encoding="utf-8-sig") as f:
        return next(csv.reader(f), [])


def _detect_file_format(path: Path, file_format: FileFormat) -> DatasetFormat:
    for _, row in iter_rows(path, file_format):
        if isinstance(row, dict):
            found = detect_format(row)
            if found is not None:
                return found
    raise invalid_field("format", f"cannot detect the dataset format of {str(path)!r}", "validate the file first")
