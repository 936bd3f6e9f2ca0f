"""The reward registry as requests see it: names, params, checks and required columns (no torch).

Clients name rewards (`RewardFunctionSpec(name, weight, params, reward_model_id)`); they never send code.
The names are the built-ins (builtins.py) and operator entry points: any installed package that declares
`[project.entry-points."lmforge.rewards"] my_reward = "pkg.mod:fn"`, where `fn` has TRL's reward signature
`fn(prompts, completions, completion_ids=None, **kwargs) -> list[float | None]`. A built-in name wins over
an entry point of the same name; an entry point that fails to load is logged and skipped.

    violations = check_reward_specs(specs, "grpo.rewards")   # request time: [] when fine
    columns = required_columns(specs)                         # e.g. {"answer"}

Whether a `reward_model_id` names a REWARD_MODEL of the store is checked by admission
(services/trainer/admission.py), which has the store.
"""

from __future__ import annotations

import functools
import importlib.metadata
import inspect
import logging
import math
import re
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field

import regex

from services.common.errors import Violation
from services.trainer.rewards.builtins import BUILTINS, Param, length_limits, resolved_params

logger = logging.getLogger(__name__)

ENTRY_POINT_GROUP = "lmforge.rewards"
MAX_PATTERN_CHARS = 2000
# Entry point names become metric names (`rewards/<name>/mean`) and request values.
_ENTRY_POINT_NAME = re.compile(r"[A-Za-z0-9][A-Za-z0-9_.-]{0,63}")


@dataclass
class RewardFunctionSpec:
    """One reward of the registry, by name, with its weight (the proto's `RewardFunction`)."""

    name: str
    weight: float = 1.0
    params: dict[str, str] = field(default_factory=dict)
    reward_model_id: str = ""  # for name "reward_model"


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
        if ep.name in BUILTINS:
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
    return sorted(set(BUILTINS) | set(_entry_point_rewards()))


def entry_point(name: str) -> Callable | None:
    return None if name in BUILTINS else _entry_point_rewards().get(name)


# ------------------------------------------------------------------------------------- validation


def _available_hint() -> str:
    return "available reward functions: " + ", ".join(available_reward_names())


def _check_param(where: str, spec: Param, value) -> list[Violation]:
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
            regex.compile(text)  # what format_regex runs it with (builtins._format_regex)
        except regex.error as exc:
            return [Violation(0, where, f"is not a valid regular expression: {exc}",
                              "Python `re` syntax; the completion must contain a match (re.search)")]
    return []


def check_reward_specs(configs: Sequence[RewardFunctionSpec], field: str) -> list[Violation]:
    """Every problem with a request's rewards (empty: fine), fields named `f"{field}[{i}].name"` etc.

    Checks: at least one reward; every name is in the registry (the hint lists all available names);
    weights finite and not all zero; a built-in's params are known, well-formed (numbers > 0, patterns
    compile, keyword non-empty) and required ones present; `reward_model` has a `reward_model_id` (admission
    checks that it names a REWARD_MODEL of the store), other rewards have none. Entry-point rewards take
    any params (they receive them as `reward_params`).
    """
    if not configs:
        return [Violation(0, field, "no reward functions", "name at least one; " + _available_hint())]
    violations: list[Violation] = []
    weights: list[float] = []
    for i, config in enumerate(configs):
        at = f"{field}[{i}]"
        builtin = BUILTINS.get(config.name)
        if builtin is None and entry_point(config.name) is None:
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
                target, maximum = length_limits(resolved_params(builtin, params))
                if maximum <= target:
                    violations.append(Violation(0, f"{at}.params.max_chars",
                                                f"must be greater than target_chars ({target:g})"))
        if builtin is not None and builtin.needs_reward_model:
            if not config.reward_model_id:
                violations.append(Violation(0, f"{at}.reward_model_id", "reward_model needs a reward model id",
                                            "the checkpoint id of a `reward` job (kind reward_model)"))
        elif config.reward_model_id:
            violations.append(Violation(0, f"{at}.reward_model_id", f"{config.name} takes no reward model",
                                        "use the reward function named reward_model to score with one"))
    if weights and len(weights) == len(configs) and all(w == 0 for w in weights):
        violations.append(Violation(0, field, "every reward weight is 0, so nothing would be learned",
                                    "give at least one reward a non-zero weight"))
    return violations


def required_columns(configs: Sequence[RewardFunctionSpec]) -> set[str]:
    """Dataset columns the rewards read on every row: built-ins' `column` params (default "answer") and
    an entry point's `required_columns` attribute, if it has one. Unknown names are skipped."""
    columns: set[str] = set()
    for config in configs:
        builtin = BUILTINS.get(config.name)
        if builtin is not None:
            if "column" in builtin.params:
                columns.add(resolved_params(builtin, config.params or {})["column"])
            continue
        fn = entry_point(config.name)
        if fn is not None:
            declared = getattr(fn, "required_columns", ())
            columns.update([declared] if isinstance(declared, str) else declared)
    return columns
