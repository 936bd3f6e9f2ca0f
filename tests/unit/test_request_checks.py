"""StartTraining / Evaluate request checks: conversion (services/trainer/convert.py and each method's
definition under services/trainer/methods/) and admission (services/trainer/admission.py): every method's
typed fields, defaults and violations, without a server. The store holds real manifests; no weights are
needed."""

from __future__ import annotations

import pytest
from google.protobuf import json_format

from lmforge.v1 import trainer_pb2
from services.common.errors import FailedPrecondition, InvalidArgument, NotFound
from services.common.store import CheckpointStore, EntryKind, Manifest
from services.trainer import admission, methods
from services.trainer.convert import evaluate_spec_from_request, method_names, spec_from_request
from services.trainer.data import DatasetFormat
from services.trainer.datasets import DatasetRegistry
from services.trainer.spec import TrainingSpec

CHAT_TEMPLATE = "{% for m in messages %}{{ m['role'] }}: {{ m['content'] }}\n{% endfor %}"


@pytest.fixture()
def env(tmp_path):
    store = CheckpointStore(tmp_path / "store")
    for manifest in (Manifest(id="base", kind=EntryKind.BASE_MODEL, has_tokenizer=True),
                     Manifest(id="other-base", kind=EntryKind.BASE_MODEL, has_tokenizer=True),
                     Manifest(id="plain-base", kind=EntryKind.BASE_MODEL, has_tokenizer=True),
                     Manifest(id="lora", kind=EntryKind.ADAPTER, base_model_id="base"),
                     Manifest(id="scorer", kind=EntryKind.REWARD_MODEL, base_model_id="base", has_tokenizer=True)):
        with store.write_entry(manifest) as out:
            (out / "config.json").write_text("{}")
            if manifest.id != "plain-base":
                (out / "chat_template.jinja").write_text(CHAT_TEMPLATE)
    datasets = DatasetRegistry(tmp_path / "datasets")
    dataset = datasets.upload("d.jsonl", None, [b'{"text": "x"}\n'])
    return store, datasets, dataset.id


def build(env, **fields) -> TrainingSpec:
    store, datasets, dataset_id = env
    request = json_format.ParseDict({"base_model_id": "base", "dataset_id": dataset_id, **fields},
                                    trainer_pb2.StartTrainingRequest())
    return admission.admit(spec_from_request(request, gpu=False), store, datasets)


def formats(spec: TrainingSpec):
    """The dataset formats the job's data must be in."""
    return tuple(methods.get(spec.method).formats(spec.method_spec))


def violations(env, **fields) -> set[str]:
    with pytest.raises(InvalidArgument) as info:
        build(env, **fields)
    return {v.field for v in info.value.violations}


def test_pretrain_defaults_and_shape_checks(env):
    spec = build(env, base_model_id="", pretrain={"hidden_size": 128, "num_attention_heads": 4})
    config = spec.method_spec
    assert spec.base_model_id == "" and spec.adapter.type == "full", "from scratch trains every weight"
    assert (config.architecture, config.num_key_value_heads, config.intermediate_size) == ("llama", 4, 384)
    assert formats(spec) == (DatasetFormat.TEXT,) and config.format == "text"
    assert violations(env, base_model_id="", pretrain={"hidden_size": 100, "num_attention_heads": 3,
                                                      "num_key_value_heads": 2, "architecture": "gpt9"}) == {
        "pretrain.num_attention_heads", "pretrain.num_key_value_heads", "pretrain.architecture"}
    assert violations(env, pretrain={}, adapter={"type": "ADAPTER_LORA"}) == {"base_model_id", "adapter.type"}


def test_pretrain_tokenizer_must_exist(env):
    with pytest.raises(NotFound):
        build(env, base_model_id="", pretrain={"tokenizer_from": "nope"})
    with pytest.raises(FailedPrecondition):
        build(env, base_model_id="", pretrain={"tokenizer_from": "lora"})


