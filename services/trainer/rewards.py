"""The server-side registry of reward functions for RL jobs (GRPO, RLOO, RFT).

Clients name rewards (`RewardFunctionConfig(name, weight, params, reward_model_id)`); they never send
code. The names come from two places:

* built-ins (below, and docs/trainer.md, "Reward functions"): `exact_match`, `numeric_match`,
  `math_equivalence`, `format_regex`, `length_penalty`, `language_consistency`, `keyword`, `reward_model`;
* operator entry points: any installed package that declares
  `[project.entry-points."lmforge.rewards"] my_reward = "pkg.mod:fn"`, where `fn` has TRL's reward
  signature `fn(prompts, completions, completion_ids=None, **kwargs) -> list[float | None]`. A built-in
  name wins over an entry point of the same name; an entry point that fails to load is logged and skipped.

Use:

    from services.trainer.rewards import build_reward_functions, check_reward_configs, required_columns
    violations = check_reward_configs(configs, "grpo.rewards", store=store)   # request time: [] when fine
    columns = required_columns(configs)                                        # e.g. {"answer"}
    funcs, weights = build_reward_functions(configs, store=store, device="cuda", log=ctx.log)
    GRPOTrainer(..., reward_funcs=funcs, args=GRPOConfig(reward_weights=weights, ...))
    funcs[0](prompts=["2+3?"], completions=["5"], answer=["5"])               # -> [1.0]

Every callable from `build_reward_functions` has `__name__` set to its config name (made unique:
`format_regex`, `format_regex_2`), which TRL uses for the `rewards/<name>/mean` metrics, and it never
raises on a sample: a sample whose scoring raises, or that gets a non-finite score, scores 0.0 and the
function logs one warning per call. `None` (TRL's "does not apply") also becomes 0.0, which is what TRL's
weighted sum makes of it anyway.

Built-in scores are in [0, 1] except `reward_model` (the model's raw score). The answer-checking rewards
(`exact_match`, `numeric_match`, `math_equivalence`) read the completion's *answer*: the text after the
last `</think>` when there is one, else the whole completion, so they combine with a think-format reward.

This module imports no torch, transformers or math-verify at import time (the servicer imports it to check
requests); math-verify is imported on first use, the reward model's libraries when it is first loaded.
"""

from __future__ import annotations

import dataclasses
import functools
import importlib.metadata
import inspect
import logging
import math
import re
import threading
import unicodedata
from collections.abc import Callable, Mapping, Sequence
from fractions import Fraction
from typing import Any

from services.common.errors import InvalidArgument, LmforgeError, Violation
from services.trainer.evaluation import normalize_text
from services.trainer.spec import RewardFunctionConfig

logger = logging.getLogger(__name__)

ENTRY_POINT_GROUP = "lmforge.rewards"
DEFAULT_FORMAT_PATTERN = r"^<think>[\s\S]+?</think>\s*\S[\s\S]*$"
MAX_PATTERN_CHARS = 2000
# Entry point names become metric names (`rewards/<name>/mean`) and request values.
_ENTRY_POINT_NAME = re.compile(r"[A-Za-z0-9][A-Za-z0-9_.-]{0,63}")

# log(message, level): RecipeContext.log has this shape.
Log = Callable[..., None]
# A built-in scores one sample: (prompt text, completion text, the row's dataset columns) -> score.
SampleScorer = Callable[[str, str, Mapping[str, Any]], float]


# ------------------------------------------------------------------------------------------- texts


def _content_text(content) -> str:
    """A message's content as text: a string, or the text parts of a multimodal parts list."""
    if content is None:
        return ""
    if isinstance(content, str):
        return content
    if isinstance(content, (list, tuple)):
        parts = []
        for part in content:
            if isinstance(part, str):
                parts.append(part)
            elif isinstance(part, Mapping) and isinstance(part.get("text"), str):
                parts.append(part["text"])
        return "".join(parts)
    return str(content)


def completion_text(completion) -> str:
    """The text of a completion: a string as is; a message list -> its last assistant message's content."""
    if isinstance(completion, str):
        return completion
    if isinstance(completion, Mapping):
        return _content_text(completion.get("content"))
    if isinstance(completion, (list, tuple)):
        for message in reversed(completion):
            if isinstance(message, Mapping) and message.get("role") == "assistant":
                return _content_text(message.get("content"))
        return ""
    return "" if completion is None else str(completion)


