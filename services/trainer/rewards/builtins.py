"""The built-in rewards: one scorer factory each, with its params, their defaults and how they are checked.

A factory takes the request's params (defaults filled in, values as strings) and returns a per-sample
scorer `(prompt text, completion text, the row's dataset columns) -> score in [0, 1]`. `BUILTINS` is the
table the registry (registry.py) checks requests against and the runtime (runtime.py) builds from.
Pure Python; math-verify is imported on first use.
"""

from __future__ import annotations

import dataclasses
import functools
import math
import regex
import threading
from collections.abc import Callable, Mapping
from fractions import Fraction
from typing import Any

from services.trainer.evaluation import normalize_text
from services.trainer.rewards.texts import answer_part, is_chinese, last_number

DEFAULT_FORMAT_PATTERN = r"^<think>[\s\S]+?</think>\s*\S[\s\S]*$"
# How long format_regex's client pattern may search one completion.
REGEX_TIMEOUT_SECONDS = 0.5
# A built-in scores one sample: (prompt text, completion text, the row's dataset columns) -> score.
SampleScorer = Callable[[str, str, Mapping[str, Any]], float]


def _column_value(row: Mapping[str, Any], column: str):
    if column not in row:
        raise KeyError(f"the data has no column {column!r} (name it with params.column)")
    value = row[column]
    if value is None:
        raise ValueError(f"column {column!r} is empty in this row")
    return value


def _exact_match(params: Mapping[str, str]) -> SampleScorer:
    """`exact_match` (params: `column`, default "answer"): 1.0 when the completion's answer part equals
    the row's `column` value after `evaluation.normalize_text` on both (Unicode NFKC, case-fold, strip
    whitespace and punctuation, Chinese punctuation included, at both ends, collapse inner whitespace),
    else 0.0. "Paris." == "paris"; "北京。" == "北京"; "Paris, France" != "Paris France"."""
    column = params["column"]

    def score(prompt: str, completion: str, row: Mapping[str, Any]) -> float:
        return float(normalize_text(answer_part(completion)) == normalize_text(str(_column_value(row, column))))

    return score


def _gold_number(value, column: str) -> Fraction:
    if isinstance(value, bool):
        raise ValueError(f"column {column!r} holds a boolean, not a number")
    if isinstance(value, (int, float)):
        if not math.isfinite(value):
            raise ValueError(f"column {column!r} holds {value}")
        return Fraction(value)
    number = last_number(str(value))
    if number is None:
        raise ValueError(f"column {column!r} holds no number: {str(value)[:80]!r}")
    return number


def _numeric_match(params: Mapping[str, str]) -> SampleScorer:
    """`numeric_match` (params: `column`, default "answer"; `tolerance`, default "1e-6"): 1.0 when the last
    number of the completion's answer part (`last_number`: integers, decimals, signs, "," thousands
    separators, fractions "3/4", full-width digits) is within `tolerance` (absolute, exact arithmetic) of
    the row's `column` value (a number, or the last number in its text, so "#### 72" gives 72), else 0.0;
    0.0 when the completion has no number. A row whose column has no number raises (scored 0, warned)."""
    column = params["column"]
    tolerance = Fraction(params["tolerance"])

    def score(prompt: str, completion: str, row: Mapping[str, Any]) -> float:
        gold = _gold_number(_column_value(row, column), column)
        predicted = last_number(answer_part(completion))
        return float(predicted is not None and abs(predicted - gold) <= tolerance)

    return score


def _math_timeout() -> int | None:
    # math-verify's timeouts use signal.alarm, which works only in the main thread; elsewhere it would
    # raise, so off the main thread it runs without one.
    return 5 if threading.current_thread() is threading.main_thread() else None


@functools.lru_cache(maxsize=4096)
def _parse_gold(gold: str, timeout: int | None) -> tuple:
    from math_verify import parse

    parsed = parse(gold, parsing_timeout=timeout)
    if not parsed and "$" not in gold and "\\boxed" not in gold:
        # A bare LaTeX answer ("\\sqrt{2}", "x+1") is only found inside math delimiters.
        parsed = parse(f"${gold}$", parsing_timeout=timeout)
    return tuple(parsed)


def _math_equivalence(params: Mapping[str, str]) -> SampleScorer:
    """`math_equivalence` (params: `column`, default "answer"): 1.0 when math-verify finds the answer part's
    final answer (`math_verify.parse`: the last \\boxed{} first, else the last LaTeX or plain expression)
    equivalent (`math_verify.verify(gold, answer)`: symbolic and numeric, 6-digit float rounding) to the
    row's `column` value parsed the same way (a bare LaTeX gold like "\\frac{1}{2}" is read as math),
    else 0.0; 0.0 when either side cannot be parsed. "\\boxed{2}" ~ "2", "0.5" ~ "\\frac{1}{2}".
    Parsing and verifying time out after 5 s each in the main thread; other threads run without a timeout
    (math-verify's timeout uses signal.alarm)."""
    column = params["column"]

    def score(prompt: str, completion: str, row: Mapping[str, Any]) -> float:
        from math_verify import parse, verify

        timeout = _math_timeout()
        gold = _parse_gold(str(_column_value(row, column)).strip(), timeout)
        if not gold:
            return 0.0
        predicted = parse(answer_part(completion), parsing_timeout=timeout)
        if not predicted:
            return 0.0
        return float(verify(list(gold), predicted, timeout_seconds=timeout))

    return score


