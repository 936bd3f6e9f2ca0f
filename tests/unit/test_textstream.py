"""Streaming text exactly: deltas never split a UTF-8 character, and stop sequences are never streamed."""

from __future__ import annotations

import pytest

from services.common.errors import InvalidArgument
from services.engine.sampling import checked_sampling
from services.engine.textstream import IncrementalDetokenizer, StopMatcher

MIXED = "lmforge 训练大模型：LoRA 微调，然后推理。Tokens → 文本 ✓ emoji 🚀 done."


@pytest.fixture(scope="module")
def byte_tokenizer():
    """A byte-level BPE that splits most Chinese characters and emoji over several tokens."""
    from services.common.model_import import train_tiny_tokenizer

    return train_tiny_tokenizer(["hello world, plain English only"], vocab_size=300)


def test_deltas_never_break_a_character_and_join_to_the_text(byte_tokenizer):
    ids = byte_tokenizer(MIXED, add_special_tokens=False)["input_ids"]
    assert len(ids) > len(MIXED) // 2, "the tokenizer really splits characters into bytes"
    detokenizer = IncrementalDetokenizer(byte_tokenizer, prompt_ids=byte_tokenizer("前文", add_special_tokens=False)["input_ids"])
    deltas = [detokenizer.add([token]) for token in ids]
    deltas.append(detokenizer.flush())
    assert "".join(deltas) == MIXED == detokenizer.text
    assert all("\ufffd" not in d for d in deltas)
    assert sum(1 for d in deltas if d == "") > 0, "incomplete characters were held back"


def test_an_incomplete_character_at_the_end_is_flushed_as_the_model_made_it(byte_tokenizer):
    ids = byte_tokenizer("🚀", add_special_tokens=False)["input_ids"]
    assert len(ids) > 1
    detokenizer = IncrementalDetokenizer(byte_tokenizer)
    assert detokenizer.add(ids[:1]) == ""
    assert detokenizer.flush() == "\ufffd"


def _stream(stop, pieces):
    matcher = StopMatcher(stop)
    out = [matcher.feed(p) for p in pieces]
    out.append(matcher.flush())
    return out, matcher


def test_stop_sequence_split_over_pieces_is_never_streamed():
    out, matcher = _stream(["###"], ["answer: 4", "2 #", "#", "# trailing"])
    assert "".join(out) == "answer: 42 " == matcher.released
    assert matcher.matched
    assert all("#" not in piece for piece in out)


def test_held_back_text_is_released_when_it_is_not_a_stop():
    out, matcher = _stream(["</s>", "STOP"], ["a <", "/t", "> b ST", "ART"])
    assert "".join(out) == "a </t> b START" and not matcher.matched
    assert out[0] == "a ", "'<' could start '</s>': held back"


def test_chinese_stop_sequences_and_the_earliest_match_wins():
    out, matcher = _stream(["。", "结束"], ["你好", "，世界结", "束了。"])
    assert "".join(out) == "你好，世界" and matcher.matched


def test_no_stop_sequences_streams_everything_at_once():
    out, _ = _stream([], ["a", "b"])
    assert out == ["a", "b", ""]


def test_sampling_errors_name_the_field_and_the_range():
    with pytest.raises(InvalidArgument) as info:
        checked_sampling({"temperature": 3.0, "top_p": 0.0, "n": 99, "stop": [""]})
    fields = {v.field for v in info.value.violations}
    assert fields == {"sampling.temperature", "sampling.top_p", "sampling.n", "sampling.stop"}
    temperature = next(v for v in info.value.violations if v.field == "sampling.temperature")
    assert "[0.0, 2.0]" in temperature.hint
    assert checked_sampling({"temperature": 0.0}).greedy
    seeded = checked_sampling({"seed": 7, "n": 3})
    assert [seeded.for_choice(i).seed for i in range(3)] == [7, 8, 9]
