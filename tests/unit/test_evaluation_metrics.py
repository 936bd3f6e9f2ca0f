"""The Evaluate metrics on fixed inputs with answers worked out by hand (services/trainer/evaluation.py).

Run: .venv/bin/python -m pytest tests/unit/test_evaluation_metrics.py -q
"""

from __future__ import annotations

import math

import pytest
import sacrebleu

from services.trainer import evaluation as ev


# ----------------------------------------------------------------------------------- normalisation


@pytest.mark.parametrize("prediction, reference", [
    ("Paris.", " paris"),
    ("  New   York!! ", "new york"),
    ("北京。", "北京"),
    ("「北京」", "北京"),
    ("“上海”！", "上海"),
    ("ＰＡＲＩＳ", "paris"),        # full-width letters (NFKC)
    ("Straße", "STRASSE"),          # case-folding, not just lower()
    ("\n\tBlue\n", "blue"),
])
def test_exact_match_ignores_case_space_and_surrounding_punctuation(prediction, reference):
    assert ev.exact_match(prediction, reference) == 1.0


@pytest.mark.parametrize("prediction, reference", [
    ("Paris France", "Paris, France"),  # punctuation inside the answer is kept
    ("北京市", "北京"),
    ("3.14", "314"),
    ("", "x"),
])
def test_exact_match_misses(prediction, reference):
    assert ev.exact_match(prediction, reference) == 0.0


def test_tokens_are_words_for_latin_and_characters_for_cjk():
    assert ev.tokenize("Hello, 世界! Café ＡＢＣ snake_case") == ["hello", "世", "界", "café", "abc", "snake_case"]
    assert ev.tokenize("中国的首都是北京。") == list("中国的首都是北京")
    assert ev.tokenize("...!") == []


# ---------------------------------------------------------------------------------------------- F1


def test_f1_english_by_hand():
    # prediction {paris, is, the, capital} (4), reference {the, capital, is, paris, france} (5): 4 in common,
    # P = 4/4, R = 4/5, F1 = 2 * 1 * 0.8 / 1.8 = 8/9.
    assert ev.token_f1("Paris is the capital", "The capital is Paris, France.") == pytest.approx(8 / 9)


def test_f1_chinese_by_hand():
    # prediction 北 京 (2), reference 中 国 北 京 (4): 2 in common, P = 1, R = 1/2, F1 = 2/3.
    assert ev.token_f1("北京", "中国北京") == pytest.approx(2 / 3)
    # repeated tokens count as often as both sides have them: 好 好 好 vs 好: P = 1/3, R = 1, F1 = 1/2
    assert ev.token_f1("好好好", "好") == pytest.approx(0.5)


def test_f1_edge_cases():
    assert ev.token_f1("cat", "dog") == 0.0
    assert ev.token_f1("", "") == 1.0
    assert ev.token_f1("!", "") == 1.0  # no tokens on either side
    assert ev.token_f1("", "dog") == 0.0


# -------------------------------------------------------------------------------------------- BLEU


def test_bleu_is_100_for_identical_outputs():
    refs = ["The cat sat on the mat.", "中国的首都是北京。", "Seven days."]
    assert ev.bleu(refs, refs) == pytest.approx(100.0)


def test_bleu_small_case_by_hand_and_against_sacrebleu():
    # hypothesis "the cat sat on the mat" vs reference "the cat sat on a mat" (6 tokens each, BP = 1):
    # n-gram precisions 5/6, 3/5, 2/4, 1/3, so BLEU = 100 * (5/6 * 3/5 * 1/2 * 1/3) ** (1/4) = 100 * (1/12) ** 0.25
    hyp, ref = ["the cat sat on the mat"], ["the cat sat on a mat"]
    expected = 100 * (1 / 12) ** 0.25
    assert ev.bleu(hyp, ref) == pytest.approx(expected)  # 53.73
    assert ev.bleu(hyp, ref) == pytest.approx(sacrebleu.corpus_bleu(hyp, [ref]).score)


def test_bleu_uses_the_zh_tokenizer_for_chinese_references():
    # zh splits Han characters: hypothesis 我 爱 北 京 (4) vs reference 我 爱 北 京 天 安 门 (7): every n-gram
    # precision is 1, brevity penalty exp(1 - 7/4), so BLEU = 100 * exp(-0.75) = 47.24.
    assert ev.bleu_tokenizer(["我爱北京天安门"]) == "zh"
    assert ev.bleu_tokenizer(["I love Beijing"]) == "13a"
    assert ev.bleu(["我爱北京"], ["我爱北京天安门"]) == pytest.approx(100 * math.exp(-0.75))
    # with 13a the whole sentence would be one token and score 0: the reason for choosing zh
    assert sacrebleu.corpus_bleu(["我爱北京"], [["我爱北京天安门"]], tokenize="13a").score == 0.0


# ------------------------------------------------------------------------------------------- ROUGE


