"""The `reward_model` reward function (services/trainer/rewards/) scoring with a reward model from the store.
An integration test: it builds a tiny transformers sequence classifier, saves it to a store and loads it.
The rest of the reward registry is covered without torch in tests/unit/test_rewards.py.

    .venv/bin/python -m pytest tests/integration/test_reward_model_function.py -q
"""

from __future__ import annotations

import math

import pytest

from services.common.errors import InvalidArgument
from services.trainer.rewards.registry import RewardFunctionSpec, check_reward_specs
from services.trainer.rewards.runtime import build_reward_functions


def assistant(text: str) -> list[dict]:
    return [{"role": "assistant", "content": text}]


def test_reward_model_scores_with_a_stored_reward_model(tmp_path):
    from transformers import AutoModelForSequenceClassification

    from services.common.model_import import create_tiny_model
    from services.common.store import CheckpointStore, EntryKind, Manifest
    from services.trainer.training.common import load_tokenizer

    store = CheckpointStore(tmp_path)
    create_tiny_model(store, "tiny", hidden_size=32, num_layers=1, num_attention_heads=2, num_key_value_heads=1)
    model = AutoModelForSequenceClassification.from_pretrained(store.path_of("tiny"), num_labels=1)
    with store.write_entry(Manifest(id="tiny-rm", kind=EntryKind.REWARD_MODEL, base_model_id="tiny")) as out:
        model.save_pretrained(out)
        load_tokenizer(store.path_of("tiny")).save_pretrained(out)

    config = RewardFunctionSpec("reward_model", reward_model_id="tiny-rm")
    assert check_reward_specs([config], "r") == []  # that the id is a reward model is admission's check
    with pytest.raises(InvalidArgument):
        build_reward_functions([config])  # no store to load it from

    [fn], _ = build_reward_functions([config], store=store)
    prompts = ["What is 2+3?", "What is 2+3?", [{"role": "user", "content": "二加三？"}]]
    completions = ["5", "It is five, I think.", assistant("五")]
    first = fn(prompts=prompts, completions=completions)
    assert len(first) == 3 and all(math.isfinite(s) for s in first)
    assert first[0] != first[1]
    assert fn(prompts=prompts, completions=completions) == first  # loaded once, deterministic
