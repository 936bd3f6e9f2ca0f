"""The reward function registry (services/trainer/rewards/): built-ins on known answers, request
checks, the never-raise wrapper, operator entry points and the rollout recorder.

Run: .venv/bin/python -m pytest tests/unit/test_rewards.py -q
"""

from __future__ import annotations

import math
import subprocess
import sys
import textwrap
from fractions import Fraction

import pytest

from services.common.errors import InvalidArgument
from services.trainer.rewards import builtins, registry
from services.trainer.rewards.registry import (RewardFunctionSpec, available_reward_names, check_reward_specs,
                                               required_columns)
from services.trainer.rewards.runtime import RewardFunction, RolloutRecorder, build_reward_functions
from services.trainer.rewards.texts import last_number

BUILTINS = ["exact_match", "format_regex", "keyword", "language_consistency", "length_penalty",
            "math_equivalence", "numeric_match", "reward_model"]


@pytest.fixture(autouse=True)
def fresh_entry_points():
    """Entry points are discovered once and cached: rescan around every test."""
    registry.refresh_entry_points()
    yield
    registry.refresh_entry_points()


def reward(name: str, **params) -> RewardFunction:
    return build_reward_functions([RewardFunctionSpec(name, params=params)])[0][0]


def scores(name: str, completions, prompts=None, params=None, **columns) -> list[float]:
    prompts = prompts if prompts is not None else ["q"] * len(completions)
    return reward(name, **(params or {}))(prompts=prompts, completions=completions, **columns)


def assistant(text: str) -> list[dict]:
    return [{"role": "assistant", "content": text}]


# ----------------------------------------------------------------------------------------- built-ins


def test_exact_match_english_and_chinese():
    completions = ["Paris.", "  PARIS ", "Paris, France", "北京。", "「北京」", "北京市",
                   "<think>Maybe Lyon?</think> Paris"]
    answers = ["paris", "paris", "Paris France", "北京", "北京", "北京", "Paris"]
    assert scores("exact_match", completions, answer=answers) == [1, 1, 0, 1, 1, 0, 1]


def test_exact_match_reads_the_named_column():
    assert scores("exact_match", ["blue"], params={"column": "label"}, label=["Blue"]) == [1.0]


@pytest.mark.parametrize("text, number", [
    ("The answer is 42.", Fraction(42)),
    ("It costs $1,234.50 in total", Fraction("1234.5")),
    ("temperature: -7 degrees", Fraction(-7)),
    ("first 3, then 3/4", Fraction(3, 4)),
    ("答案是 -3/4。", Fraction(-3, 4)),
    ("答案是42", Fraction(42)),
    ("x = .5", Fraction(1, 2)),
    ("全角 １２", Fraction(12)),
    ("minus \u22125", Fraction(-5)),
    ("10-5", Fraction(5)),
    ("1, 2, 3", Fraction(3)),
    ("2019,2020", Fraction(2020)),
    ("v1.2.3", None),  # every part is glued to a letter or a dot
    ("no digits here", None),
    ("1/0", None),
])
def test_last_number(text, number):
    assert last_number(text) == number


def test_numeric_match_formats_and_tolerance():
    completions = ["So she has 1,234 apples.", "答案：0.75", "It is 3/4", "-2", "about 3.1416",
                   "I don't know", "<think>maybe 5</think>The answer is 6"]
    answers = ["1234", "3/4", 0.75, "-2", "3.14159", "7", "6"]
    assert scores("numeric_match", completions, answer=answers) == [1, 1, 1, 1, 0, 0, 1]
    loose = scores("numeric_match", ["about 3.1416"], params={"tolerance": "0.001"}, answer=["3.14159"])
    assert loose == [1.0]
    # GSM8K's raw answers end in "#### 72": the column's last number is the gold.
    assert scores("numeric_match", ["72 clips"], answer=["48 + 24 = 72\n#### 72"]) == [1.0]


