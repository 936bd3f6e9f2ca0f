"""Conversion of validated rows to TRL conversational prompt-completion examples (services/trainer/data)."""

from __future__ import annotations

import csv
import json
from pathlib import Path

import pytest

from services.common.errors import InvalidArgument
from services.trainer.data import (
    DatasetFormat,
    FileFormat,
    file_format_from_name,
    iter_rows,
    load_for_training,
    to_conversational_examples,
    validate_file,
)

DATA = Path(__file__).resolve().parents[2] / "examples" / "data"

U = lambda text: {"role": "user", "content": text}  # noqa: E731
A = lambda text: {"role": "assistant", "content": text}  # noqa: E731
S = lambda text: {"role": "system", "content": text}  # noqa: E731


def test_multi_turn_explodes_into_one_example_per_assistant_turn():
    row = {"messages": [S("sys"), U("q1"), A("a1"), U("q2"), A("a2"), U("q3"), A("a3")]}
    examples = to_conversational_examples(row, DatasetFormat.MESSAGES)
    assert examples == [
        {"prompt": [S("sys"), U("q1")], "completion": [A("a1")]},
        {"prompt": [S("sys"), U("q1"), A("a1"), U("q2")], "completion": [A("a2")]},
        {"prompt": [S("sys"), U("q1"), A("a1"), U("q2"), A("a2"), U("q3")], "completion": [A("a3")]},
    ]


def test_messages_keep_only_role_and_content_and_default_system_prompt():
    row = {"messages": [{"role": "user", "content": "q", "name": "bob"}, A("a")]}
    assert to_conversational_examples(row, DatasetFormat.MESSAGES) == [{"prompt": [U("q")], "completion": [A("a")]}]
    assert to_conversational_examples(row, DatasetFormat.MESSAGES, default_system_prompt="be kind") == [
        {"prompt": [S("be kind"), U("q")], "completion": [A("a")]}
    ]
    # An existing system message wins over the default.
    row = {"messages": [S("mine"), U("q"), A("a")]}
    assert to_conversational_examples(row, "messages", default_system_prompt="default")[0]["prompt"][0] == S("mine")


def test_alpaca_input_is_joined_and_system_used():
    row = {"instruction": "翻译成英文", "input": "你好", "output": "Hello", "system": "你是翻译"}
    assert to_conversational_examples(row, DatasetFormat.ALPACA) == [
        {"prompt": [S("你是翻译"), U("翻译成英文\n\n你好")], "completion": [A("Hello")]}
    ]
    row = {"instruction": "Say hi", "input": "", "output": "hi"}
    assert to_conversational_examples(row, DatasetFormat.ALPACA, "sys") == [
        {"prompt": [S("sys"), U("Say hi")], "completion": [A("hi")]}
    ]


def test_sharegpt_roles_are_mapped_and_system_prepended():
    row = {
        "system": "be brief",
        "conversations": [
            {"from": "human", "value": "q1"}, {"from": "gpt", "value": "a1"},
            {"from": "user", "value": "q2"}, {"from": "assistant", "value": "a2"},
        ],
    }
    examples = to_conversational_examples(row, DatasetFormat.SHAREGPT, default_system_prompt="ignored")
    assert examples == [
        {"prompt": [S("be brief"), U("q1")], "completion": [A("a1")]},
        {"prompt": [S("be brief"), U("q1"), A("a1"), U("q2")], "completion": [A("a2")]},
    ]


def test_prompt_completion_strings():
    assert to_conversational_examples({"prompt": "2+2?", "completion": "4"}, DatasetFormat.PROMPT_COMPLETION) == [
        {"prompt": [U("2+2?")], "completion": [A("4")]}
    ]


def test_non_sft_format_is_rejected():
    with pytest.raises(InvalidArgument):
        to_conversational_examples({"text": "x"}, DatasetFormat.TEXT)


@pytest.mark.parametrize("name", ["sft_demo.jsonl", "sft_alpaca.jsonl", "sft_sharegpt.jsonl",
                                  "sft_prompt_completion.csv", "sft_messages.parquet"])