def prompt_text(prompt) -> str:
    """The text of a prompt: a string as is; a message list -> its last user message's content."""
    if isinstance(prompt, str):
        return prompt
    if isinstance(prompt, Mapping):
        return _content_text(prompt.get("content"))
    if isinstance(prompt, (list, tuple)):
        for message in reversed(prompt):
            if isinstance(message, Mapping) and message.get("role") == "user":
                return _content_text(message.get("content"))
        return ""
    return "" if prompt is None else str(prompt)


def answer_part(text: str) -> str:
    """The answer of a completion: the text after the last `</think>`, or the whole text without one."""
    end = text.rfind("</think>")
    return text[end + len("</think>"):] if end >= 0 else text


def _column_value(row: Mapping[str, Any], column: str):
    if column not in row:
        raise KeyError(f"the data has no column {column!r} (name it with params.column)")
    value = row[column]
    if value is None:
        raise ValueError(f"column {column!r} is empty in this row")
    return value


# -------------------------------------------------------------------------------------- built-ins


def _exact_match(params: Mapping[str, str]) -> SampleScorer:
    """`exact_match` (params: `column`, default "answer"): 1.0 when the completion's answer part equals
    the row's `column` value after `evaluation.normalize_text` on both (Unicode NFKC, case-fold, strip
    whitespace and punctuation, Chinese punctuation included, at both ends, collapse inner whitespace),
    else 0.0. "Paris." == "paris"; "北京。" == "北京"; "Paris, France" != "Paris France"."""
    column = params["column"]

    def score(prompt: str, completion: str, row: Mapping[str, Any]) -> float:
        return float(normalize_text(answer_part(completion)) == normalize_text(str(_column_value(row, column))))

    return score


# A number: optional sign (ASCII or Unicode minus), an integer with optional "," thousands separators and
# an optional decimal part (or a bare ".5"), optionally "/ denominator". Not glued to a preceding ASCII
# letter, digit, "_" or "." (so "x2", "v1.2.3"'s inner parts and "3.14"'s "14" are not numbers of their
# own); Chinese characters may touch it ("答案是42"). Text is NFKC-normalised first (full-width digits).
_NUMBER = re.compile(
    r"(?<![0-9A-Za-z_.])(?P<sign>[-+\u2212]?)"
    r"(?:(?P<int>\d{1,3}(?:,\d{3})+|\d+)(?:\.(?P<dec>\d+))?|\.(?P<bare>\d+))"
    r"(?:[ \t]*/[ \t]*(?P<den>\d+))?",
    re.ASCII,
)


def _number_of(match: re.Match) -> Fraction | None:
    if match["bare"] is not None:
        value = Fraction(f"0.{match['bare']}")
    else:
        value = Fraction(match["int"].replace(",", "") + (f".{match['dec']}" if match["dec"] else ""))
    if match["den"] is not None:
        denominator = int(match["den"])
        if denominator == 0:
            return None
        value /= denominator
    return -value if match["sign"] in ("-", "\u2212") else value


