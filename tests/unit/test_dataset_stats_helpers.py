"""The pure parts of the token calculator (services/trainer/data/stats.py): percentiles, the histogram,
language detection, row texts, the chat template lookup. The token counts themselves are checked against
transformers in tests/integration/test_dataset_stats.py.

Run: .venv/bin/python -m pytest tests/unit/test_dataset_stats_helpers.py -q
"""

from __future__ import annotations

import json
from collections import Counter

import pytest

from services.common.errors import FailedPrecondition
from services.trainer.data import DatasetFormat
from services.trainer.data.stats import (
    ChatTokenizer,
    common_prefix_length,
    histogram,
    nearest_rank,
    row_texts,
    text_language,
)


def test_nearest_rank_percentiles():
    values = Counter(range(1, 101))  # 1..100 once each
    assert [nearest_rank(values, p) for p in (50, 90, 99, 100)] == [50, 90, 99, 100]
    assert nearest_rank({7: 1}, 50) == 7 and nearest_rank({}, 50) == 0
    assert nearest_rank(Counter([1, 2, 3, 4]), 50) == 2  # ceil(0.5 * 4) = 2nd smallest
    assert nearest_rank({5: 3, 9: 1}, 75) == 5 and nearest_rank({5: 3, 9: 1}, 76) == 9


def test_histogram_buckets_up_to_max_seq_length_and_one_for_the_truncated():
    edges, counts = histogram(Counter([1, 8, 9, 16, 17, 40]), 16, buckets=2)
    assert edges == [0, 8, 16, 40]
    assert counts == [2, 2, 2]  # (0, 8]: 1, 8; (8, 16]: 9, 16; (16, 40]: the two longer than 16
    edges, counts = histogram(Counter([3, 4]), 16, buckets=2)
    assert edges == [0, 8, 16] and counts == [2, 0]  # no overflow bucket when nothing is truncated


def test_text_language():
    assert text_language("中国的首都是哪里？")[:3] == ("zh", 9, 8)  # 9 characters, 8 Han
    assert text_language("What is the capital?")[:3] == ("en", 17, 4)
    assert text_language("用 Python 写")[0] == "en"  # 2 Han are fewer than half of the 8 letters
    assert text_language("12 + 30 = 42")[0] is None


def test_text_language_mixed_text_goes_to_the_majority():
    assert text_language("我喜欢 AI")[0] == "zh"  # 3 Han, 2 Latin
    assert text_language("I like 中文 very much")[0] == "en"


def test_row_texts_reads_every_written_text():
    row = {"messages": [{"role": "system", "content": "S"}, {"role": "user", "content": "U"},
                        {"role": "assistant", "content": " "}]}
    assert row_texts(row, DatasetFormat.MESSAGES) == ["S", "U"]
    pref = {"prompt": [{"role": "user", "content": "Q"}], "chosen": "A", "rejected": "B"}
    assert row_texts(pref, DatasetFormat.PREFERENCE) == ["Q", "A", "B"]
    share = {"system": "S", "conversations": [{"from": "human", "value": "H"}, {"from": "gpt", "value": "G"}]}
    assert row_texts(share, DatasetFormat.SHAREGPT) == ["S", "H", "G"]


def test_common_prefix_length_as_trl():
    assert common_prefix_length([1, 2, 3], [1, 2, 3, 4]) == 3
    assert common_prefix_length([1, 2, 9], [1, 2, 3, 4]) == 2
    assert common_prefix_length([1, 2, 3], [1, 2]) == 2


def test_a_model_without_fast_tokenizer_is_refused_without_its_path(tmp_path):
    with pytest.raises(FailedPrecondition) as info:
        ChatTokenizer.from_model_dir(tmp_path, "some-model")
    assert "some-model" in str(info.value) and str(tmp_path) not in str(info.value)


def test_chat_template_is_found_where_transformers_looks(tmp_path):
    from tokenizers import Tokenizer, models

    Tokenizer(models.WordLevel({"a": 0, "<unk>": 1}, unk_token="<unk>")).save(str(tmp_path / "tokenizer.json"))
    template = "{% for m in messages %}{{ bos_token }}{{ m['role'] }}:{{ m['content'] }}{{ eos_token }}{% endfor %}"
    (tmp_path / "tokenizer_config.json").write_text(json.dumps({
        "bos_token": {"content": "<s>"}, "eos_token": "</s>",
        "chat_template": [{"name": "tool_use", "template": "x"}, {"name": "default", "template": template}]}))
    tokenizer = ChatTokenizer.from_model_dir(tmp_path, "m")
    assert tokenizer.special_tokens["pad_token"] == "</s>"  # falls back to EOS, as training does
    assert tokenizer.render([{"role": "user", "content": "hi"}]) == "<s>user:hi</s>"
    (tmp_path / "chat_template.jinja").write_text("{{ messages | length }}{% generation %}!{% endgeneration %}")
    assert ChatTokenizer.from_model_dir(tmp_path, "m").render([{"role": "user", "content": "hi"}]) == "1!"
