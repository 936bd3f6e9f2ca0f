"""Turn validated SFT rows into TRL's conversational prompt-completion examples.

    to_conversational_examples({"instruction": "Add", "input": "1+1", "output": "2"}, DatasetFormat.ALPACA)
    -> [{"prompt": [{"role": "user", "content": "Add\\n\\n1+1"}],
         "completion": [{"role": "assistant", "content": "2"}]}]

A conversation yields one example per assistant turn (prompt = every message before it), so multi-turn
data trains on every reply, not just the last. Rows must already have passed `validate_file`.
`load_for_training` builds the Arrow-backed, memory-mapped `datasets.Dataset` the SFT recipe trains on.

Preference rows (reward models, the DPO family) go through `to_preference_example` /
`load_preference_for_training` instead: TRL's prompt/chosen/rejected (or prompt/completion/label) columns,
conversational when the tokenizer has a chat template.
"""

from __future__ import annotations

from pathlib import Path

from services.common.errors import InvalidArgument, LmforgeError, Violation, invalid_field
from services.trainer.data.formats import SFT_FORMATS, DatasetFormat, FileFormat, detect_format, file_label
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
    TEXT -> only `text` (preference rows: `load_preference_for_training`). AUTO detects the format from the
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
    if fmt in PREFERENCE_FORMATS:
        raise invalid_field("format", f"{fmt.value} rows are loaded by load_preference_for_training",
                            "call load_preference_for_training (it needs to know whether to use a chat template)")

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
    raise invalid_field("format", f"cannot detect the dataset format of {file_label(path)}", "validate the file first")


# ---------------------------------------------------------------------------------------------------
# Preference data (reward models and the DPO family).

PREFERENCE_FORMATS = (DatasetFormat.PREFERENCE, DatasetFormat.UNPAIRED_PREFERENCE)
# The columns TRL's preference trainers read, per format.
PREFERENCE_COLUMNS: dict[DatasetFormat, tuple[str, ...]] = {
    DatasetFormat.PREFERENCE: ("prompt", "chosen", "rejected"),
    DatasetFormat.UNPAIRED_PREFERENCE: ("prompt", "completion", "label"),
}
_MAX_LOAD_VIOLATIONS = 1000


def to_preference_example(row: dict, fmt: DatasetFormat, conversational: bool, row_number: int = 0) -> dict:
    """One validated preference row in TRL's form: `prompt`/`chosen`/`rejected` (PREFERENCE) or
    `prompt`/`completion`/`label` (UNPAIRED_PREFERENCE).

    conversational=True (the tokenizer has a chat template): every field becomes a message list, so the
    model's own template renders it and string and list rows can mix; a string prompt is one user turn, a
    string response one assistant turn. A prompt list must end with a user turn and a response list holds
    only assistant messages. conversational=False: TRL's standard (plain text) form; a message list cannot
    be rendered without a template. `label` may be a bool or "true"/"false" (CSV cells).

    Raises InvalidArgument whose violations name the row and field (`prompt[2].role`, `chosen`, ...).
    """
    fmt = DatasetFormat(fmt)
    if fmt not in PREFERENCE_COLUMNS:
        raise _not_preference(fmt)
    violations: list[Violation] = []
    example: dict = {}
    for key in PREFERENCE_COLUMNS[fmt]:
        if key == "label":
            example[key] = _label(row.get(key), row_number, violations)
        elif key == "prompt":
            example[key] = _preference_turns(row.get(key), key, "user", conversational, row_number, violations)
        else:
            example[key] = _preference_turns(row.get(key), key, "assistant", conversational, row_number, violations)
    if violations:
        raise InvalidArgument(f"row {row_number}: cannot be used for preference training", violations)
    return example


def _not_preference(fmt: DatasetFormat) -> InvalidArgument:
    return invalid_field("format", f"format {fmt.value!r} is not a preference format",
                         "use preference (prompt, chosen, rejected) or unpaired_preference (prompt, completion, label)")


def _label(value, row_number: int, violations: list[Violation]) -> bool:
    if isinstance(value, bool):
        return value
    if isinstance(value, str) and value.strip().lower() in ("true", "false"):
        return value.strip().lower() == "true"
    violations.append(Violation(row_number, "label", f"expected true or false, got {value!r}",
                                "label is true when the completion is a desirable answer, false when it is not"))
    return False


