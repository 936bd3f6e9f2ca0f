"""Loading and scoring a stored reward model (a REWARD_MODEL entry trained by the `reward` method).

    model, tokenizer = load_reward_model(store, "job-123-final")
    score(model, tokenizer, ["What is 2 + 3?"], ["5. Hope this helps!"])   # -> [1.87]

A leaf: it imports no recipe, so the reward runtime and any method can use it. torch and transformers are
imported when a model is loaded.
"""

from __future__ import annotations

from collections.abc import Sequence

from services.common.errors import FailedPrecondition, InvalidArgument
from services.common.store import CheckpointStore, EntryKind
from services.trainer.data import DatasetFormat, to_preference_example
from services.trainer.training.common import load_tokenizer


def load_reward_model(store: CheckpointStore, reward_model_id: str, *, device: str = "cpu",
                      field_name: str = "reward_model_id"):
    """(model, tokenizer) of a REWARD_MODEL store entry, in eval mode on `device`.

    Raises NotFound for an unknown id, FailedPrecondition when the entry is not a reward model.
    """
    from transformers import AutoModelForSequenceClassification

    manifest = store.get(reward_model_id, field_name)
    if manifest.kind is not EntryKind.REWARD_MODEL:
        raise FailedPrecondition(f"{field_name}: {reward_model_id!r} is a {manifest.kind.value}, not a reward model; "
                                 "train one with the `reward` method and pass its checkpoint id")
    if not manifest.has_tokenizer:
        raise FailedPrecondition(f"{field_name}: reward model {reward_model_id!r} has no tokenizer files; it cannot "
                                 "turn text into inputs (reward jobs save one: retrain it with the reward method)")
    path = store.path_of(reward_model_id, field_name)
    tokenizer = load_tokenizer(path)
    model = AutoModelForSequenceClassification.from_pretrained(path).to(device).eval()
    model.config.pad_token_id = tokenizer.pad_token_id
    return model, tokenizer


def score(model, tokenizer, prompts: Sequence, responses: Sequence, *, batch_size: int = 8) -> list[float]:
    """The reward of each (prompt, response): prompts and responses are strings or message lists, rendered
    exactly as RewardTrainer rendered the training pairs (chat template when the tokenizer has one, else
    prompt + response + EOS). Higher is better. Raises InvalidArgument for rows that cannot be rendered."""
    import torch

    if len(prompts) != len(responses):
        raise InvalidArgument(f"score: {len(prompts)} prompts but {len(responses)} responses")
    conversational = bool(tokenizer.chat_template)
    sequences: list[list[int]] = []
    for i, (prompt, response) in enumerate(zip(prompts, responses)):
        example = to_preference_example({"prompt": prompt, "completion": response, "label": True},
                                        DatasetFormat.UNPAIRED_PREFERENCE, conversational, i + 1)
        if conversational:
            ids = tokenizer.apply_chat_template(example["prompt"] + example["completion"], tokenize=True,
                                                return_dict=True)["input_ids"]
        else:
            text = example["prompt"] + example["completion"]
            if not text.endswith(tokenizer.eos_token):
                text += tokenizer.eos_token
            ids = tokenizer(text=text)["input_ids"]
        sequences.append(list(ids))
    device = next(model.parameters()).device
    rewards: list[float] = []
    with torch.no_grad():
        for start in range(0, len(sequences), batch_size):
            batch = tokenizer.pad({"input_ids": sequences[start:start + batch_size]}, padding=True,
                                  return_tensors="pt").to(device)
            logits = model(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"]).logits
            rewards.extend(logits[:, 0].float().tolist())
    return rewards