def last_number(text: str) -> Fraction | None:
    """The last number written in `text` (see `_NUMBER`), exactly, or None when there is none.

    "It costs $1,234.50." -> 1234.5; "答案是 -3/4。" -> -3/4; "x = .5" -> 1/2; "１２" -> 12; "no" -> None.
    """
    found = None
    for match in _NUMBER.finditer(unicodedata.normalize("NFKC", text)):
        value = _number_of(match)
        if value is not None:
            found = value
    return found


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
    `(?m)`, `(?s)`); anchor with `^`/`$` (or `\\A`/`\\Z`) to require the whole text to fit."""
    pattern = re.compile(params["pattern"])

    def score(prompt: str, completion: str, row: Mapping[str, Any]) -> float:
        return float(pattern.search(completion) is not None)

    return score


def _length_limits(params: Mapping[str, str]) -> tuple[float, float]:
    target = float(params["target_chars"])
    maximum = float(params["max_chars"]) if params.get("max_chars") else 2 * target
    return target, maximum


def _length_penalty(params: Mapping[str, str]) -> SampleScorer:
    """`length_penalty` (params: `target_chars`, default "200"; `max_chars`, default 2 * target_chars):
    with L = characters of the completion stripped of surrounding whitespace, 1.0 when L <= target_chars,
    0.0 when L >= max_chars, and (max_chars - L) / (max_chars - target_chars) between (linear). With the
    defaults: 200 chars -> 1.0, 300 -> 0.5, 400 and more -> 0.0."""
    target, maximum = _length_limits(params)

    def score(prompt: str, completion: str, row: Mapping[str, Any]) -> float:
        length = len(completion.strip())
        if length <= target:
            return 1.0
        if length >= maximum:
            return 0.0
        return (maximum - length) / (maximum - target)

    return score


# Han ideographs (CJK Unified + extensions A-F, compatibility ideographs and their supplement).
_HAN = re.compile("[\u3400-\u4dbf\u4e00-\u9fff\uf900-\ufaff"
                  "\U00020000-\U0002a6df\U0002a700-\U0002ebef\U0002f800-\U0002fa1f]")


# Markup whose letters say nothing about the language: LaTeX commands and tags like <think>, </answer>.
_MARKUP = re.compile(r"\\[A-Za-z]+|</?[A-Za-z][\w-]*>")


def is_chinese(text: str) -> bool:
    """True when more than half of the text's letters (str.isalpha(), which counts ideographs) are Han
    ideographs; the letters of LaTeX commands (`\\boxed`) and of tags (`<think>`, `</answer>`) are not
    counted. No letters: False."""
    letters = [ch for ch in _MARKUP.sub(" ", text) if ch.isalpha()]
    if not letters:
        return False
    return sum(1 for ch in letters if _HAN.match(ch)) / len(letters) > 0.5


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
class _Param:
    default: str | None = None  # None: no default (see `required`)
    kind: str = "text"  # "column" | "number" (finite, > 0) | "regex" | "text" (non-empty) | "choice"
    required: bool = False
    choices: tuple[str, ...] = ()


@dataclasses.dataclass(frozen=True)
class _Builtin:
    """A built-in reward: `make(params)` -> per-sample scorer; params with their defaults and checks."""

    make: Callable[[Mapping[str, str]], SampleScorer] | None
    params: Mapping[str, _Param] = dataclasses.field(default_factory=dict)
    needs_reward_model: bool = False


_COLUMN = _Param("answer", "column")
_BUILTINS: dict[str, _Builtin] = {
    "exact_match": _Builtin(_exact_match, {"column": _COLUMN}),
    "numeric_match": _Builtin(_numeric_match, {"column": _COLUMN, "tolerance": _Param("1e-6", "number")}),
    "math_equivalence": _Builtin(_math_equivalence, {"column": _COLUMN}),
    "format_regex": _Builtin(_format_regex, {"pattern": _Param(DEFAULT_FORMAT_PATTERN, "regex")}),
    "length_penalty": _Builtin(_length_penalty, {"target_chars": _Param("200", "number"),
                                                 "max_chars": _Param(None, "number")}),
    "language_consistency": _Builtin(_language_consistency),
    "keyword": _Builtin(_keyword, {"keyword": _Param(None, "text", required=True),
                                   "position": _Param("anywhere", "choice", choices=("anywhere", "start"))}),
    "reward_model": _Builtin(None, needs_reward_model=True),  # batch scoring, see _RewardModelScorer
}


def _resolved_params(builtin: _Builtin, params: Mapping[str, Any]) -> dict[str, str]:
    """The params with defaults filled in (values as strings; an absent optional param is omitted)."""
    out = {key: spec.default for key, spec in builtin.params.items() if spec.default is not None}
    out.update({key: str(value) for key, value in params.items()})
    return out


# ----------------------------------------------------------------------------------- entry points


@functools.lru_cache(maxsize=1)
def _entry_point_rewards() -> dict[str, Callable]:
    """Operator rewards from the `lmforge.rewards` entry point group, loaded once (see refresh_entry_points)."""
    found: dict[str, Callable] = {}
    try:
        entry_points = list(importlib.metadata.entry_points(group=ENTRY_POINT_GROUP))
    except Exception:  # a broken installed distribution must not take the registry down
        logger.warning("could not list %r entry points", ENTRY_POINT_GROUP, exc_info=True)
        return found
    for ep in entry_points:
        where = f"reward entry point {ep.name!r} ({ep.value})"
        if ep.name in _BUILTINS:
            logger.warning("%s: ignored, the built-in reward of that name wins", where)
            continue
        if ep.name in found:
            logger.warning("%s: ignored, another package already declared that name", where)
            continue
        if not _ENTRY_POINT_NAME.fullmatch(ep.name):
            logger.warning("%s: ignored, names are 1-64 characters of A-Z a-z 0-9 _ . - "
                           "starting with a letter or digit", where)
            continue
        try:
            fn = ep.load()
        except Exception:
            logger.warning("%s: ignored, it failed to load", where, exc_info=True)
            continue
        if not callable(fn) or inspect.iscoroutinefunction(fn):
            logger.warning("%s: ignored, it is not a (synchronous) function", where)
            continue
        found[ep.name] = fn
    return found


def refresh_entry_points() -> None:
    """Forget the discovered entry points, so the next lookup scans installed packages again."""
    _entry_point_rewards.cache_clear()


def available_reward_names() -> list[str]:
    """Every reward name a request may use, sorted: built-ins and operator entry points."""
    return sorted(set(_BUILTINS) | set(_entry_point_rewards()))


def _entry_point(name: str) -> Callable | None:
    return None if name in _BUILTINS else _entry_point_rewards().get(name)


# ------------------------------------------------------------------------------------- validation


def _available_hint() -> str:
    return "available reward functions: " + ", ".join(available_reward_names())


def _check_param(where: str, spec: _Param, value) -> list[Violation]:
    text = str(value)
    if spec.kind == "column" and not text.strip():
        return [Violation(0, where, "must name a dataset column", 'e.g. "answer"')]
    if spec.kind == "text" and not text:
        return [Violation(0, where, "must not be empty")]
    if spec.kind == "choice" and text not in spec.choices:
        return [Violation(0, where, f"{text!r} is not one of {', '.join(spec.choices)}")]
    if spec.kind == "number":
        try:
            number = float(text)
        except ValueError:
            return [Violation(0, where, f"{text!r} is not a number", "e.g. \"200\"")]
        if not math.isfinite(number) or number <= 0:
            return [Violation(0, where, f"must be a finite number > 0, got {text}")]
    if spec.kind == "regex":
        if len(text) > MAX_PATTERN_CHARS:
            return [Violation(0, where, f"is {len(text)} characters; at most {MAX_PATTERN_CHARS}")]
        try:
            re.compile(text)
        except re.error as exc:
            return [Violation(0, where, f"is not a valid regular expression: {exc}",
                              "Python `re` syntax; the completion must contain a match (re.search)")]
    return []


def _check_reward_model_id(where: str, reward_model_id: str, store) -> list[Violation]:
    from services.common.store import EntryKind

    try:
        manifest = store.get(reward_model_id, where)
    except LmforgeError as exc:
        return [Violation(0, where, f"no reward model {reward_model_id!r} in the checkpoint store",
                          exc.violations[0].hint if exc.violations else "list them with `lmforge checkpoints`")]
    if manifest.kind is not EntryKind.REWARD_MODEL:
        return [Violation(0, where, f"{reward_model_id!r} is a {manifest.kind.value}, not a reward model",
                          "train one with the `reward` method and pass its checkpoint id")]
    return []


def check_reward_configs(configs: Sequence[RewardFunctionConfig], field: str, *, store=None) -> list[Violation]:
    """Every problem with a request's rewards (empty: fine), fields named `f"{field}[{i}].name"` etc.

    Checks: at least one reward; every name is in the registry (the hint lists all available names);
    weights finite and not all zero; a built-in's params are known, well-formed (numbers > 0, patterns
    compile, keyword non-empty) and required ones present; `reward_model` has a `reward_model_id` (and
    with `store`, that id is a REWARD_MODEL entry), other rewards have none. Entry-point rewards take
    any params (they receive them as `reward_params`).
    """
    if not configs:
        return [Violation(0, field, "no reward functions", "name at least one; " + _available_hint())]
    violations: list[Violation] = []
    weights: list[float] = []
    for i, config in enumerate(configs):
        at = f"{field}[{i}]"
        builtin = _BUILTINS.get(config.name)
        if builtin is None and _entry_point(config.name) is None:
            violations.append(Violation(0, f"{at}.name", f"unknown reward function {config.name!r}",
                                        _available_hint()))
        try:
            weight = float(config.weight)
        except (TypeError, ValueError):
            weight = math.nan
        if not math.isfinite(weight):
            violations.append(Violation(0, f"{at}.weight", f"must be a finite number, got {config.weight!r}"))
        else:
            weights.append(weight)
        params = dict(config.params or {})
        if builtin is not None:
            for key, value in params.items():
                spec = builtin.params.get(key)
                if spec is None:
                    known = ", ".join(sorted(builtin.params)) or "none"
                    violations.append(Violation(0, f"{at}.params.{key}",
                                                f"{config.name} has no parameter {key!r}",
                                                f"its parameters: {known}"))
                else:
                    violations.extend(_check_param(f"{at}.params.{key}", spec, value))
            for key, spec in builtin.params.items():
                if spec.required and key not in params:
                    violations.append(Violation(0, f"{at}.params.{key}", f"{config.name} needs {key!r}"))
            if config.name == "length_penalty" and not any(v.field.startswith(f"{at}.params") for v in violations):
                target, maximum = _length_limits(_resolved_params(builtin, params))
                if maximum <= target:
                    violations.append(Violation(0, f"{at}.params.max_chars",
                                                f"must be greater than target_chars ({target:g})"))
        if builtin is not None and builtin.needs_reward_model:
            if not config.reward_model_id:
                violations.append(Violation(0, f"{at}.reward_model_id", "reward_model needs a reward model id",
                                            "the checkpoint id of a `reward` job (kind reward_model)"))
            elif store is not None:
                violations.extend(_check_reward_model_id(f"{at}.reward_model_id", config.reward_model_id, store))
        elif config.reward_model_id:
            violations.append(Violation(0, f"{at}.reward_model_id", f"{config.name} takes no reward model",
                                        "use the reward function named reward_model to score with one"))
    if weights and len(weights) == len(configs) and all(w == 0 for w in weights):
        violations.append(Violation(0, field, "every reward weight is 0, so nothing would be learned",
                                    "give at least one reward a non-zero weight"))
    return violations


def required_columns(configs: Sequence[RewardFunctionConfig]) -> set[str]:
    """Dataset columns the rewards read on every row: built-ins' `column` params (default "answer") and
    an entry point's `required_columns` attribute, if it has one. Unknown names are skipped."""
    columns: set[str] = set()
    for config in configs:
        builtin = _BUILTINS.get(config.name)
        if builtin is not None:
            if "column" in builtin.params:
                columns.add(_resolved_params(builtin, config.params or {})["column"])
            continue
        fn = _entry_point(config.name)
        if fn is not None:
            declared = getattr(fn, "required_columns", ())
            columns.update([declared] if isinstance(declared, str) else declared)
    return columns