def _preference_turns(value, key: str, role: str, conversational: bool, row_number: int,
                      violations: list[Violation]):
    """A prompt (role "user") or response (role "assistant") as a message list or a plain string."""
    if isinstance(value, str):
        return [_msg(role, value)] if conversational else value
    if not isinstance(value, list) or not value or not all(isinstance(m, dict) for m in value):
        violations.append(Violation(row_number, key, "expected a string or a non-empty list of messages",
                                    f"make {key!r} a string or a list of role/content messages"))
        return None
    if not conversational:
        violations.append(Violation(
            row_number, key, "is a list of messages, but the base model's tokenizer has no chat template to render it",
            f"write {key!r} as plain text, or train a chat model (one whose tokenizer defines a chat template)"))
        return None
    messages = [_msg(m.get("role"), m.get("content")) for m in value]
    last = len(messages) - 1
    if role == "user" and messages[last]["role"] != "user":
        violations.append(Violation(
            row_number, f"{key}[{last}].role",
            f"the prompt ends with a {messages[last]['role']!r} message; the responses must answer a user turn",
            "end the prompt with the user message that chosen/rejected (or completion) reply to"))
    if role == "assistant":
        for i, message in enumerate(messages):
            if message["role"] != "assistant":
                violations.append(Violation(
                    row_number, f"{key}[{i}].role",
                    f"a response holds only the assistant's reply, found a {message['role']!r} message",
                    "move earlier turns of the conversation into prompt"))
                break
    return messages


def _examples_reporting_every_bad_row(path: str, file_format: str, purpose: str, to_example):
    """Yield `to_example(row, row_number)` for each row; a row it refuses (InvalidArgument) or that cannot
    be read is counted, and after the last row one InvalidArgument lists them all (so every bad row is
    reported, not just the first)."""
    violations: list[Violation] = []
    bad = total = 0
    for row_number, row in iter_rows(path, FileFormat(file_format)):
        total += 1
        try:
            if isinstance(row, Violation):
                raise InvalidArgument(row.reason, [row])
            yield to_example(row, row_number)
        except InvalidArgument as exc:
            bad += 1
            violations.extend(exc.violations)
    if bad:
        raise InvalidArgument(f"{bad} of {total} rows of {file_label(path)} cannot be used {purpose}; "
                              "fix the rows listed", violations[:_MAX_LOAD_VIOLATIONS])


def _generate_preference_rows(path: str, file_format: str, fmt: str, conversational: bool, stamp: str):
    """Rows for `datasets.Dataset.from_generator` (see _examples_reporting_every_bad_row). `stamp`
    (size + mtime) only keys the datasets cache."""
    yield from _examples_reporting_every_bad_row(
        path, file_format, "for preference training",
        lambda row, number: to_preference_example(row, DatasetFormat(fmt), conversational, number))


def load_preference_for_training(
    path: str | Path,
    file_format: FileFormat,
    fmt: DatasetFormat = DatasetFormat.AUTO,
    *,
    conversational: bool,
    cache_dir: str | Path | None = None,
):
    """A preference `datasets.Dataset` in TRL's form, with fixed features, for reward/DPO-family trainers.

    PREFERENCE -> `prompt`, `chosen`, `rejected`; UNPAIRED_PREFERENCE -> `prompt`, `completion`, `label`
    (bool). With `conversational` every text column is a list of {role, content} messages, else a string
    (see `to_preference_example`). AUTO detects the format from the first row that has one. Rows are
    streamed (JSONL, CSV with JSON-list cells parsed, Parquet) into an Arrow file in `cache_dir`, so rows
    mixing strings and message lists load fine and the file is never held whole in memory.

    Raises InvalidArgument listing every row that cannot be used (a message list without a chat template,
    a prompt not ending with a user turn, ...); NotFound for a missing file.
    """
    import datasets
    from datasets.exceptions import DatasetGenerationError

    path = Path(path)
    file_format = FileFormat(file_format)
    fmt = DatasetFormat(fmt)
    if fmt is DatasetFormat.AUTO:
        fmt = _detect_preference_format(path, file_format)
    if fmt not in PREFERENCE_COLUMNS:
        raise _not_preference(fmt)
    message = datasets.List({"role": datasets.Value("string"), "content": datasets.Value("string")})
    text = message if conversational else datasets.Value("string")
    features = datasets.Features({key: datasets.Value("bool") if key == "label" else text
                                  for key in PREFERENCE_COLUMNS[fmt]})
    stat = path.stat()
    try:
        ds = datasets.Dataset.from_generator(
            _generate_preference_rows, features=features,
            cache_dir=str(cache_dir) if cache_dir is not None else None,
            gen_kwargs={"path": str(path), "file_format": file_format.value, "fmt": fmt.value,
                        "conversational": conversational, "stamp": f"{stat.st_size}-{stat.st_mtime_ns}"},
        )
    except DatasetGenerationError as exc:
        if isinstance(exc.__cause__, LmforgeError):
            raise exc.__cause__ from None
        raise
    if len(ds) == 0:
        raise invalid_field("dataset_id", f"{file_label(path)} has no rows", "add preference rows")
    return ds