def test_math_equivalence():
    completions = ["\\frac{1}{2}", "The answer is \\boxed{2}.", "答案是 $\\boxed{\\sqrt{2}}$。",
                   "so x = 3", "I give up", "<think>try \\boxed{5}</think> \\boxed{4}", "$x+1$"]
    answers = ["0.5", "2", "\\sqrt{2}", "2", "2", "4", "\\boxed{1+x}"]
    assert scores("math_equivalence", completions, answer=answers) == [1, 1, 1, 0, 0, 1, 1]
    # Gold that math-verify cannot parse: 0, not an error.
    assert scores("math_equivalence", ["42"], answer=["forty-two"]) == [0.0]


def test_format_regex_default_think_then_answer():
    completions = ["<think>2 + 3 = 5</think>\nThe answer is 5.", "<think>思考</think>答案是五。",
                   "The answer is 5.", "<think>2 + 3</think>   ", " <think>x</think> 5", "<think></think> 5"]
    assert scores("format_regex", completions) == [1, 1, 0, 0, 0, 0]


def test_format_regex_survives_a_catastrophic_backtracking_pattern():
    """`(a|aa)+$` on 40 a's and a '!' takes ages with Python's re; the reward gives up after its time limit
    on that one sample (score 0, one warning naming the pattern's problem) and scores the others."""
    import time

    warnings = []
    [[function], _] = build_reward_functions([RewardFunctionSpec("format_regex", params={"pattern": "(a|aa)+$"})],
                                             log=lambda message, level: warnings.append((level, message)))
    started = time.monotonic()
    assert function(prompts=["q", "q"], completions=["a" * 40 + "!", "aaaa"]) == [0.0, 1.0]
    assert time.monotonic() - started < 30 * builtins.REGEX_TIMEOUT_SECONDS
    [(level, message)] = warnings
    assert level == "warning" and "1 of 2 samples raised" in message and "catastrophic backtracking" in message


def test_format_regex_custom_pattern_uses_search():
    assert scores("format_regex", ["so \\boxed{5}", "5"], params={"pattern": r"\\boxed\{.+\}"}) == [1, 0]
    assert scores("format_regex", ["Answer: 5", "answer: 5"], params={"pattern": "^Answer:"}) == [1, 0]


def test_length_penalty_numbers():
    completions = ["a" * 100, "a" * 200, "a" * 300, "a" * 400, "a" * 1000, "  " + "a" * 200 + "\n"]
    assert scores("length_penalty", completions) == [1.0, 1.0, 0.5, 0.0, 0.0, 1.0]
    custom = scores("length_penalty", ["a" * 10, "a" * 15, "a" * 25, "中" * 12],
                    params={"target_chars": "10", "max_chars": "30"})
    assert custom == pytest.approx([1.0, 0.75, 0.25, 0.9])


def test_language_consistency_zh_en():
    prompts = ["What is the capital of France?", "法国的首都是哪里？", "法国的首都是哪里？",
               "What is the capital of France?", "二加三等于几？", "What is 2+3?", "法国的首都是哪里？"]
    completions = ["Paris.", "巴黎。", "Paris.", "巴黎。", "答案是 \\boxed{5}。", "   ", "法国的首都是巴黎（Paris）。"]
    assert scores("language_consistency", completions, prompts=prompts) == [1, 1, 0, 0, 1, 0, 1]


def test_keyword_anywhere_and_start():
    assert scores("keyword", ["I love lmforge", "LMFORGE", "好的，开始"], params={"keyword": "lmforge"}) == [1, 0, 0]
    assert scores("keyword", ["  好的，开始", "开始吧，好的"], params={"keyword": "好的", "position": "start"}) == [1, 0]


def test_message_form_prompts_and_completions():
    prompts = [[{"role": "system", "content": "Answer in the user's language."},
                {"role": "user", "content": "二加三等于几？"}],
               [{"role": "user", "content": [{"type": "text", "text": "What is 2+3?"}]}]]
    completions = [assistant("<think>二加三</think>五，也就是 5。"), assistant("It is 5.")]
    assert scores("numeric_match", completions, prompts=prompts, answer=["5", 5]) == [1, 1]
    assert scores("language_consistency", completions, prompts=prompts) == [1, 1]
    assert scores("format_regex", completions, prompts=prompts) == [1, 0]
    # A tool-using completion: the last assistant message is the answer.
    multi = [[{"role": "assistant", "content": "let me check"}, {"role": "tool", "content": "4"},
              {"role": "assistant", "content": "4"}]]
    assert scores("exact_match", multi, prompts=prompts[:1], answer=["4"]) == [1.0]