# ---------------------------------------------------------------------------------------- running


class RolloutRecorder:
    """The latest reward batch's prompts, completions and per-function scores, for showing samples.

    Each wrapped reward function records its scores as it is called; calls on the same prompts and
    completions by different functions join one batch, and any other call starts a new one (dropping
    the old), so memory holds one batch. `drain` returns and clears it. Safe to use from several threads.
    """

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._batch: dict | None = None

    def record(self, name: str, weight: float, prompts: Sequence[str], completions: Sequence[str],
               scores: Sequence[float]) -> None:
        with self._lock:
            batch = self._batch
            if (batch is None or name in batch["scores"] or batch["prompts"] != list(prompts)
                    or batch["completions"] != list(completions)):
                batch = self._batch = {"prompts": list(prompts), "completions": list(completions),
                                       "scores": {}, "weights": {}}
            batch["scores"][name] = list(scores)
            batch["weights"][name] = float(weight)

    def drain(self, max_prompts: int = 2) -> list[dict]:
        """`[{"prompt", "completions": [{"text", "reward" (weighted total), "rewards": {fn: score}}]}]`
        for the first `max_prompts` distinct prompts of the latest batch (completions of one prompt
        grouped in order), and forget the batch."""
        with self._lock:
            batch, self._batch = self._batch, None
        if batch is None or max_prompts <= 0:
            return []
        groups: dict[str, list[dict]] = {}
        for i, (prompt, text) in enumerate(zip(batch["prompts"], batch["completions"])):
            if prompt not in groups:
                if len(groups) >= max_prompts:
                    continue
                groups[prompt] = []
            rewards = {name: scores[i] for name, scores in batch["scores"].items() if i < len(scores)}
            total = sum(batch["weights"][name] * score for name, score in rewards.items())
            groups[prompt].append({"text": text, "reward": total, "rewards": rewards})
        return [{"prompt": prompt, "completions": items} for prompt, items in groups.items()]