def test_dpo_family_fields(env):
    spec = build(env, dpo={})
    assert (spec.method_spec.loss, spec.method_spec.beta, formats(spec)) == ("sigmoid", 0.1, (DatasetFormat.PREFERENCE,))
    kto = build(env, dpo={"loss": "PREFERENCE_LOSS_KTO", "beta": 0.5})
    assert (kto.method_spec.loss, kto.method_spec.beta) == ("kto", 0.5)
    assert formats(kto) == (DatasetFormat.UNPAIRED_PREFERENCE, DatasetFormat.PREFERENCE), "KTO also takes pairs"
    simpo = build(env, dpo={"loss": "PREFERENCE_LOSS_SIMPO"}).method_spec
    assert not simpo.uses_reference and simpo.beta == 2.0
    assert violations(env, dpo={"loss": "PREFERENCE_LOSS_KTO"}, hyperparameters={"batch_size": 1}) == {
        "hyperparameters.batch_size"}
    assert violations(env, dpo={"beta": 0.0, "simpo_gamma": -1.0}) == {"dpo.beta", "dpo.simpo_gamma"}


def test_vocabulary_expansion_and_reward_checks(env):
    spec = build(env, sft={"vocabulary": {"new_tokens": ["锻造炉", "forgeweld"]}})
    assert spec.method_spec.new_tokens == ["锻造炉", "forgeweld"]
    assert violations(env, continued_pretrain={"vocabulary": {"new_tokens": ["a", "a", " "]}}) == {
        "continued_pretrain.vocabulary.new_tokens[1]", "continued_pretrain.vocabulary.new_tokens[2]"}
    assert violations(env, sft={"vocabulary": {"new_tokens": ["x"]}}, adapter={"type": "ADAPTER_QLORA"}) == {
        "adapter.type"}
    assert violations(env, reward={}, adapter={"type": "ADAPTER_QLORA"}) == {"adapter.type"}
    assert build(env, reward={"center_rewards_coefficient": 0.01}).method_spec.center_rewards_coefficient == 0.01


def test_trainable_bases(env):
    with pytest.raises(FailedPrecondition, match="LoRA adapter"):
        build(env, base_model_id="lora", dpo={})
    with pytest.raises(FailedPrecondition, match="reward model"):
        build(env, base_model_id="scorer", sft={})
    assert build(env, base_model_id="scorer", reward={}).base_model_id == "scorer", "a reward model trains on"


def test_eval_policy(env):
    spec = build(env, sft={}, eval={"split_ratio": 0.1, "every_steps": 5, "metric_for_best": "rewards/accuracies",
                                    "early_stopping_patience": 3})
    assert spec.eval.metric_for_best == "eval_rewards/accuracies" and spec.eval.greater_is_better
    assert not build(env, sft={}, eval={"metric_for_best": "perplexity"}).eval.greater_is_better
    assert violations(env, sft={}, eval={"early_stopping_patience": 1}) == {"eval.early_stopping_patience",
                                                                          "eval.every_steps"}


def test_evaluate_requests(env):
    store, datasets, dataset_id = env

    def evaluate(**fields):
        request = json_format.ParseDict({"dataset_id": dataset_id, **fields}, trainer_pb2.EvaluateRequest())
        return admission.admit(evaluate_spec_from_request(request), store, datasets)

    spec = evaluate(model_id="lora")
    assert (spec.method, spec.base_model_id, spec.method_spec.adapter_id) == ("evaluate", "base", "lora"), \
        "an adapter given as model_id is evaluated on its base"
    assert spec.method_spec.max_new_tokens == 128 and DatasetFormat.TEXT in formats(spec)
    with pytest.raises(InvalidArgument) as info:
        evaluate(model_id="base", metrics=["bleu", "meteor"])
    assert {v.field for v in info.value.violations} == {"metrics[1]"}
    with pytest.raises(FailedPrecondition, match="trained on 'base'"):
        evaluate(model_id="other-base", adapter_id="lora")
    with pytest.raises(FailedPrecondition, match="reward model"):
        evaluate(model_id="scorer")