def test_names_are_unique_and_weights_kept():
    configs = [RewardFunctionSpec("format_regex", 0.5), RewardFunctionSpec("exact_match", 2.0),
               RewardFunctionSpec("format_regex", 1.0, params={"pattern": "x"})]
    functions, weights = build_reward_functions(configs)
    assert [f.__name__ for f in functions] == ["format_regex", "exact_match", "format_regex_2"]
    assert weights == [0.5, 2.0, 1.0]


def test_module_imports_no_heavy_libraries():
    code = ("import sys, services.trainer.rewards.registry, services.trainer.rewards.builtins; "
            "print(sorted(m for m in ('torch', 'transformers', 'math_verify', 'sympy') if m in sys.modules))")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "[]"


# ------------------------------------------------------------------------------------ request checks


def test_unknown_name_is_rejected_with_every_available_name():
    violations = check_reward_specs([RewardFunctionSpec("exact_match"), RewardFunctionSpec("vibes")],
                                      "grpo.rewards")
    assert len(violations) == 1
    v = violations[0]
    assert v.field == "grpo.rewards[1].name" and "vibes" in v.reason
    for name in BUILTINS:
        assert name in v.hint
    with pytest.raises(InvalidArgument) as info:
        build_reward_functions([RewardFunctionSpec("vibes")])
    assert info.value.violations[0].field == "rewards[0].name"


def test_no_rewards_and_bad_weights():
    [v] = check_reward_specs([], "grpo.rewards")
    assert v.field == "grpo.rewards" and v.reason == "no reward functions" and "exact_match" in v.hint
    bad = check_reward_specs([RewardFunctionSpec("exact_match", math.nan),
                                RewardFunctionSpec("keyword", math.inf, params={"keyword": "x"})], "r")
    assert [v.field for v in bad] == ["r[0].weight", "r[1].weight"]
    [zero] = check_reward_specs([RewardFunctionSpec("exact_match", 0.0),
                                   RewardFunctionSpec("format_regex", 0.0)], "r")
    assert zero.field == "r" and "0" in zero.reason
    assert check_reward_specs([RewardFunctionSpec("exact_match", 0.0),
                                 RewardFunctionSpec("format_regex", -0.5)], "r") == []


@pytest.mark.parametrize("config, field, words", [
    (RewardFunctionSpec("exact_match", params={"colum": "answer"}), "r[0].params.colum", "column"),
    (RewardFunctionSpec("format_regex", params={"pattern": "(<think>"}), "r[0].params.pattern", "regular"),
    (RewardFunctionSpec("format_regex", params={"pattern": "a" * 5000}), "r[0].params.pattern", "at most"),
    (RewardFunctionSpec("numeric_match", params={"tolerance": "tiny"}), "r[0].params.tolerance", "number"),
    (RewardFunctionSpec("numeric_match", params={"tolerance": "-1"}), "r[0].params.tolerance", "> 0"),
    (RewardFunctionSpec("length_penalty", params={"target_chars": "0"}), "r[0].params.target_chars", "> 0"),
    (RewardFunctionSpec("length_penalty", params={"max_chars": "nan"}), "r[0].params.max_chars", "> 0"),
    (RewardFunctionSpec("length_penalty", params={"target_chars": "300", "max_chars": "100"}),
     "r[0].params.max_chars", "greater than target_chars"),
    (RewardFunctionSpec("keyword"), "r[0].params.keyword", "needs"),
    (RewardFunctionSpec("keyword", params={"keyword": ""}), "r[0].params.keyword", "empty"),
    (RewardFunctionSpec("keyword", params={"keyword": "x", "position": "end"}), "r[0].params.position", "start"),
    (RewardFunctionSpec("language_consistency", params={"lang": "zh"}), "r[0].params.lang", "none"),
    (RewardFunctionSpec("reward_model"), "r[0].reward_model_id", "reward model id"),
    (RewardFunctionSpec("exact_match", reward_model_id="rm"), "r[0].reward_model_id", "takes no reward model"),
])
def test_bad_params_are_violations(config, field, words):
    violations = check_reward_specs([config], "r")
    assert [v.field for v in violations] == [field]
    assert words in violations[0].reason + violations[0].hint