class _RewardModelScorer:
    """`reward_model` (no params; `reward_model_id`: a REWARD_MODEL store entry): the model's raw scalar
    score of each (prompt, completion), as `recipes.reward.score` renders them (the chat template when the
    tokenizer has one); unbounded, higher is better, so scale it with the weight. The model is loaded
    with `recipes.reward.load_reward_model` on first use, once, under a lock."""

    def __init__(self, store, reward_model_id: str, device: str):
        self.store, self.reward_model_id, self.device = store, reward_model_id, device
        self._lock = threading.Lock()
        self._loaded = None

    def prepare(self) -> None:
        # A model that cannot be loaded is no per-sample problem: let it fail the job with its message.
        with self._lock:
            if self._loaded is None:
                from services.trainer.recipes.reward import load_reward_model

                self._loaded = load_reward_model(self.store, self.reward_model_id, device=self.device)

    def __call__(self, prompts, completions, completion_ids=None, **kwargs) -> list[float]:
        from services.trainer.recipes.reward import score

        self.prepare()
        model, tokenizer = self._loaded
        return score(model, tokenizer, prompts, completions)


def _default_log(message: str, level: str = "info") -> None:
    logger.log(logging.WARNING if level == "warning" else logging.INFO, message)


def _sample_kwargs(kwargs: Mapping[str, Any], i: int, n: int) -> dict[str, Any]:
    """The per-completion columns of one sample as 1-element lists; other kwargs as they are."""
    return {key: [value[i]] if isinstance(value, (list, tuple)) and len(value) == n else value
            for key, value in kwargs.items()}


