"""Reward modelling (full / LoRA) on TRL's RewardTrainer, plus loading and scoring a stored reward model.

The model is the base loaded as `AutoModelForSequenceClassification(num_labels=1)`: the base's transformer
with a new one-output `score` head, trained with the Bradley-Terry loss -log sigmoid(r(chosen) -
r(rejected)) on `prompt`/`chosen`/`rejected` pairs (conversational when the tokenizer has a chat template).
With LoRA (task type SEQ_CLS) the adapter *and* the score head are trained, and both are merged into full
weights when saved, so the result is always a REWARD_MODEL entry: full weights + tokenizer that
`AutoModelForSequenceClassification.from_pretrained` reloads. QLoRA is refused at request time (a 4-bit
base cannot be merged into full weights).

Metrics are TRL's: `accuracy` (share of pairs with r(chosen) > r(rejected)), `margin` (mean
r(chosen) - r(rejected)), `min_reward`, `mean_reward`, `max_reward`, `num_tokens`; with evaluation the same
with an `eval_` prefix (`eval_accuracy` on held-out pairs).

Scoring with a stored reward model (e.g. by RL recipes):

    model, tokenizer = load_reward_model(store, "job-123-final")
    score(model, tokenizer, ["What is 2 + 3?"], ["5. Hope this helps!"])   # -> [1.87]
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

from services.common.errors import FailedPrecondition, InvalidArgument, Violation
from services.common.store import CheckpointStore, EntryKind
from services.trainer.data import DatasetFormat, FileFormat, load_preference_for_training, to_preference_example
from services.trainer.recipes.adapters import lora_config, resolve_precision
from services.trainer.recipes.callbacks import finish_training, standard_callbacks
from services.trainer.recipes.common import load_tokenizer, train_and_eval_datasets, training_arguments
from services.trainer.recipes.context import RecipeContext
from services.trainer.spec import AdapterConfig, DatasetFile, RewardConfig, TrainingSpec


def build_reward_config(spec: TrainingSpec, output_dir: str, device: str, has_eval: bool):
    """TRL's RewardConfig for a spec. `max_length` is prompt + response; longer pairs are dropped by TRL."""
    from trl import RewardConfig as TrlRewardConfig

    method: RewardConfig = spec.method_config
    return TrlRewardConfig(**training_arguments(spec, output_dir, device, has_eval),
                           max_length=spec.hyperparameters.max_seq_length,
                           center_rewards_coefficient=method.center_rewards_coefficient)


def load_datasets(spec: TrainingSpec, cache_dir: str, conversational: bool):
    """Train and (optional) eval preference datasets: prompt/chosen/rejected in TRL's form."""

    def load(dataset: DatasetFile):
        return load_preference_for_training(dataset.path, FileFormat(dataset.file_format),
                                            DatasetFormat(dataset.format), conversational=conversational,
                                            cache_dir=cache_dir)

    return train_and_eval_datasets(spec, load)


def load_reward_base(model_dir: Path, adapter: AdapterConfig, tokenizer, seed: int):
    """The base as a one-output sequence classifier (fp32 weights; mixed precision comes from the trainer
    config) and, for LoRA, a SEQ_CLS LoraConfig (peft then also trains and saves the `score` head).
    Returns (model, peft_config or None)."""
    import torch
    from transformers import AutoModelForSequenceClassification, set_seed

    set_seed(seed)  # the score head is initialised randomly: same seed, same head
    model = AutoModelForSequenceClassification.from_pretrained(model_dir, num_labels=1, dtype=torch.float32)
    # The classifier pools the last non-pad token, so it must know the pad id.
    model.config.pad_token_id = tokenizer.pad_token_id
    # The base's config names its causal-LM class; the store manifest and reloads need this one.
    model.config.architectures = [type(model).__name__]
    model.config.use_cache = False
    peft_config = None
    if adapter.is_peft:
        peft_config = lora_config(adapter, task_type="SEQ_CLS")
    return model, peft_config


def run(ctx: RecipeContext) -> str:
    from trl import RewardTrainer

    spec = ctx.spec
    base_dir = ctx.store.path_of(spec.base_model_id, "base_model_id")
    tokenizer = load_tokenizer(base_dir)
    conversational = bool(tokenizer.chat_template)

    ctx.log("loading dataset" + ("" if conversational else " (no chat template: plain-text prompts and responses)"))
    train_dataset, eval_dataset = load_datasets(spec, str(ctx.work_dir / "datasets-cache"), conversational)
    resolve_precision(spec.hyperparameters, spec.adapter, ctx.device)  # refuses fp16 on CPU etc. up front
    config = build_reward_config(spec, str(ctx.work_dir / "trainer"), ctx.device, eval_dataset is not None)
    ctx.log(f"loading {spec.base_model_id} as a reward model (sequence classifier, 1 output, new score head) for "
            f"{spec.adapter.type} training on {ctx.device}"
            + ("; the LoRA adapter and score head are merged into full weights when saved" if spec.adapter.is_peft
               else ""))
    model, peft_config = load_reward_base(base_dir, spec.adapter, tokenizer, spec.hyperparameters.seed)
    callbacks, checkpointer = standard_callbacks(ctx, tokenizer, kind=EntryKind.REWARD_MODEL, merge_peft=True)
    rows = len(train_dataset)
    trainer = RewardTrainer(model=model, args=config, train_dataset=train_dataset, eval_dataset=eval_dataset,
                            processing_class=tokenizer, peft_config=peft_config, callbacks=callbacks)
    kept = len(trainer.train_dataset)
    if kept == 0:
        raise InvalidArgument(
            f"hyperparameters.max_seq_length: every pair is longer than {config.max_length} tokens",
            [Violation(0, "hyperparameters.max_seq_length", "no pair fits (prompt + response)",
                       "raise max_seq_length or shorten the rows")])
    if kept < rows:
        ctx.log(f"{rows - kept} of {rows} training pairs are longer than {config.max_length} tokens and were left "
                "out; raise hyperparameters.max_seq_length to keep them", "warning")
    if eval_dataset is not None and len(trainer.eval_dataset) == 0:
        raise InvalidArgument(
            f"hyperparameters.max_seq_length: every evaluation pair is longer than {config.max_length} tokens",
            [Violation(0, "hyperparameters.max_seq_length", "no evaluation pair fits (prompt + response)",
                       "raise max_seq_length, or hold out more pairs (eval.split_ratio)")])
    return finish_training(ctx, trainer, checkpointer, evaluate=eval_dataset is not None)


# ---------------------------------------------------------------------------------------------------
# Using a trained reward model.


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
