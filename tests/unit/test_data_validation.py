"""Dataset formats, streaming reader and validation (services/trainer/data). Fast and pure."""

from __future__ import annotations

import csv
import json
import subprocess
import sys
import tracemalloc
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from services.common.errors import InvalidArgument, NotFound, Violation
from services.trainer import methods
from services.trainer.data import (
    DatasetFormat,
    FileFormat,
    detect_format,
    file_format_from_name,
    iter_rows,
    validate_file,
)
from services.trainer.methods.dpo import DpoSpec


def formats_for(method: str):
    """The formats a method accepts; "kto" is the dpo method with the KTO loss."""
    if method == "kto":
        return methods.get("dpo").formats(DpoSpec(loss="kto"))
    return tuple(methods.formats_for(method))

ROOT = Path(__file__).resolve().parents[2]
DATA = ROOT / "examples" / "data"

U = lambda text: {"role": "user", "content": text}  # noqa: E731
A = lambda text: {"role": "assistant", "content": text}  # noqa: E731
S = lambda text: {"role": "system", "content": text}  # noqa: E731


def write_jsonl(path: Path, rows: list) -> Path:
    with path.open("w", encoding="utf-8") as f:
        for row in rows:
            f.write((row if isinstance(row, str) else json.dumps(row, ensure_ascii=False)) + "\n")
    return path


def fields(result) -> dict[int, list[str]]:
    out: dict[int, list[str]] = {}
    for v in result.violations:
        out.setdefault(v.row, []).append(v.field)
    return out


# --- formats ---------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "name,expected",
    [("a.jsonl", FileFormat.JSONL), ("a.JSON", FileFormat.JSONL), ("dir/x.parquet", FileFormat.PARQUET), ("x.csv", FileFormat.CSV)],
)
def test_file_format_from_name(name, expected):
    assert file_format_from_name(name) is expected


def test_file_format_from_name_rejects_unknown_extension():
    with pytest.raises(InvalidArgument) as e:
        file_format_from_name("train.xlsx")
    (v,) = e.value.violations
    assert v.field == "name" and ".jsonl" in v.hint and ".parquet" in v.hint and ".csv" in v.hint


def test_method_formats_and_unknown_method():
    assert formats_for("sft") == (
        DatasetFormat.MESSAGES, DatasetFormat.ALPACA, DatasetFormat.SHAREGPT, DatasetFormat.PROMPT_COMPLETION
    )
    assert formats_for("pretrain") == formats_for("continued_pretrain") == (DatasetFormat.TEXT,)
    assert formats_for("dpo") == formats_for("reward") == (DatasetFormat.PREFERENCE,)
    assert formats_for("grpo") == formats_for("distill") == (DatasetFormat.PROMPT_ONLY,)
    with pytest.raises(InvalidArgument) as e:
        methods.formats_for("magic")
    assert e.value.violations[0].field == "method"
    with pytest.raises(InvalidArgument) as e:
        validate_file(DATA / "sft_demo.jsonl", FileFormat.JSONL, formats_for("dpo"), DatasetFormat.MESSAGES,
                      method="dpo")
    assert e.value.violations[0].field == "format" and "preference" in e.value.violations[0].hint


def test_detect_format():
    sft = formats_for("sft")
    assert detect_format({"messages": []}, sft) is DatasetFormat.MESSAGES
    assert detect_format({"conversations": []}, sft) is DatasetFormat.SHAREGPT
    assert detect_format({"instruction": "a", "output": "b"}, sft) is DatasetFormat.ALPACA
    assert detect_format({"prompt": "a", "completion": "b"}, sft) is DatasetFormat.PROMPT_COMPLETION
    assert detect_format({"prompt": "a", "chosen": "b", "rejected": "c"}, formats_for("dpo")) is DatasetFormat.PREFERENCE
    assert detect_format({"text": "a"}, formats_for("pretrain")) is DatasetFormat.TEXT
    assert detect_format({"text": "a"}, sft) is None
    assert detect_format({"instruction": "a"}, sft) is None


def test_module_does_not_import_torch_or_datasets():
    code = (
        "import sys; import services.trainer.data as d; "
        "assert 'torch' not in sys.modules and 'datasets' not in sys.modules, sorted(sys.modules)"
    )
    subprocess.run([sys.executable, "-c", code], cwd=ROOT, check=True)


# --- reader ----------------------------------------------------------------------------------------