class _Problems:
    """What went wrong in one call of one reward function, reported as one warning."""

    def __init__(self) -> None:
        self.failed: list[tuple[int, BaseException]] = []
        self.non_finite: list[tuple[int, Any]] = []
        self.batch_error: BaseException | None = None

    def message(self, name: str, n: int) -> str:
        parts = []
        if self.batch_error is not None:
            parts.append(f"the batch call failed ({_describe(self.batch_error)}), so it was scored sample by sample")
        if self.failed:
            i, exc = self.failed[0]
            parts.append(f"{len(self.failed)} of {n} samples raised and scored 0 (first: sample {i}: "
                         f"{_describe(exc)})")
        if self.non_finite:
            i, value = self.non_finite[0]
            parts.append(f"{len(self.non_finite)} of {n} samples got no finite score and scored 0 "
                         f"(first: sample {i}: {value!r})")
        return f"reward function {name!r}: " + "; ".join(parts)

    def __bool__(self) -> bool:
        return bool(self.failed or self.non_finite or self.batch_error is not None)


def _describe(exc: BaseException) -> str:
    text = f"{type(exc).__name__}: {exc}"
    return text if len(text) <= 300 else text[:297] + "..."


class RewardFunction:
    """A named reward callable with TRL's signature that never raises on a sample (see module doc).

    Built-ins score sample by sample on text (message-form prompts and completions reduced by
    `prompt_text` / `completion_text`). Batch functions (entry points, reward_model) get the inputs as
    TRL gave them; when the batch call raises or returns the wrong number of scores, each sample is
    scored alone so only the failing ones score 0.
    """

    def __init__(self, name: str, weight: float, *, sample: SampleScorer | None = None,
                 batch: Callable | None = None, params: Mapping[str, str] | None = None,
                 log: Log | None = None, recorder: RolloutRecorder | None = None):
        self.__name__ = self.__qualname__ = name
        self.weight = weight
        self._sample, self._batch = sample, batch
        self._params = None if params is None else dict(params)
        self._log = log or _default_log
        self._recorder = recorder

    def __repr__(self) -> str:
        return f"RewardFunction({self.__name__!r}, weight={self.weight})"

    def __call__(self, prompts, completions, completion_ids=None, **kwargs) -> list[float]:
        prompts, completions = list(prompts), list(completions)
        n = len(completions)
        prompt_texts = [prompt_text(prompts[i]) if i < len(prompts) else "" for i in range(n)]
        texts = [completion_text(c) for c in completions]
        problems = _Problems()
        if self._sample is not None:
            raw = []
            for i in range(n):
                try:
                    row = {key: value[i] for key, value in kwargs.items()
                           if isinstance(value, (list, tuple)) and len(value) == n}
                    raw.append(self._sample(prompt_texts[i], texts[i], row))
                except Exception as exc:
                    problems.failed.append((i, exc))
                    raw.append(0.0)
        else:
            raw = self._call_batch(prompts, completions, completion_ids, kwargs, n, problems)
        scores = [self._as_score(i, value, problems) for i, value in enumerate(raw)]
        if problems:
            self._log(problems.message(self.__name__, n), "warning")
        if self._recorder is not None:
            self._recorder.record(self.__name__, self.weight, prompt_texts, texts, scores)
        return scores

    def _call_batch(self, prompts, completions, completion_ids, kwargs, n: int, problems: _Problems) -> list:
        prepare = getattr(self._batch, "prepare", None)
        if prepare is not None:
            prepare()
        # Entry points get their request params; the reward model takes none.
        extra = {} if self._params is None else {"reward_params": dict(self._params)}
        try:
            result = list(self._batch(prompts=prompts, completions=completions, completion_ids=completion_ids,
                                      **kwargs, **extra))
            if len(result) != n:
                raise ValueError(f"returned {len(result)} scores for {n} completions")
            return result
        except Exception as exc:
            problems.batch_error = exc
        raw: list = []
        for i in range(n):
            try:
                ids = [completion_ids[i]] if isinstance(completion_ids, (list, tuple)) and len(completion_ids) == n \
                    else completion_ids
                one = list(self._batch(prompts=[prompts[i]] if i < len(prompts) else [""],
                                       completions=[completions[i]], completion_ids=ids,
                                       **_sample_kwargs(kwargs, i, n), **extra))
                if len(one) != 1:
                    raise ValueError(f"returned {len(one)} scores for 1 completion")
                raw.append(one[0])
            except Exception as exc:
                problems.failed.append((i, exc))
                raw.append(0.0)
        return raw

    @staticmethod
    def _as_score(i: int, value, problems: _Problems) -> float:
        if value is None:  # TRL's "does not apply": its weighted sum counts it as 0 too
            return 0.0
        try:
            score = float(value)
        except (TypeError, ValueError):
            problems.non_finite.append((i, value))
            return 0.0
        if not math.isfinite(score):
            problems.non_finite.append((i, value))
            return 0.0
        return score