def _format_regex(params: Mapping[str, str]) -> SampleScorer:
    """`format_regex` (params: `pattern`, default DEFAULT_FORMAT_PATTERN = a `<think>...</think>` block at the
    very start, then a non-empty answer): 1.0 when `re.search(pattern, completion)` finds a match in the
    whole, unstripped completion text, else 0.0. Python `re` syntax without flags (use inline `(?i)`,
    `(?m)`, `(?s)`); anchor with `^`/`$` (or `\\A`/`\\Z`) to require the whole text to fit.

    The pattern comes from a client, so it runs on the `regex` module (the same syntax) with a time limit
    per completion: a pattern that backtracks catastrophically (`(a|aa)+$`) raises TimeoutError, which the
    reward function turns into a score of 0 with a warning, instead of freezing the job."""
    pattern = regex.compile(params["pattern"])

    def score(prompt: str, completion: str, row: Mapping[str, Any]) -> float:
        try:
            return float(pattern.search(completion, timeout=REGEX_TIMEOUT_SECONDS) is not None)
        except TimeoutError:
            raise TimeoutError(f"the pattern took more than {REGEX_TIMEOUT_SECONDS} s on this completion "
                               "(catastrophic backtracking?); simplify format_regex's pattern") from None

    return score


def length_limits(params: Mapping[str, str]) -> tuple[float, float]:
    target = float(params["target_chars"])
    maximum = float(params["max_chars"]) if params.get("max_chars") else 2 * target
    return target, maximum


def _length_penalty(params: Mapping[str, str]) -> SampleScorer:
    """`length_penalty` (params: `target_chars`, default "200"; `max_chars`, default 2 * target_chars):
    with L = characters of the completion stripped of surrounding whitespace, 1.0 when L <= target_chars,
    0.0 when L >= max_chars, and (max_chars - L) / (max_chars - target_chars) between (linear). With the
    defaults: 200 chars -> 1.0, 300 -> 0.5, 400 and more -> 0.0."""
    target, maximum = length_limits(params)

    def score(prompt: str, completion: str, row: Mapping[str, Any]) -> float:
        length = len(completion.strip())
        if length <= target:
            return 1.0
        if length >= maximum:
            return 0.0
        return (maximum - length) / (maximum - target)

    return score


def _language_consistency(params: Mapping[str, str]) -> SampleScorer:
    """`language_consistency` (no params): 1.0 when the completion and the prompt (its last user message
    for chat prompts) are both Chinese or both not (`is_chinese`: more than half of the letters are Han
    ideographs), else 0.0; an empty (or all-whitespace) completion scores 0.0."""

    def score(prompt: str, completion: str, row: Mapping[str, Any]) -> float:
        if not completion.strip():
            return 0.0
        return float(is_chinese(prompt) == is_chinese(completion))

    return score


def _keyword(params: Mapping[str, str]) -> SampleScorer:
    """`keyword` (params: `keyword`, required; `position`: "anywhere" (default) or "start"): 1.0 when the
    completion contains `keyword` (case-sensitive, as written), or with "start" when the completion with
    leading whitespace removed starts with it, else 0.0."""
    keyword, at_start = params["keyword"], params["position"] == "start"

    def score(prompt: str, completion: str, row: Mapping[str, Any]) -> float:
        return float(completion.lstrip().startswith(keyword) if at_start else keyword in completion)

    return score


@dataclasses.dataclass(frozen=True)
class Param:
    default: str | None = None  # None: no default (see `required`)
    kind: str = "text"  # "column" | "number" (finite, > 0) | "regex" | "text" (non-empty) | "choice"
    required: bool = False
    choices: tuple[str, ...] = ()


@dataclasses.dataclass(frozen=True)
class Builtin:
    """A built-in reward: `make(params)` -> per-sample scorer; params with their defaults and checks."""

    make: Callable[[Mapping[str, str]], SampleScorer] | None
    params: Mapping[str, Param] = dataclasses.field(default_factory=dict)
    needs_reward_model: bool = False


_COLUMN = Param("answer", "column")
BUILTINS: dict[str, Builtin] = {
    "exact_match": Builtin(_exact_match, {"column": _COLUMN}),
    "numeric_match": Builtin(_numeric_match, {"column": _COLUMN, "tolerance": Param("1e-6", "number")}),
    "math_equivalence": Builtin(_math_equivalence, {"column": _COLUMN}),
    "format_regex": Builtin(_format_regex, {"pattern": Param(DEFAULT_FORMAT_PATTERN, "regex")}),
    "length_penalty": Builtin(_length_penalty, {"target_chars": Param("200", "number"),
                                                 "max_chars": Param(None, "number")}),
    "language_consistency": Builtin(_language_consistency),
    "keyword": Builtin(_keyword, {"keyword": Param(None, "text", required=True),
                                   "position": Param("anywhere", "choice", choices=("anywhere", "start"))}),
    "reward_model": Builtin(None, needs_reward_model=True),  # batch scoring, see _RewardModelScorer
}


def resolved_params(builtin: Builtin, params: Mapping[str, Any]) -> dict[str, str]:
    """The params with defaults filled in (values as strings; an absent optional param is omitted)."""
    out = {key: spec.default for key, spec in builtin.params.items() if spec.default is not None}
    out.update({key: str(value) for key, value in params.items()})
    return out