def test_every_valid_example_row_converts(name):
    ff = file_format_from_name(name)
    fmt = validate_file(DATA / name, ff).format
    for _, row in iter_rows(DATA / name, ff):
        examples = to_conversational_examples(row, fmt)
        assert examples
        for ex in examples:
            assert ex["prompt"][-1]["role"] == "user" and ex["completion"][0]["role"] == "assistant"


# --- load_for_training -----------------------------------------------------------------------------


def expected_examples(path: Path, fmt: DatasetFormat, system: str = "") -> list[dict]:
    ff = file_format_from_name(path.name)
    return [ex for _, row in iter_rows(path, ff) for ex in to_conversational_examples(row, fmt, system)]


@pytest.mark.parametrize(
    "name,fmt",
    [
        ("sft_demo.jsonl", DatasetFormat.MESSAGES),
        ("sft_alpaca.jsonl", DatasetFormat.ALPACA),
        ("sft_sharegpt.jsonl", DatasetFormat.SHAREGPT),
        ("sft_prompt_completion.csv", DatasetFormat.PROMPT_COMPLETION),
        ("sft_messages.parquet", DatasetFormat.MESSAGES),
    ],
)
def test_load_for_training_matches_row_conversion(tmp_path, name, fmt):
    ds = load_for_training(DATA / name, file_format_from_name(name), fmt, default_system_prompt="SYS",
                           cache_dir=tmp_path / "cache")
    assert ds.column_names == ["prompt", "completion"]
    assert ds.to_list() == expected_examples(DATA / name, fmt, "SYS")


def test_load_for_training_demo_has_every_turn_and_chinese(tmp_path):
    ds = load_for_training(DATA / "sft_demo.jsonl", FileFormat.JSONL, DatasetFormat.AUTO, cache_dir=tmp_path)
    rows = [json.loads(line) for line in (DATA / "sft_demo.jsonl").read_text(encoding="utf-8").splitlines()]
    turns = sum(m["role"] == "assistant" for r in rows for m in r["messages"])
    assert len(ds) == turns > len(rows)
    assert any("北京" in ex["completion"][0]["content"] for ex in ds)


def test_load_for_training_csv_with_json_message_cells(tmp_path):
    p = tmp_path / "m.csv"
    conversations = [[U("你好, 世界"), A("Forge: 你好")], [U("42"), A("43"), U("q"), A("a")]]
    with p.open("w", encoding="utf-8", newline="") as f:
        w = csv.writer(f)
        w.writerow(["messages"])
        for c in conversations:
            w.writerow([json.dumps(c, ensure_ascii=False)])
    assert validate_file(p, FileFormat.CSV).ok
    ds = load_for_training(p, FileFormat.CSV, DatasetFormat.MESSAGES, cache_dir=tmp_path / "cache")
    assert ds.to_list() == [
        {"prompt": [U("你好, 世界")], "completion": [A("Forge: 你好")]},
        {"prompt": [U("42")], "completion": [A("43")]},
        {"prompt": [U("42"), A("43"), U("q")], "completion": [A("a")]},
    ]


def test_load_for_training_csv_keeps_numeric_looking_cells_as_text(tmp_path):
    p = tmp_path / "pc.csv"
    p.write_text("prompt,completion\n2+2,4\n007,NA\n", encoding="utf-8")
    assert validate_file(p, FileFormat.CSV).ok
    ds = load_for_training(p, FileFormat.CSV, DatasetFormat.PROMPT_COMPLETION, cache_dir=tmp_path / "cache")
    assert [ex["completion"][0]["content"] for ex in ds] == ["4", "NA"]
    assert ds[1]["prompt"] == [U("007")]


def test_load_for_training_text(tmp_path):
    p = tmp_path / "t.jsonl"
    p.write_text("".join(json.dumps({"text": t, "id": i}, ensure_ascii=False) + "\n"
                         for i, t in enumerate(["第一段文字。", "second"])), encoding="utf-8")
    ds = load_for_training(p, FileFormat.JSONL, DatasetFormat.TEXT, cache_dir=tmp_path / "cache")
    assert ds.column_names == ["text"] and ds["text"] == ["第一段文字。", "second"]