def test_rl_rewards_are_named_from_the_registry(env):
    spec = build(env, grpo={"rewards": [{"name": "exact_match", "params": {"column": "answer"}, "weight": 2.0}],
                            "num_generations": 4})
    [reward] = spec.method_spec.rewards
    assert (reward.name, reward.weight, methods.get("grpo").required_columns(spec.method_spec)) == (
        "exact_match", 2.0, {"answer": "a reward function of this job"})
    with pytest.raises(InvalidArgument) as info:
        build(env, grpo={"rewards": [{"name": "import os; os.system('x')"}]})
    [violation] = info.value.violations
    assert violation.field == "grpo.rewards[0].name" and "exact_match" in violation.hint and "keyword" in violation.hint
    assert violations(env, rft={}) == {"rft.rewards"}, "no reward functions"
    model_reward = {"name": "reward_model", "reward_model_id": "scorer"}
    assert build(env, grpo={"rewards": [model_reward]}).method_spec.rewards[0].reward_model_id == "scorer"
    with pytest.raises(FailedPrecondition, match="grpo.rewards.0..reward_model_id.*not a reward model"):
        build(env, grpo={"rewards": [{**model_reward, "reward_model_id": "base"}]})
    with pytest.raises(NotFound):
        build(env, rft={"rewards": [{**model_reward, "reward_model_id": "nope"}]})


def test_ppo_is_rloo_with_a_store_reward_model(env):
    spec = build(env, ppo={"reward_model_id": "scorer"})
    assert spec.method_spec.algorithm == "rloo"
    assert [r.name for r in spec.method_spec.rewards] == ["reward_model"]
    assert (spec.method_spec.num_generations, spec.method_spec.beta) == (4, 0.05)
    assert violations(env, ppo={"algorithm": "PPO_ALGORITHM_RLOO"}) == {"ppo.reward_model_id"}
    assert violations(env, ppo={"reward_model_id": "scorer", "gamma": 0.9, "ppo_epochs": 2,
                                "whiten_advantages": False, "num_generations": 1}) == {
        "ppo.gamma", "ppo.ppo_epochs", "ppo.whiten_advantages", "ppo.num_generations"}, "actor-critic fields"
    with pytest.raises(FailedPrecondition, match="not a reward model"):
        build(env, ppo={"reward_model_id": "base"})


AC = "PPO_ALGORITHM_ACTOR_CRITIC"
LENGTH = {"name": "length_penalty", "params": {"target_chars": "4"}}


def test_ppo_actor_critic_defaults_are_trl_old_ppo_configs(env):
    spec = build(env, ppo={"algorithm": AC, "reward_model_id": "scorer"}).method_spec
    assert spec.algorithm == "actor_critic" and [r.name for r in spec.rewards] == ["reward_model"]
    assert (spec.kl_control, spec.beta, spec.kl_target, spec.kl_horizon) == ("adaptive", 0.2, 6.0, 10000.0)
    assert (spec.gamma, spec.lam, spec.cliprange, spec.cliprange_value, spec.vf_coef) == (1.0, 0.95, 0.2, 0.2, 0.1)
    assert (spec.ppo_epochs, spec.num_mini_batches, spec.whiten_advantages, spec.num_generations) == (4, 1, True, 1)
    assert (spec.critic_init, spec.critic_adapter, spec.critic_learning_rate) == ("reward_model", "", None)
    rules_only = build(env, ppo={"algorithm": AC, "rewards": [LENGTH], "gamma": 0.0, "whiten_advantages": False,
                                 "kl_control": "PPO_KL_CONTROL_FIXED", "beta": 0.0,
                                 "critic_adapter": "PPO_CRITIC_ADAPTER_FULL"}).method_spec
    assert [r.name for r in rules_only.rewards] == ["length_penalty"] and rules_only.critic_init == "policy"
    assert (rules_only.gamma, rules_only.whiten_advantages, rules_only.kl_control, rules_only.beta,
            rules_only.critic_adapter) == (0.0, False, "fixed", 0.0, "full"), "0 and false are values, not unset"
    both = build(env, ppo={"algorithm": AC, "reward_model_id": "scorer", "rewards": [LENGTH],
                           "critic_init": "PPO_CRITIC_INIT_POLICY"}).method_spec
    assert [r.name for r in both.rewards] == ["reward_model", "length_penalty"] and both.critic_init == "policy"