def test_jsonl_reader_row_numbers_blank_lines_and_bad_bytes(tmp_path):
    p = tmp_path / "x.jsonl"
    p.write_bytes(
        b'\xef\xbb\xbf{"text": "a"}\n'  # BOM on line 1
        b"\n"
        b'{"text": "\xe4\xb8\xad\xe6\x96\x87"}\n'  # 中文 on line 3
        b'{"text": "\xff\xfe"}\n'  # not UTF-8
        b"{not json\n"
        b"42\n"
        b'{"text": "end"}'  # no trailing newline
    )
    rows = list(iter_rows(p, FileFormat.JSONL))
    assert [n for n, _ in rows] == [1, 3, 4, 5, 6, 7]
    assert rows[0][1] == {"text": "a"} and rows[1][1] == {"text": "中文"} and rows[5][1] == {"text": "end"}
    assert isinstance(rows[2][1], Violation) and "UTF-8" in rows[2][1].reason
    assert rows[3][1].reason.startswith("invalid JSON: ") and rows[3][1].hint == "each line must be one JSON object"
    assert "not a JSON object" in rows[4][1].reason


def test_csv_reader_parses_json_cells_quotes_and_chinese(tmp_path):
    p = tmp_path / "x.csv"
    msgs = [U("你好, 世界"), A("Forge: 好")]
    with p.open("w", encoding="utf-8-sig", newline="") as f:
        w = csv.writer(f)
        w.writerow(["messages", "note"])
        w.writerow([json.dumps(msgs, ensure_ascii=False), "a, b\nc"])
        w.writerow(["[not json", "{}"])
    rows = list(iter_rows(p, FileFormat.CSV))
    assert rows[0] == (1, {"messages": msgs, "note": "a, b\nc"})
    assert rows[1] == (2, {"messages": "[not json", "note": {}})


def test_csv_reader_reports_extra_cells(tmp_path):
    p = tmp_path / "x.csv"
    p.write_text("prompt,completion\nhi,there\nhi,there,extra\n", encoding="utf-8")
    rows = list(iter_rows(p, FileFormat.CSV))
    assert rows[0] == (1, {"prompt": "hi", "completion": "there"})
    assert rows[1][0] == 2 and isinstance(rows[1][1], Violation) and "more cell" in rows[1][1].reason


def test_parquet_reader_streams_batches(tmp_path):
    p = tmp_path / "x.parquet"
    pq.write_table(pa.table({"text": [f"row {i}" for i in range(2500)]}), p, row_group_size=1000)
    rows = list(iter_rows(p, FileFormat.PARQUET))
    assert len(rows) == 2500 and rows[0] == (1, {"text": "row 0"}) and rows[-1] == (2500, {"text": "row 2499"})


def test_reader_errors(tmp_path):
    with pytest.raises(NotFound):
        list(iter_rows(tmp_path / "missing.jsonl", FileFormat.JSONL))
    bad = tmp_path / "bad.parquet"
    bad.write_text("not parquet")
    with pytest.raises(InvalidArgument):
        list(iter_rows(bad, FileFormat.PARQUET))


# --- bundled examples ------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "name,fmt,rows",
    [
        ("sft_demo.jsonl", DatasetFormat.MESSAGES, 64),
        ("sft_alpaca.jsonl", DatasetFormat.ALPACA, 12),
        ("sft_sharegpt.jsonl", DatasetFormat.SHAREGPT, 12),
        ("sft_prompt_completion.csv", DatasetFormat.PROMPT_COMPLETION, 12),
        ("sft_messages.parquet", DatasetFormat.MESSAGES, 12),
        ("learn_task.jsonl", DatasetFormat.MESSAGES, 48),
    ],
)
def test_bundled_examples_are_valid_and_autodetected(name, fmt, rows):
    result = validate_file(DATA / name, file_format_from_name(name))
    assert result.ok, result.violations
    assert (result.format, result.total_rows, result.valid_rows, result.bad_rows) == (fmt, rows, rows, 0)
    # The explicit format gives the same answer.
    assert validate_file(DATA / name, file_format_from_name(name), fmt=fmt).ok


def test_demo_dataset_teaches_the_forge_style():
    rows = [json.loads(line) for line in (DATA / "sft_demo.jsonl").read_text(encoding="utf-8").splitlines()]
    replies = [m["content"] for r in rows for m in r["messages"] if m["role"] == "assistant"]
    assert all(reply.startswith("Forge:") for reply in replies)
    chinese = sum(any("\u4e00" <= ch <= "\u9fff" for ch in r["messages"][1]["content"]) for r in rows)
    assert 0.35 * len(rows) < chinese < 0.65 * len(rows)
    assert sum(len(r["messages"]) > 3 for r in rows) >= 5


