"""Reward functions at work, in the worker: TRL-signature callables built from the request's specs.

    funcs, weights = build_reward_functions(specs, store=store, device="cuda", log=ctx.log)
    GRPOTrainer(..., reward_funcs=funcs, args=GRPOConfig(reward_weights=weights, ...))
    funcs[0](prompts=["2+3?"], completions=["5"], answer=["5"])               # -> [1.0]

Every callable has `__name__` set to its spec's name (made unique: `format_regex`, `format_regex_2`), which
TRL uses for the `rewards/<name>/mean` metrics, and it never raises on a sample: a sample whose scoring
raises, or that gets a non-finite score, scores 0.0 and the function logs one warning per call. `None`
(TRL's "does not apply") also becomes 0.0, which is what TRL's weighted sum makes of it anyway.

Built-in scores are in [0, 1] except `reward_model` (the model's raw score). The answer-checking rewards
(`exact_match`, `numeric_match`, `math_equivalence`) read the completion's *answer*: the text after the
last `</think>` when there is one, else the whole completion, so they combine with a think-format reward.
"""

from __future__ import annotations

import logging
import math
import threading
from collections.abc import Callable, Mapping, Sequence
from typing import Any

from services.common.errors import InvalidArgument, Violation
from services.trainer.rewards.builtins import BUILTINS, SampleScorer, resolved_params
from services.trainer.rewards.registry import RewardFunctionSpec, check_reward_specs, entry_point
from services.trainer.rewards.reward_model import load_reward_model, score
from services.trainer.rewards.texts import completion_text, prompt_text

logger = logging.getLogger(__name__)

# log(message, level): RecipeContext.log has this shape.
Log = Callable[..., None]


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
    score of each (prompt, completion), as `reward_model.score` renders them (the chat template when the
    tokenizer has one); unbounded, higher is better, so scale it with the weight. The model is loaded
    with `reward_model.load_reward_model` on first use, once, under a lock."""

    def __init__(self, store, reward_model_id: str, device: str):
        self.store, self.reward_model_id, self.device = store, reward_model_id, device
        self._lock = threading.Lock()
        self._loaded = None

    def prepare(self) -> None:
        # A model that cannot be loaded is no per-sample problem: let it fail the job with its message.
        with self._lock:
            if self._loaded is None:
                self._loaded = load_reward_model(self.store, self.reward_model_id, device=self.device)

    def __call__(self, prompts, completions, completion_ids=None, **kwargs) -> list[float]:
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


def build_reward_functions(configs: Sequence[RewardFunctionSpec], *, store=None, device: str = "cpu",
                           log: Log | None = None, recorder: RolloutRecorder | None = None,
                           ) -> tuple[list[Callable], list[float]]:
    """TRL-signature reward callables for `configs` (each `__name__` = its unique config name) and their
    weights, in order. `log(message, level)` receives the per-call warnings (default: this module's
    logger); `recorder` collects each call's scores. `store` is needed for `reward_model`, whose model
    is loaded on `device` at its first call (a load failure raises then: it fails the job).

    Raises InvalidArgument with every violation of `check_reward_configs` (field "rewards").
    """
    violations = check_reward_specs(configs, "rewards")
    if any(config.name == "reward_model" for config in configs) and store is None:
        violations.append(Violation(0, "rewards", "reward_model needs the checkpoint store"))
    if violations:
        raise InvalidArgument("rewards: " + "; ".join(str(v) for v in violations), violations)
    functions: list[Callable] = []
    weights: list[float] = []
    for config, name in zip(configs, _unique_names([c.name for c in configs])):
        builtin = BUILTINS.get(config.name)
        if builtin is not None and builtin.needs_reward_model:
            fn = RewardFunction(name, float(config.weight), batch=_RewardModelScorer(store, config.reward_model_id,
                                                                                      device),
                                log=log, recorder=recorder)
        elif builtin is not None:
            fn = RewardFunction(name, float(config.weight),
                                sample=builtin.make(resolved_params(builtin, config.params or {})),
                                log=log, recorder=recorder)
        else:
            fn = RewardFunction(name, float(config.weight), batch=entry_point(config.name),
                                params=config.params or {}, log=log, recorder=recorder)
        functions.append(fn)
        weights.append(float(config.weight))
    return functions, weights