def _unique_names(names: Sequence[str]) -> list[str]:
    taken: set[str] = set()
    out = []
    for name in names:
        unique, k = name, 1
        while unique in taken:
            k += 1
            unique = f"{name}_{k}"
        taken.add(unique)
        out.append(unique)
    return out


def build_reward_functions(configs: Sequence[RewardFunctionConfig], *, store=None, device: str = "cpu",
                           log: Log | None = None, recorder: RolloutRecorder | None = None,
                           ) -> tuple[list[Callable], list[float]]:
    """TRL-signature reward callables for `configs` (each `__name__` = its unique config name) and their
    weights, in order. `log(message, level)` receives the per-call warnings (default: this module's
    logger); `recorder` collects each call's scores. `store` is needed for `reward_model`, whose model
    is loaded on `device` at its first call (a load failure raises then: it fails the job).

    Raises InvalidArgument with every violation of `check_reward_configs` (field "rewards").
    """
    violations = check_reward_configs(configs, "rewards")
    if any(config.name == "reward_model" for config in configs) and store is None:
        violations.append(Violation(0, "rewards", "reward_model needs the checkpoint store"))
    if violations:
        raise InvalidArgument("rewards: " + "; ".join(str(v) for v in violations), violations)
    functions: list[Callable] = []
    weights: list[float] = []
    for config, name in zip(configs, _unique_names([c.name for c in configs])):
        builtin = _BUILTINS.get(config.name)
        if builtin is not None and builtin.needs_reward_model:
            fn = RewardFunction(name, float(config.weight), batch=_RewardModelScorer(store, config.reward_model_id,
                                                                                      device),
                                log=log, recorder=recorder)
        elif builtin is not None:
            fn = RewardFunction(name, float(config.weight),
                                sample=builtin.make(_resolved_params(builtin, config.params or {})),
                                log=log, recorder=recorder)
        else:
            fn = RewardFunction(name, float(config.weight), batch=_entry_point(config.name),
                                params=config.params or {}, log=log, recorder=recorder)
        functions.append(fn)
        weights.append(float(config.weight))
    return functions, weights