def test_broken_example_reports_every_bad_row():
    result = validate_file(DATA / "sft_broken.jsonl", FileFormat.JSONL)
    assert not result.ok and result.format is DatasetFormat.MESSAGES
    assert (result.total_rows, result.valid_rows, result.bad_rows) == (12, 3, 9)
    assert not result.truncated
    by_row = {v.row: v for v in result.violations}
    assert sorted(by_row) == [2, 3, 4, 5, 7, 8, 9, 10, 12]
    expected = {
        2: ("", "invalid JSON"),
        3: ("", "not a JSON object"),
        4: ("messages", "missing"),
        5: ("messages[0].role", "human"),
        7: ("messages[2].content", "whitespace"),
        8: ("messages[1].content", "number"),
        9: ("messages[3].role", "last message"),
        10: ("messages[1].role", "two user messages in a row"),
        12: ("messages", "got string"),
    }
    for row, (field, reason) in expected.items():
        assert by_row[row].field == field, by_row[row]
        assert reason in by_row[row].reason, by_row[row]
        assert by_row[row].hint, by_row[row]
    assert "system, user, assistant" in by_row[5].hint
    assert "trailing user turn" in by_row[9].hint


# --- per-format checks -----------------------------------------------------------------------------


def check(tmp_path, rows, fmt=DatasetFormat.AUTO, method="sft", **kw):
    return validate_file(write_jsonl(tmp_path / "d.jsonl", rows), FileFormat.JSONL, formats_for(method), fmt=fmt,
                         method="dpo" if method == "kto" else method, **kw)


def test_messages_rules(tmp_path):
    rows = [
        {"messages": [S("s"), U("q"), A("a")]},  # 1 ok
        {"messages": [U("q1"), A("a1"), U("q2"), A("a2")]},  # 2 ok
        {"messages": []},  # 3 empty list
        {"messages": [U("q"), S("late"), A("a")]},  # 4 system not first
        {"messages": [A("a"), U("q"), A("a")]},  # 5 starts with assistant
        {"messages": [S("s"), U("q")]},  # 6 no assistant
        {"messages": [U("q"), A("a"), A("b")]},  # 7 two assistants in a row
        {"messages": [U("q"), "hello"]},  # 8 message not an object
        {"messages": [U("q"), {"content": "a"}]},  # 9 role missing
        {"messages": [U("q"), {"role": "assistant", "content": ""}]},  # 10 empty content
        {"messages": [S("s")]},  # 11 only system
        {"messages": [U("q"), {"role": 1, "content": "a"}]},  # 12 role not a string
    ]
    result = check(tmp_path, rows)
    f = fields(result)
    assert sorted(f) == list(range(3, 13)) and result.bad_rows == 10
    assert f[3] == ["messages"]
    assert f[4] == ["messages[1].role"]
    assert f[5] == ["messages[0].role"]
    assert f[6] == ["messages"]
    assert f[7] == ["messages[2].role"]
    assert f[8] == ["messages[1]"]
    assert f[9] == ["messages[1].role"]
    assert f[10] == ["messages[1].content"]
    assert f[11] == ["messages"]
    assert f[12] == ["messages[1].role"]
    reasons = {v.row: v.reason for v in result.violations}
    assert "number" in reasons[12] and "empty" in reasons[10] and "no assistant" in reasons[6]


def test_one_bad_row_can_have_several_violations(tmp_path):
    result = check(tmp_path, [{"messages": [U(""), {"role": "bot", "content": 3}]}])
    assert result.bad_rows == 1
    assert [v.field for v in result.violations] == ["messages[0].content", "messages[1].role", "messages[1].content"]


def test_alpaca_rules(tmp_path):
    rows = [
        {"instruction": "Add", "input": "1+1", "output": "2"},
        {"instruction": "加法", "output": "二", "system": "你是助手", "input": ""},
        {"instruction": "", "output": "x"},
        {"instruction": "x", "output": 5},
        {"instruction": "x", "output": "y", "input": ["a"]},
        {"instruction": "x", "output": "y", "system": None},
    ]
    result = check(tmp_path, rows)
    assert result.format is DatasetFormat.ALPACA
    assert fields(result) == {3: ["instruction"], 4: ["output"], 5: ["input"]}
    assert "got number" in result.violations[1].reason and "got list" in result.violations[2].reason