def test_rouge_english_by_hand():
    # reference the cat sat on the mat (6), prediction the cat on the mat (5).
    # ROUGE-1: 5 unigrams in common (the x2, cat, on, mat): P = 1, R = 5/6, F = 10/11.
    # ROUGE-2: bigrams in common the-cat, on-the, the-mat: P = 3/4, R = 3/5, F = 2/3.
    # ROUGE-L: LCS "the cat on the mat" = 5: F = 10/11.
    scores = ev.rouge(["the cat on the mat"], ["The cat sat on the mat."])
    assert scores == pytest.approx({"rouge1": 10 / 11, "rouge2": 2 / 3, "rougeL": 10 / 11})


def test_rouge_chinese_by_hand_and_not_zero():
    # reference 北京是中国的首都, prediction 中国的首都是北京: same 8 characters (ROUGE-1 = 1), 5 of 7 bigrams
    # shared (ROUGE-2 = 5/7), LCS 中国的首都 = 5 of 8 (ROUGE-L = 5/8).
    scores = ev.rouge(["中国的首都是北京"], ["北京是中国的首都"])
    assert scores == pytest.approx({"rouge1": 1.0, "rouge2": 5 / 7, "rougeL": 5 / 8})
    # rouge-score's default tokenizer drops every non-ASCII character, so the same pair would score 0.
    from rouge_score import rouge_scorer

    default = rouge_scorer.RougeScorer(["rouge1"]).score("北京是中国的首都", "中国的首都是北京")
    assert default["rouge1"].fmeasure == 0.0


def test_rouge_is_the_mean_over_rows():
    scores = ev.rouge(["a b", "北京"], ["a b", "上海"])
    assert scores["rouge1"] == pytest.approx(0.5)


# ------------------------------------------------------------------------------- accuracy, macro F1


LABEL_PREDICTIONS = ["Positive", "negative\nbecause the food was cold", "negative", "Neutral."]
LABEL_REFERENCES = ["positive", "negative", "positive", "neutral"]


def test_accuracy_compares_the_first_line_with_the_label():
    assert ev.accuracy(LABEL_PREDICTIONS, LABEL_REFERENCES) == pytest.approx(3 / 4)
    assert ev.predicted_label("\n  Yes.\nno") == "yes"


def test_macro_f1_by_hand():
    # positive: TP 1, FN 1 -> 2/3; negative: TP 1, FP 1 -> 2/3; neutral: TP 1 -> 1. Mean = 7/9.
    assert ev.macro_f1(LABEL_PREDICTIONS, LABEL_REFERENCES) == pytest.approx(7 / 9)
    # a prediction outside every class is only a miss of its row's class
    assert ev.macro_f1(["maybe", "no"], ["yes", "no"]) == pytest.approx((0 + 1) / 2)


# -------------------------------------------------------------------------------------- perplexity


def test_perplexity_from_known_nlls():
    # two tokens with probabilities 1/2 and 1/8: exp((ln 2 + ln 8) / 2) = exp(ln 4) = 4
    assert ev.perplexity(math.log(2) + math.log(8), 2) == pytest.approx(4.0)
    assert ev.perplexity(0.0, 5) == 1.0
    assert ev.perplexity(1e6, 1) == math.inf
    with pytest.raises(ValueError):
        ev.perplexity(1.0, 0)


# ---------------------------------------------------------------------------------- entry point


def test_score_generations_on_fixed_inputs():
    predictions = ["Paris.", "北京", "the cat on the mat"]
    references = ["paris", "中国北京", "the cat sat on the mat"]
    scores = ev.score_generations(predictions, references, ["exact_match", "f1", "bleu", "rouge"])
    assert set(scores) == {"exact_match", "f1", "bleu", "rouge1", "rouge2", "rougeL"}
    assert scores["exact_match"] == pytest.approx(1 / 3)
    assert scores["f1"] == pytest.approx((1 + 2 / 3 + 10 / 11) / 3)
    assert scores["bleu"] == pytest.approx(sacrebleu.corpus_bleu(predictions, [references], tokenize="zh").score)
    assert 0 < scores["bleu"] < 100
    assert scores["rougeL"] == pytest.approx((1 + 2 / 3 + 10 / 11) / 3)  # LCS F here equals token F1
    assert ev.score_generations(["x"], ["x"], ["accuracy", "macro_f1"]) == {"accuracy": 1.0, "macro_f1": 1.0}


def test_score_generations_rejects_bad_input():
    with pytest.raises(ValueError, match="perplexity"):
        ev.score_generations(["a"], ["a"], ["perplexity"])
    with pytest.raises(ValueError):
        ev.score_generations(["a"], ["a", "b"], ["f1"])
    with pytest.raises(ValueError):
        ev.score_generations([], [], ["f1"])


def test_module_imports_no_torch():
    import subprocess
    import sys

    code = ("import sys, services.trainer.evaluation as e; e.score_generations(['a'], ['a'], e.GENERATION_METRICS); "
            "assert 'torch' not in sys.modules")
    subprocess.run([sys.executable, "-c", code], check=True)