def test_good_params_pass():
    configs = [RewardFunctionSpec("numeric_match", params={"column": "solution", "tolerance": "0.01"}),
               RewardFunctionSpec("length_penalty", params={"target_chars": "100", "max_chars": "150"}),
               RewardFunctionSpec("format_regex", params={"pattern": r"\\boxed\{"}),
               RewardFunctionSpec("keyword", params={"keyword": "好的", "position": "start"})]
    assert check_reward_specs(configs, "r") == []


def test_required_columns():
    configs = [RewardFunctionSpec("exact_match"), RewardFunctionSpec("numeric_match", params={"column": "gold"}),
               RewardFunctionSpec("format_regex"), RewardFunctionSpec("vibes")]
    assert required_columns(configs) == {"answer", "gold"}


# --------------------------------------------------------------------------------- never a dead job


def test_a_raising_sample_scores_zero_with_one_warning(monkeypatch):
    def make(params):
        def score(prompt, completion, row):
            if "boom" in completion:
                raise RuntimeError("cannot score this one")
            return 0.25 if completion == "ok" else 1.0
        return score

    monkeypatch.setitem(builtins.BUILTINS, "flaky", builtins.Builtin(make))
    assert "flaky" in available_reward_names()
    logged = []
    [fn], _ = build_reward_functions([RewardFunctionSpec("flaky")], log=lambda message, level: logged.append(
        (level, message)))
    assert fn(prompts=["a", "b", "c", "d"], completions=["ok", "boom", "fine", "boom again"]) == [0.25, 0, 1.0, 0]
    assert len(logged) == 1
    level, message = logged[0]
    assert level == "warning" and "'flaky'" in message and "sample 1" in message
    assert "RuntimeError: cannot score this one" in message and "2 of 4" in message
    logged.clear()
    assert fn(prompts=["a"], completions=["ok"]) == [0.25] and logged == []


def test_a_missing_column_scores_zero_not_a_crash():
    logged = []
    [fn], _ = build_reward_functions([RewardFunctionSpec("exact_match")], log=lambda m, level: logged.append(m))
    assert fn(prompts=["q", "q"], completions=["a", "b"]) == [0.0, 0.0]
    assert len(logged) == 1 and "no column 'answer'" in logged[0]


def test_non_finite_and_none_scores_become_zero(monkeypatch):
    values = {"nan": math.nan, "inf": math.inf, "none": None, "two": 2.0}
    monkeypatch.setitem(builtins.BUILTINS, "odd", builtins.Builtin(lambda params: lambda p, c, row: values[c]))
    logged = []
    [fn], _ = build_reward_functions([RewardFunctionSpec("odd")], log=lambda m, level: logged.append(m))
    assert fn(prompts=["q"] * 4, completions=["nan", "inf", "none", "two"]) == [0.0, 0.0, 0.0, 2.0]
    assert len(logged) == 1 and "2 of 4" in logged[0] and "sample 0" in logged[0]


# -------------------------------------------------------------------------------------- entry points


PLUGIN = """
def shout(prompts, completions, completion_ids=None, **kwargs):
    params = kwargs.get("reward_params", {})
    mark = params.get("mark", "!")
    return [float(c.endswith(mark)) for c in completions]

shout.required_columns = ("topic",)


def picky(prompts, completions, **kwargs):
    if any("boom" in c for c in completions):
        raise ValueError("boom in the batch")
    return [len(c) / 10 for c in completions]


def clash(prompts, completions, **kwargs):
    return [99.0] * len(completions)


not_callable = 3
"""


@pytest.fixture
def plugin(tmp_path, monkeypatch):
    """An installed distribution declaring `lmforge.rewards` entry points, on sys.path."""
    (tmp_path / "lmforge_test_reward_plugin.py").write_text(PLUGIN)
    dist = tmp_path / "lmforge_test_reward_plugin-0.1.dist-info"
    dist.mkdir()
    (dist / "METADATA").write_text("Metadata-Version: 2.1\nName: lmforge-test-reward-plugin\nVersion: 0.1\n")
    (dist / "entry_points.txt").write_text(textwrap.dedent("""\
        [lmforge.rewards]
        shout = lmforge_test_reward_plugin:shout
        picky = lmforge_test_reward_plugin:picky
        exact_match = lmforge_test_reward_plugin:clash
        broken = lmforge_test_reward_plugin_missing:fn
        not_callable = lmforge_test_reward_plugin:not_callable
        """))
    monkeypatch.syspath_prepend(str(tmp_path))
    monkeypatch.delitem(sys.modules, "lmforge_test_reward_plugin", raising=False)
    registry.refresh_entry_points()
    yield
    sys.modules.pop("lmforge_test_reward_plugin", None)


