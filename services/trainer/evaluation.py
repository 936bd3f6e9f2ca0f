"""The metrics of Evaluate jobs, defined once and exactly (docs/trainer.md, "Evaluation", says the same).

    from services.trainer.evaluation import score_generations, perplexity
    score_generations(["Paris."], ["paris"], ["exact_match", "f1", "rouge"])
    -> {"exact_match": 1.0, "f1": 1.0, "rouge1": 1.0, "rouge2": 0.0, "rougeL": 1.0}
    perplexity(total_nll=4.1589, total_tokens=2)  -> 8.0

Definitions (one prediction and one reference per row; every score is the mean over rows unless said):

* normalisation (`normalize_text`): Unicode NFKC (full-width letters and digits become ASCII), case-fold,
  drop punctuation (Unicode category P*, so `。，！？「」` too) and whitespace at both ends, collapse
  inner whitespace runs to one space. Punctuation inside the text is kept.
* tokens (`tokenize`): of the normalised text, each CJK character (Han ideographs, kana) is one token and
  every other run of letters, digits and `_` is one word; punctuation, symbols and spaces are no tokens.
* `exact_match`: 1 when the normalised prediction equals the normalised reference, else 0.
* `f1`: SQuAD overlap F1 on tokens: with common = the multiset intersection, P = common / prediction
  tokens, R = common / reference tokens, F1 = 2PR / (P + R); 0 when nothing is common; 1 when both have
  no tokens, 0 when only one has none.
* `accuracy`: for labels: 1 when the normalised first non-empty line of the prediction equals the
  normalised reference label (so "Positive.\\nBecause ..." counts as "positive").
* `macro_f1`: the classes are the distinct normalised reference labels; per class c, with predictions
  labelled as for accuracy, F1_c = 2 TP / (2 TP + FP + FN); macro_f1 is their unweighted mean (a
  prediction outside every class counts only as a miss of its row's class).
* `bleu`: sacrebleu's corpus BLEU (4-gram, exponential smoothing, case-sensitive, brevity penalty over
  the corpus) on the predictions and references as given (surrounding whitespace stripped), with
  sacrebleu's "zh" tokenizer when any reference contains a Han character, else "13a"; reported 0-100.
* `rouge` -> `rouge1`, `rouge2`, `rougeL`: rouge-score's F-measures of unigrams, bigrams and the longest
  common subsequence on `tokenize` tokens, averaged over rows, 0-1. rouge-score's own tokenizer keeps
  only [a-z0-9], so Chinese would score 0; ours splits it into characters.
* `perplexity` (`perplexity`): exp(total negative log-likelihood / total scored tokens), natural log; the
  recipe sums token NLLs over every row (text rows: every token but the first; answer rows: the
  reference answer's tokens given the prompt), so long rows weigh by their length.

Pure Python; sacrebleu and rouge-score are imported when a metric needs them (never torch).
"""

from __future__ import annotations

import math
import re
import unicodedata
from collections import Counter
from collections.abc import Iterable, Sequence

# Metrics computed from generated text (perplexity needs the model, see the evaluate recipe).
GENERATION_METRICS = ("exact_match", "f1", "accuracy", "macro_f1", "bleu", "rouge")
ROUGE_TYPES = ("rouge1", "rouge2", "rougeL")

# Han ideographs (CJK Unified + extensions A-F, compatibility ideographs and supplement) and kana: the
# scripts written without spaces between words, so each character is one token.
_HAN = ("\u3400-\u4dbf\u4e00-\u9fff\uf900-\ufaff"
        "\U00020000-\U0002a6df\U0002a700-\U0002ebef\U0002f800-\U0002fa1f")
_CJK = _HAN + "\u3040-\u309f\u30a0-\u30ff\u31f0-\u31ff"
_TOKEN = re.compile(rf"[{_CJK}]|(?:(?![{_CJK}])\w)+")
_HAN_CHAR = re.compile(rf"[{_HAN}]")
_SPACES = re.compile(r"\s+")


def _is_edge_junk(ch: str) -> bool:
    return ch.isspace() or unicodedata.category(ch).startswith("P")


def normalize_text(text: str) -> str:
    """NFKC, case-fold, strip punctuation and whitespace at both ends, collapse inner whitespace."""
    text = unicodedata.normalize("NFKC", text).casefold()
    start, end = 0, len(text)
    while start < end and _is_edge_junk(text[start]):
        start += 1
    while end > start and _is_edge_junk(text[end - 1]):
        end -= 1
    return _SPACES.sub(" ", text[start:end])


def tokenize(text: str) -> list[str]:
    """Tokens of the normalised text: one per CJK character, one per other word (letters/digits/_)."""
    return _TOKEN.findall(normalize_text(text))


def has_han(text: str) -> bool:
    return _HAN_CHAR.search(text) is not None


class CjkWordTokenizer:
    """A rouge-score tokenizer (anything with `tokenize(text) -> list[str]`) using `tokenize` above."""

    def tokenize(self, text: str) -> list[str]:
        return tokenize(text)