def _detect_preference_format(path: Path, file_format: FileFormat) -> DatasetFormat:
    for _, row in iter_rows(path, file_format):
        if isinstance(row, dict):
            found = detect_format(row, PREFERENCE_FORMATS)
            if found is not None:
                return found
    raise invalid_field("format", f"{file_label(path)} has no preference rows (prompt + chosen + rejected, or prompt + "
                        "completion + label)", "validate the file for method dpo or reward first")


# ---------------------------------------------------------------------------------------------------
# Prompt-only rows (RL methods: GRPO, RLOO, RFT): `prompt` plus any extra columns the rewards read.


def _prompt_row_keys(path: Path, file_format: FileFormat) -> list[str]:
    """Every column of the file other than `prompt`, in first-seen order (rows may omit some)."""
    keys: dict[str, None] = {}
    for _, row in iter_rows(path, file_format):
        if isinstance(row, dict):
            keys.update((k, None) for k in row if k != "prompt")
    return list(keys)


def _extra_cell(value) -> str | None:
    """An extra column's cell as the string rewards read (numbers, e.g. an `answer` of 7, become "7";
    lists and objects become JSON; a missing cell stays None)."""
    if value is None or isinstance(value, str):
        return value
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, float) and value.is_integer():
        return str(int(value))
    if isinstance(value, (int, float)):
        return str(value)
    import json

    return json.dumps(value, ensure_ascii=False)


def _generate_prompt_rows(path: str, file_format: str, conversational: bool, extra_json: str, stamp: str):
    """Rows for `datasets.Dataset.from_generator` (see _examples_reporting_every_bad_row).
    `extra_json` is the JSON list of extra columns (a list in gen_kwargs would be split into shards)."""
    import json

    extra = json.loads(extra_json)

    def to_example(row: dict, row_number: int) -> dict:
        row_violations: list[Violation] = []
        prompt = _preference_turns(row.get("prompt"), "prompt", "user", conversational, row_number, row_violations)
        if row_violations:
            raise InvalidArgument(f"row {row_number}: unusable prompt", row_violations)
        return {"prompt": prompt, **{key: _extra_cell(row.get(key)) for key in extra}}

    yield from _examples_reporting_every_bad_row(path, file_format, "as prompts", to_example)


def load_prompt_dataset(path: str | Path, file_format: FileFormat, *, conversational: bool,
                        cache_dir: str | Path | None = None):
    """A prompt-only `datasets.Dataset` for the RL trainers (GRPO, RLOO, RFT): `prompt` plus every other
    column of the file.

    With `conversational` (the tokenizer has a chat template) a string prompt becomes one user turn
    ([{"role": "user", "content": ...}]) and message-list prompts are kept (they must end with a user
    turn); without, prompts must be strings. Extra columns (e.g. `answer`) are kept for the reward
    functions, as strings (numbers such as 7 become "7", lists/objects JSON; a cell a row omits is None).
    Rows are streamed into an Arrow file in `cache_dir`. Raises InvalidArgument listing every unusable
    row; NotFound for a missing file.
    """
    import json

    import datasets
    from datasets.exceptions import DatasetGenerationError

    path = Path(path)
    file_format = FileFormat(file_format)
    extra = _prompt_row_keys(path, file_format)
    message = datasets.List({"role": datasets.Value("string"), "content": datasets.Value("string")})
    features = datasets.Features({"prompt": message if conversational else datasets.Value("string"),
                                  **{key: datasets.Value("string") for key in extra}})
    stat = path.stat()
    try:
        ds = datasets.Dataset.from_generator(
            _generate_prompt_rows, features=features,
            cache_dir=str(cache_dir) if cache_dir is not None else None,
            gen_kwargs={"path": str(path), "file_format": file_format.value, "conversational": conversational,
                        "extra_json": json.dumps(extra), "stamp": f"{stat.st_size}-{stat.st_mtime_ns}"},
        )
    except DatasetGenerationError as exc:
        if isinstance(exc.__cause__, LmforgeError):
            raise exc.__cause__ from None
        raise
    if len(ds) == 0:
        raise invalid_field("dataset_id", f"{file_label(path)} has no rows", "add rows with a prompt")
    return ds
