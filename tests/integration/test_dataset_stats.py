"""DescribeDataset, the token calculator, against a real trainer and the tiny model's real tokenizer.

Every expected number is computed here independently, with transformers' own tokenizer and
`apply_chat_template` (what the recipes' TRL trainers call), not with the server's code.

Run: OMP_NUM_THREADS=1 .venv/bin/python -m pytest tests/integration/test_dataset_stats.py -q
"""

from __future__ import annotations

import json
import math
import re

import grpc
import pytest

from tests.conftest import EXAMPLES

LONG_REPLY = " ".join(["The forge heats the iron until it glows orange, then the smith shapes it on the anvil."] * 4)
ROWS = [
    {"messages": [{"role": "user", "content": "What is the capital of France?"},
                  {"role": "assistant", "content": "Paris is the capital of France."}]},
    {"messages": [{"role": "system", "content": "你是 lmforge 的助手。"},
                  {"role": "user", "content": "中国的首都是哪里？"},
                  {"role": "assistant", "content": "中国的首都是北京。"}]},
    # an exact duplicate of the first row
    {"messages": [{"role": "user", "content": "What is the capital of France?"},
                  {"role": "assistant", "content": "Paris is the capital of France."}]},
    # longer than max_seq_length: truncated
    {"messages": [{"role": "user", "content": "Describe the forge."},
                  {"role": "assistant", "content": LONG_REPLY}]},
    # two assistant turns: two training sequences
    {"messages": [{"role": "user", "content": "Hi"}, {"role": "assistant", "content": "Hello!"},
                  {"role": "user", "content": "你好"}, {"role": "assistant", "content": "你好！"}]},
]
MAX_SEQ_LENGTH = 48
EPOCHS = 3


@pytest.fixture(scope="module")
def hf_tokenizer(store_root, tiny_model_id):
    from transformers import AutoTokenizer

    return AutoTokenizer.from_pretrained(store_root / "models" / tiny_model_id)


@pytest.fixture(scope="module")
def sft_file(tmp_path_factory):
    path = tmp_path_factory.mktemp("stats") / "stats_sft.jsonl"
    lines = [json.dumps(row, ensure_ascii=False) for row in ROWS]
    lines.insert(2, '{"messages": [{"role": "user", "content": "no reply"}]}')  # invalid: no assistant turn
    path.write_text("\n".join(lines) + "\n", encoding="utf-8")
    return path


def _ids(tokenizer, messages, generation_prompt=False):
    return tokenizer.apply_chat_template(messages, add_generation_prompt=generation_prompt, tokenize=True,
                                         return_dict=True)["input_ids"]


def _prefix(a, b):
    n = 0
    while n < min(len(a), len(b)) and a[n] == b[n]:
        n += 1
    return n


def _rank(values, p):
    values = sorted(values)
    return values[max(1, math.ceil(p / 100 * len(values))) - 1]


def _expected_sft(tokenizer, rows, max_len):
    """(length, prompt length) per training sequence: one per assistant turn, as TRL's SFTTrainer builds them."""
    sequences = []
    for row in rows:
        messages = row["messages"]
        for i, message in enumerate(messages):
            if message["role"] == "assistant":
                prompt = _ids(tokenizer, messages[:i], generation_prompt=True)
                full = _ids(tokenizer, messages[:i + 1])
                sequences.append((len(full), _prefix(prompt, full)))
    return sequences


def _language_totals(tokenizer, texts):
    totals = {}
    for text in texts:
        han = len(re.findall(r"[\u4e00-\u9fff]", text))
        latin = len(re.findall(r"[A-Za-z]", text))
        language = "zh" if han and 2 * han >= han + latin else "en" if latin else None
        if language is None:
            continue
        t = totals.setdefault(language, {"texts": 0, "characters": 0, "words": 0, "tokens": 0})
        t["texts"] += 1
        t["characters"] += len(re.sub(r"\s", "", text))
        t["words"] += han if language == "zh" else len(text.split())
        t["tokens"] += len(tokenizer(text, add_special_tokens=False)["input_ids"])
    return totals