def test_entry_points_are_discovered_and_callable(plugin, caplog):
    names = available_reward_names()
    assert "shout" in names and "picky" in names
    assert "broken" not in names and "not_callable" not in names  # logged and skipped
    assert names == sorted(set(BUILTINS) | {"shout", "picky"})
    assert any("broken" in r.getMessage() for r in caplog.records)
    assert check_reward_specs([RewardFunctionSpec("shout", params={"mark": "?"})], "r") == []
    assert required_columns([RewardFunctionSpec("shout")]) == {"topic"}

    [shout, exact], weights = build_reward_functions([RewardFunctionSpec("shout", 0.5, params={"mark": "?"}),
                                                       RewardFunctionSpec("exact_match")])
    assert shout.__name__ == "shout" and weights == [0.5, 1.0]
    assert shout(prompts=["a", "b"], completions=["why?", "because"], topic=["x", "y"]) == [1.0, 0.0]
    # The built-in exact_match wins over the plugin's clash().
    assert exact(prompts=["a"], completions=["yes"], answer=["Yes"]) == [1.0]


def test_an_entry_point_raising_on_one_sample_is_retried_sample_by_sample(plugin):
    logged = []
    [fn], _ = build_reward_functions([RewardFunctionSpec("picky")], log=lambda m, level: logged.append(m))
    assert fn(prompts=["a"] * 3, completions=["12345", "boom", "1234567890"]) == [0.5, 0.0, 1.0]
    assert len(logged) == 1 and "sample 1" in logged[0] and "ValueError: boom in the batch" in logged[0]


def test_without_the_plugin_its_names_are_unknown():
    assert "shout" not in available_reward_names()
    [v] = check_reward_specs([RewardFunctionSpec("shout")], "r")
    assert v.field == "r[0].name"


# ---------------------------------------------------------------------------------- rollout recorder


def test_recorder_groups_completions_by_prompt_with_weighted_totals():
    recorder = RolloutRecorder()
    functions, _ = build_reward_functions([RewardFunctionSpec("exact_match", 2.0),
                                           RewardFunctionSpec("length_penalty", 0.5,
                                                                params={"target_chars": "2", "max_chars": "4"})],
                                          recorder=recorder)
    prompts = ["1+1?", "1+1?", "2+2?", "2+2?", "3+3?", "3+3?"]
    completions = ["2", "two", "4", "four", "6", "6!"]
    answers = ["2", "2", "4", "4", "6", "6"]
    for fn in functions:
        fn(prompts=prompts, completions=completions, answer=answers)
    drained = recorder.drain(max_prompts=2)
    assert [group["prompt"] for group in drained] == ["1+1?", "2+2?"]
    first = drained[0]["completions"]
    assert first[0] == {"text": "2", "reward": 2.5, "rewards": {"exact_match": 1.0, "length_penalty": 1.0}}
    assert first[1] == {"text": "two", "reward": 0.25, "rewards": {"exact_match": 0.0, "length_penalty": 0.5}}
    assert recorder.drain() == []  # drained clears


def test_recorder_keeps_only_the_latest_batch():
    recorder = RolloutRecorder()
    [fn], _ = build_reward_functions([RewardFunctionSpec("keyword", params={"keyword": "x"})], recorder=recorder)
    fn(prompts=["old"], completions=["x"])
    fn(prompts=["new", "new"], completions=["x", "y"])
    assert recorder.drain(max_prompts=5) == [{"prompt": "new", "completions": [
        {"text": "x", "reward": 1.0, "rewards": {"keyword": 1.0}},
        {"text": "y", "reward": 0.0, "rewards": {"keyword": 0.0}}]}]