def test_ppo_actor_critic_request_checks(env):
    assert violations(env, ppo={"algorithm": AC}) == {"ppo.reward_model_id"}, "missing reward"
    assert violations(env, ppo={"algorithm": AC, "rewards": [LENGTH],
                                "critic_init": "PPO_CRITIC_INIT_REWARD_MODEL"}) == {"ppo.critic_init"}, \
        "the critic cannot start from a reward model the job does not have"
    assert violations(env, ppo={"algorithm": AC, "rewards": [LENGTH], "gamma": 1.5, "lam": -0.1, "cliprange": 0.0,
                                "cliprange_value": -1.0, "vf_coef": -0.1, "kl_target": 0.0, "kl_horizon": 0.0,
                                "ppo_epochs": 101, "num_mini_batches": -1, "beta": -1.0, "critic_learning_rate": 0.0,
                                "kl_control": 9}) == {
        "ppo.gamma", "ppo.lam", "ppo.cliprange", "ppo.cliprange_value", "ppo.vf_coef", "ppo.kl_target",
        "ppo.kl_horizon", "ppo.ppo_epochs", "ppo.num_mini_batches", "ppo.beta", "ppo.critic_learning_rate",
        "ppo.kl_control"}
    assert violations(env, ppo={"algorithm": AC, "rewards": [LENGTH], "num_mini_batches": 9},
                      hyperparameters={"batch_size": 4, "gradient_accumulation_steps": 2}) == {"ppo.num_mini_batches"}
    assert violations(env, ppo={"algorithm": AC, "rewards": [LENGTH], "num_generations": 3},
                      hyperparameters={"batch_size": 4}) == {"hyperparameters.batch_size"}, "whole groups per step"
    assert violations(env, ppo={"algorithm": AC, "rewards": [LENGTH]}, eval={"split_ratio": 0.1},
                      hyperparameters={"lr_scheduler": "reduce_lr_on_plateau"}) == {
        "eval", "hyperparameters.lr_scheduler"}
    assert violations(env, ppo={"algorithm": AC, "rewards": [{"name": "nope"}]}) == {"ppo.rewards[0].name"}
    with pytest.raises(FailedPrecondition, match="not a reward model"):
        build(env, ppo={"algorithm": AC, "reward_model_id": "base"})


def test_distill_needs_a_language_model_teacher(env):
    spec = build(env, distill={"teacher_model_id": "other-base"})
    assert (spec.method_spec.mode, spec.method_spec.temperature) == ("offline", 0.0)
    with pytest.raises(FailedPrecondition, match="not a language model"):
        build(env, distill={"teacher_model_id": "scorer"})
    assert violations(env, distill={"mode": "DISTILL_MODE_ON_POLICY", "lmbda": 2.0}) == {
        "distill.teacher_model_id", "distill.lmbda"}


def test_a_base_without_chat_template_is_refused_before_the_job_exists_for_chat_methods(env):
    """The manifest records the chat template, so SFT, RFT and distillation on a plain LM are refused at
    StartTraining (FAILED_PRECONDITION), not in the worker; methods that work on plain text still admit it."""
    store = env[0]
    assert store.get("base").has_chat_template and not store.get("plain-base").has_chat_template
    for method in ({"sft": {}}, {"rft": {"rewards": [{"name": "keyword", "params": {"keyword": "x"}}]}},
                   {"distill": {"teacher_model_id": "base"}}):
        with pytest.raises(FailedPrecondition, match="no chat template"):
            build(env, base_model_id="plain-base", **method)
    assert build(env, base_model_id="plain-base", dpo={}).base_model_id == "plain-base"


def test_every_proto_method_has_one_definition():
    """The registry is built from the method packages; it must cover the proto's `oneof method` exactly."""
    assert sorted(method_names()) == sorted(methods.names())
    for name in method_names():
        definition = methods.get(name)
        assert definition.name == name and definition.recipe == f"services.trainer.methods.{name}.recipe"
    with pytest.raises(InvalidArgument):
        methods.get("magic")


def test_unknown_enum_numbers_name_the_field(env):
    request = trainer_pb2.StartTrainingRequest(base_model_id="base", dataset_id=env[2])
    request.dpo.loss = 42
    with pytest.raises(InvalidArgument) as info:
        spec_from_request(request, gpu=False)
    [violation] = info.value.violations
    assert violation.field == "dpo.loss" and "PREFERENCE_LOSS_KTO" in violation.hint