def test_sft_stats_match_the_tokenizer_and_chat_template(trainer_client, tiny_model_id, sft_file, hf_tokenizer):
    dataset_id = trainer_client.upload_dataset(sft_file).id
    stats = trainer_client.describe_dataset(dataset_id, tiny_model_id, MAX_SEQ_LENGTH, method="sft", epochs=EPOCHS)

    sequences = _expected_sft(hf_tokenizer, ROWS, MAX_SEQ_LENGTH)
    lengths = [n for n, _ in sequences]
    trained_kept = sum(max(0, min(n, MAX_SEQ_LENGTH) - p) for n, p in sequences)
    assert (stats.rows, stats.invalid_rows, stats.duplicate_rows) == (5, 1, 1)
    assert stats.sequences == 6 == len(sequences)
    assert stats.total_tokens == sum(lengths)
    assert stats.trained_tokens == sum(n - p for n, p in sequences)
    assert [stats.p50_tokens, stats.p90_tokens, stats.p99_tokens, stats.max_tokens] == \
        [_rank(lengths, 50), _rank(lengths, 90), _rank(lengths, 99), max(lengths)]
    long_ones = [n for n in lengths if n > MAX_SEQ_LENGTH]
    assert long_ones, "the long row must exceed max_seq_length for this test to mean anything"
    assert stats.truncated_sequences == len(long_ones)
    assert stats.truncated_tokens == sum(n - MAX_SEQ_LENGTH for n in long_ones)
    assert stats.trained_tokens_after_truncation == trained_kept
    assert stats.estimated_trained_tokens == EPOCHS * trained_kept
    edges = list(stats.histogram_edges)
    assert edges[:9] == [0, 6, 12, 18, 24, 30, 36, 42, 48] and edges[-1] == max(lengths)
    assert list(stats.histogram_counts) == [sum(1 for n in lengths if lo < n <= hi) for lo, hi in zip(edges, edges[1:])]
    assert stats.histogram_counts[-1] == stats.truncated_sequences

    texts = [m["content"] for row in ROWS for m in row["messages"]]
    expected = _language_totals(hf_tokenizer, texts)
    got = {s.language: s for s in stats.languages}
    assert set(got) == {"zh", "en"}
    for language, totals in expected.items():
        s = got[language]
        assert (s.texts, s.characters, s.words, s.tokens) == \
            (totals["texts"], totals["characters"], totals["words"], totals["tokens"]), language
        assert s.characters_per_token == pytest.approx(totals["characters"] / totals["tokens"])
        assert s.tokens_per_word == pytest.approx(totals["tokens"] / totals["words"])
    assert stats.rows_per_second > 0


def test_preference_stats_count_chosen_and_rejected(trainer_client, tiny_model_id, hf_tokenizer):
    path = EXAMPLES / "preference_demo.jsonl"
    stats = trainer_client.describe_dataset(trainer_client.upload_dataset(path).id, tiny_model_id, 64, method="dpo")
    total = trained = kept = 0
    rows = [json.loads(line) for line in path.read_text(encoding="utf-8").splitlines() if line.strip()]

    def turns(value, role):
        return [{"role": role, "content": value}] if isinstance(value, str) else value

    for row in rows:
        prompt = _ids(hf_tokenizer, turns(row["prompt"], "user"), generation_prompt=True)
        fulls = [_ids(hf_tokenizer, turns(row["prompt"], "user") + turns(row[key], "assistant"))
                 for key in ("chosen", "rejected")]
        p = min(_prefix(prompt, full) for full in fulls)  # TRL DPOTrainer: one prompt for both
        for full in fulls:
            total += len(full)
            trained += len(full) - p
            kept += max(0, min(len(full), 64) - p)
    assert stats.rows == len(rows) and stats.sequences == 2 * len(rows)
    assert (stats.total_tokens, stats.trained_tokens, stats.trained_tokens_after_truncation) == (total, trained, kept)


def test_text_stats_are_packed_with_eos(trainer_client, tiny_model_id, hf_tokenizer):
    path = EXAMPLES / "pretrain_corpus.jsonl"
    stats = trainer_client.describe_dataset(trainer_client.upload_dataset(path).id, tiny_model_id, 16,
                                            method="pretrain", epochs=2)
    texts = [json.loads(line)["text"] for line in path.read_text(encoding="utf-8").splitlines() if line.strip()]
    lengths = [len(hf_tokenizer(t + hf_tokenizer.eos_token)["input_ids"]) for t in texts]
    assert stats.packed and stats.truncated_sequences == 0 and stats.truncated_tokens == 0
    assert stats.total_tokens == stats.trained_tokens == sum(lengths)
    assert stats.estimated_trained_tokens == 2 * sum(lengths)
    assert stats.max_tokens == max(lengths)


@pytest.mark.parametrize("overrides, code, field", [
    ({"dataset_id": "ds-0000000000000000000a"}, grpc.StatusCode.NOT_FOUND, "dataset_id"),
    ({"base_model_id": "no-such-model"}, grpc.StatusCode.NOT_FOUND, "base_model_id"),
    ({"method": "sftt"}, grpc.StatusCode.INVALID_ARGUMENT, "method"),
    ({"max_seq_length": 0}, grpc.StatusCode.INVALID_ARGUMENT, "max_seq_length"),
    ({"epochs": -1}, grpc.StatusCode.INVALID_ARGUMENT, "epochs"),
])
def test_errors_name_the_field_and_no_server_path(trainer_client, trainer_server, tiny_model_id, demo_dataset_id,
                                                  overrides, code, field):
    args = {"dataset_id": demo_dataset_id, "base_model_id": tiny_model_id, "max_seq_length": 64, "method": "sft",
            "epochs": 1, **overrides}
    with pytest.raises(grpc.RpcError) as info:
        trainer_client.describe_dataset(**args)
    assert info.value.code() == code
    message = info.value.details()
    assert field in message
    if code == grpc.StatusCode.INVALID_ARGUMENT:
        assert "use" in message or "pass" in message  # the fix
    for root in (str(trainer_server.home), str(trainer_server.store_root)):
        assert root not in message