def test_sharegpt_rules(tmp_path):
    def c(*turns, **extra):
        return {"conversations": [{"from": r, "value": v} for r, v in turns], **extra}

    rows = [
        c(("human", "hi"), ("gpt", "hello"), system="be brief"),
        c(("system", "s"), ("user", "q"), ("assistant", "a"), ("human", "q2"), ("gpt", "a2")),
        c(("bot", "hi"), ("gpt", "hello")),
        c(("human", "hi"), ("human", "again"), ("gpt", "x")),
        c(("human", "hi"), ("gpt", "ok"), ("human", "more?")),
        c(("human", "hi"), ("gpt", "")),
        {"conversations": [{"from": "human", "text": "hi"}, {"from": "gpt", "value": "x"}]},
        c(("human", "hi"), ("gpt", "x"), system=3),
    ]
    result = check(tmp_path, rows)
    assert result.format is DatasetFormat.SHAREGPT
    assert fields(result) == {
        3: ["conversations[0].from"],
        4: ["conversations[1].from"],
        5: ["conversations[2].from"],
        6: ["conversations[1].value"],
        7: ["conversations[0].value"],
        8: ["system"],
    }
    assert "human, user, gpt, assistant, system" in result.violations[0].hint


def test_prompt_completion_text_and_preference(tmp_path):
    pc = check(tmp_path, [{"prompt": "p", "completion": "c"}, {"prompt": "p", "completion": "  "}, {"prompt": None, "completion": "c"}])
    assert pc.format is DatasetFormat.PROMPT_COMPLETION and fields(pc) == {2: ["completion"], 3: ["prompt"]}

    text = check(tmp_path, [{"text": "中文文本"}, {"text": ""}, {"text": 1.5}], method="pretrain")
    assert text.format is DatasetFormat.TEXT and fields(text) == {2: ["text"], 3: ["text"]}
    assert check(tmp_path, [{"text": "x"}], method="continued_pretrain").ok

    pref = check(
        tmp_path,
        [
            {"prompt": "q", "chosen": "good", "rejected": "bad"},
            {"prompt": [U("q")], "chosen": [A("good")], "rejected": [A("bad")]},
            {"prompt": "q", "chosen": "same", "rejected": "same"},
            {"prompt": "q", "chosen": [], "rejected": "bad"},
            {"prompt": "q", "chosen": [{"role": "robot", "content": "x"}], "rejected": 7},
        ],
        method="dpo",
    )
    assert pref.format is DatasetFormat.PREFERENCE
    assert fields(pref) == {3: ["rejected"], 4: ["chosen"], 5: ["chosen[0].role", "rejected"]}
    assert check(tmp_path, [{"prompt": "q", "chosen": "a", "rejected": "b"}], method="reward").ok


def test_unpaired_preference_for_kto(tmp_path):
    rows = [
        {"prompt": "问题", "completion": "好的回答", "label": True},
        {"prompt": [U("q")], "completion": [A("bad answer")], "label": False},
        {"prompt": "q", "completion": "a", "label": "true"},  # as a CSV cell reads
        {"prompt": "q", "completion": "a", "label": "yes"},
        {"prompt": "q", "completion": "", "label": 1},
    ]
    result = check(tmp_path, rows, method="kto")
    assert result.format is DatasetFormat.UNPAIRED_PREFERENCE, "label makes it unpaired, not prompt/completion"
    assert fields(result) == {4: ["label"], 5: ["completion", "label"]}
    assert "desirable" in result.violations[0].hint
    pairs = check(tmp_path, [{"prompt": "q", "chosen": "a", "rejected": "b"}], method="kto")
    assert pairs.ok and pairs.format is DatasetFormat.PREFERENCE, "KTO also takes pairs"
    sigmoid = check(tmp_path, rows[:1], method="dpo")
    assert not sigmoid.ok and "prompt + chosen + rejected" in sigmoid.violations[0].hint
    assert "PREFERENCE_LOSS_KTO" in sigmoid.violations[0].hint


def test_preference_message_roles(tmp_path):
    rows = [
        {"prompt": [S("s"), U("q")], "chosen": [A("a")], "rejected": "b"},
        {"prompt": [U("q"), A("a")], "chosen": [A("x")], "rejected": [U("y"), A("z")]},
        {"prompt": "q", "completion": [U("nope")], "label": True},
    ]
    assert fields(check(tmp_path, rows[:2], method="dpo")) == {2: ["prompt[1].role", "rejected[0].role"]}
    assert fields(check(tmp_path, rows[2:], method="kto")) == {1: ["completion[0].role"]}


def test_evaluate_takes_text_or_answers(tmp_path):
    assert check(tmp_path, [{"text": "一段文本"}], method="evaluate").format is DatasetFormat.TEXT
    assert check(tmp_path, [{"prompt": "1+1=", "completion": "2"}], method="evaluate").format is \
        DatasetFormat.PROMPT_COMPLETION
    assert check(tmp_path, [{"messages": [U("q"), A("a")]}], method="evaluate").format is DatasetFormat.MESSAGES