# ------------------------------------------------------------------------------------------ per row


def exact_match(prediction: str, reference: str) -> float:
    return float(normalize_text(prediction) == normalize_text(reference))


def token_f1(prediction: str, reference: str) -> float:
    """SQuAD-style overlap F1 of `tokenize` tokens (reported as "f1")."""
    pred, ref = tokenize(prediction), tokenize(reference)
    if not pred or not ref:
        return float(pred == ref)
    common = sum((Counter(pred) & Counter(ref)).values())
    if common == 0:
        return 0.0
    precision, recall = common / len(pred), common / len(ref)
    return 2 * precision * recall / (precision + recall)


def predicted_label(prediction: str) -> str:
    """The normalised first non-empty line of a prediction (what a label classifier answered)."""
    for line in prediction.splitlines():
        label = normalize_text(line)
        if label:
            return label
    return ""


def label_match(prediction: str, reference: str) -> float:
    return float(predicted_label(prediction) == normalize_text(reference))


# ------------------------------------------------------------------------------------------ corpus


def _mean(values: Iterable[float]) -> float:
    values = list(values)
    return sum(values) / len(values)


def accuracy(predictions: Sequence[str], references: Sequence[str]) -> float:
    return _mean(label_match(p, r) for p, r in zip(predictions, references))


def macro_f1(predictions: Sequence[str], references: Sequence[str]) -> float:
    """Unweighted mean over the reference label classes of each class's F1 (see the module docstring)."""
    predicted = [predicted_label(p) for p in predictions]
    gold = [normalize_text(r) for r in references]
    scores = []
    for label in sorted(set(gold)):
        tp = sum(p == label and g == label for p, g in zip(predicted, gold))
        fp = sum(p == label and g != label for p, g in zip(predicted, gold))
        fn = sum(p != label and g == label for p, g in zip(predicted, gold))
        scores.append(2 * tp / (2 * tp + fp + fn))
    return _mean(scores)


def bleu_tokenizer(references: Sequence[str]) -> str:
    """sacrebleu tokenizer name: "zh" when any reference contains a Han character, else "13a"."""
    return "zh" if any(has_han(r) for r in references) else "13a"


def bleu(predictions: Sequence[str], references: Sequence[str]) -> float:
    """sacrebleu corpus BLEU, 0-100."""
    import sacrebleu

    result = sacrebleu.corpus_bleu([p.strip() for p in predictions], [[r.strip() for r in references]],
                                   tokenize=bleu_tokenizer(references))
    return float(result.score)


def rouge(predictions: Sequence[str], references: Sequence[str]) -> dict[str, float]:
    """Mean rouge1 / rouge2 / rougeL F-measures (0-1) with the CJK-aware tokenizer."""
    from rouge_score import rouge_scorer

    scorer = rouge_scorer.RougeScorer(list(ROUGE_TYPES), tokenizer=CjkWordTokenizer())
    totals = dict.fromkeys(ROUGE_TYPES, 0.0)
    for prediction, reference in zip(predictions, references):
        scores = scorer.score(reference, prediction)  # (target, prediction)
        for name in ROUGE_TYPES:
            totals[name] += scores[name].fmeasure
    return {name: total / len(predictions) for name, total in totals.items()}


def perplexity(total_nll: float, total_tokens: int) -> float:
    """exp(total_nll / total_tokens) (natural log); inf when it overflows. ValueError for no tokens."""
    if total_tokens <= 0:
        raise ValueError("perplexity needs at least one scored token")
    try:
        return math.exp(total_nll / total_tokens)
    except OverflowError:
        return math.inf


def score_generations(predictions: Sequence[str], references: Sequence[str],
                      metrics: Iterable[str]) -> dict[str, float]:
    """Score predictions against references: metric name -> value ("rouge" gives rouge1/rouge2/rougeL).

    `metrics` are names of GENERATION_METRICS. Raises ValueError for an unknown name, lists of different
    lengths or no rows.
    """
    metrics = list(dict.fromkeys(metrics))
    unknown = [m for m in metrics if m not in GENERATION_METRICS]
    if unknown:
        raise ValueError(f"unknown generation metric(s) {', '.join(unknown)}; use {', '.join(GENERATION_METRICS)}")
    if len(predictions) != len(references):
        raise ValueError(f"{len(predictions)} predictions for {len(references)} references")
    if not predictions:
        raise ValueError("nothing to score: no predictions")
    results: dict[str, float] = {}
    for name in metrics:
        if name == "exact_match":
            results[name] = _mean(exact_match(p, r) for p, r in zip(predictions, references))
        elif name == "f1":
            results[name] = _mean(token_f1(p, r) for p, r in zip(predictions, references))
        elif name == "accuracy":
            results[name] = accuracy(predictions, references)
        elif name == "macro_f1":
            results[name] = macro_f1(predictions, references)
        elif name == "bleu":
            results[name] = bleu(predictions, references)
        elif name == "rouge":
            results.update(rouge(predictions, references))
    return results