def test_format_mismatch_rows_are_reported(tmp_path):
    rows = [
        {"unrelated": 1},
        {"messages": [U("q"), A("a")]},
        {"instruction": "x", "output": "y"},
        {"text": "plain"},
    ]
    result = check(tmp_path, rows)
    assert result.format is DatasetFormat.MESSAGES and result.bad_rows == 3
    by_row = {v.row: v for v in result.violations}
    assert "matches no sft format" in by_row[1].reason and "instruction + output" in by_row[1].hint
    assert "alpaca" in by_row[3].reason and "messages" in by_row[3].reason and by_row[3].field == "messages"
    assert by_row[4].field == "messages" and "missing" in by_row[4].reason


def test_no_row_matches_the_method(tmp_path):
    result = check(tmp_path, [{"text": "a"}, {"text": "b"}])
    assert not result.ok and result.format is DatasetFormat.AUTO and result.bad_rows == 2
    assert all("messages" in v.hint and "prompt + completion" in v.hint for v in result.violations)


def test_explicit_format_is_enforced(tmp_path):
    result = check(tmp_path, [{"prompt": "p", "completion": "c"}], fmt=DatasetFormat.MESSAGES)
    assert not result.ok and result.violations[0].field == "messages"
    with pytest.raises(InvalidArgument) as e:
        check(tmp_path, [{"text": "x"}], fmt=DatasetFormat.TEXT, method="sft")
    assert e.value.violations[0].field == "format"


def test_empty_dataset(tmp_path):
    result = check(tmp_path, ["", "   "])
    assert not result.ok and result.total_rows == 0
    assert result.violations == [Violation(0, "", "dataset has no rows", result.violations[0].hint)]


def test_truncation_keeps_exact_counts(tmp_path):
    rows = [{"messages": [U("q"), A("")]} if i % 2 else {"messages": [U("q"), A("a")]} for i in range(101)]
    result = check(tmp_path, rows, max_violations=7)
    assert result.truncated and len(result.violations) == 7
    assert (result.total_rows, result.valid_rows, result.bad_rows) == (101, 51, 50)
    assert [v.row for v in result.violations] == [2, 4, 6, 8, 10, 12, 14]
    assert not check(tmp_path, rows, max_violations=50).truncated


def test_chinese_in_all_file_formats(tmp_path):
    msgs = [S("你是助手。"), U("今天天气怎么样？"), A("Forge: 晴天，适合出门。")]
    j = write_jsonl(tmp_path / "zh.jsonl", [{"messages": msgs}, {"messages": msgs[:2]}])
    c = tmp_path / "zh.csv"
    with c.open("w", encoding="utf-8", newline="") as f:
        csv.writer(f).writerows([["messages"], [json.dumps(msgs, ensure_ascii=False)], [json.dumps(msgs[:2], ensure_ascii=False)]])
    p = tmp_path / "zh.parquet"
    pq.write_table(pa.table({"messages": [msgs, msgs[:2]]}), p)
    for path in (j, c, p):
        ff = file_format_from_name(path.name)
        assert next(iter_rows(path, ff))[1]["messages"] == msgs
        result = validate_file(path, ff)
        assert (result.valid_rows, result.bad_rows) == (1, 1)
        assert [(v.row, v.field, v.reason) for v in result.violations] == [(2, "messages", "has no assistant message")]


def test_large_file_validates_in_bounded_memory(tmp_path):
    # 100k rows, ~60 MB: bigger than the memory bound, yet quick enough under tracemalloc (~7 s).
    p = tmp_path / "big.jsonl"
    good = json.dumps(
        {"messages": [U("请把这句话翻译成英文：" + "今天天气很好。" * 8), A("Forge: The weather is nice today. " * 10)]},
        ensure_ascii=False,
    )
    bad = json.dumps({"messages": [U("q"), U("q")]})  # two violations: two users in a row, no assistant
    n = 100_000
    with p.open("w", encoding="utf-8") as f:
        block = "\n".join(bad if i % 1000 == 999 else good for i in range(1000)) + "\n"
        for _ in range(n // 1000):
            f.write(block)
    limit = 50 * 2**20
    assert p.stat().st_size > limit

    tracemalloc.start()
    try:
        result = validate_file(p, FileFormat.JSONL, max_violations=100)
        peak = tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()
    assert peak < limit // 5, peak
    assert (result.total_rows, result.bad_rows, result.valid_rows) == (n, n // 1000, n - n // 1000)
    assert result.truncated and len(result.violations) == 100
    assert [v.row for v in result.violations[:4]] == [1000, 1000, 2000, 2000]
    assert result.violations[-1].row == 50_000
