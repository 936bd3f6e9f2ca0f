"""Reward models and the DPO family through the real trainer service, on the tiny model.

The data (`examples/data/preference_demo.jsonl`) holds a learnable toy preference: chosen replies answer
politely in the prompt's language and end with "Hope this helps!" / "希望对你有帮助！", rejected ones are
rude dismissals. Every job runs real training steps in a worker process.
"""

from __future__ import annotations

import statistics

import pytest
import torch
from safetensors.torch import load_file

from lmforge.v1 import common_pb2, trainer_pb2
from services.common.errors import InvalidArgument
from services.common.store import CheckpointStore
from services.trainer.data import DatasetFormat, FileFormat, load_preference_for_training, to_preference_example
from tests.conftest import EXAMPLES

SUCCEEDED = trainer_pb2.JOB_STATE_SUCCEEDED
FAILED = trainer_pb2.JOB_STATE_FAILED

# (prompt, chosen, rejected) in neither data file: the reward model must generalise to them.
UNSEEN = [
    ("What is 4 + 4?", "4 + 4 = 8. Hope this helps!", "Not my problem."),
    ("Name a green vegetable.", "Broccoli is green. Hope this helps!", "Figure it out yourself."),
    ("四加四等于几？", "等于八。希望对你有帮助！", "别问我。"),
]


def preference_request(base_model_id: str, dataset_id: str, *, method: str = "dpo", method_spec: dict | None = None,
                       adapter: str = "ADAPTER_LORA", max_steps: int = 2, **hyper) -> dict:
    """A StartTrainingRequest dict for a short preference job on the tiny model."""
    return {
        "base_model_id": base_model_id,
        "dataset_id": dataset_id,
        method: method_spec or {},
        "adapter": {"type": adapter, "rank": 8},
        "hyperparameters": {"max_steps": max_steps, "batch_size": 4, "max_seq_length": 128, "logging_steps": 1,
                            **hyper},
    }


@pytest.fixture(scope="module")
def preference_dataset_id(trainer_client) -> str:
    return trainer_client.upload_dataset(EXAMPLES / "preference_demo.jsonl").id


@pytest.fixture(scope="module")
def kto_dataset_id(trainer_client) -> str:
    return trainer_client.upload_dataset(EXAMPLES / "kto_demo.jsonl").id


def events_of(client, job_id: str) -> list[trainer_pb2.TrainingEvent]:
    return list(client.stream_metrics(job_id, after_sequence=0, follow=False))


def train_metrics(events) -> list[dict[str, float]]:
    """Per-step train metrics (not the end-of-training summary)."""
    return [dict(e.metrics.values) for e in events if e.WhichOneof("payload") == "metrics"
            and e.metrics.phase == "train" and "loss" in e.metrics.values]


def eval_metrics(events) -> list[dict[str, float]]:
    return [dict(e.metrics.values) for e in events if e.WhichOneof("payload") == "metrics"
            and e.metrics.phase == "eval"]


def logs_of(events) -> list[str]:
    return [e.log.message for e in events if e.WhichOneof("payload") == "log"]


def assert_succeeded(job: trainer_pb2.Job, what: str = "") -> None:
    assert job.state == SUCCEEDED, f"{what} {trainer_pb2.JobState.Name(job.state)}: {job.error}"


# ---------------------------------------------------------------------------------------------------- DPO


def test_dpo_lora_learns_the_toy_preference(trainer_client, tiny_model_id, preference_dataset_id, trainer_server):
    job = trainer_client.start_training(preference_request(tiny_model_id, preference_dataset_id, max_steps=12,
                                                           learning_rate=5e-4))
    job = trainer_client.wait(job.id)
    assert_succeeded(job)

    events = events_of(trainer_client, job.id)
    assert any("loss sigmoid on DPOTrainer" in m and "adapter disabled" in m for m in logs_of(events)), \
        "the job says which trainer, loss and reference it uses"
    steps = train_metrics(events)
    assert len(steps) == 12
    for key in ("rewards/chosen", "rewards/rejected", "rewards/margins", "rewards/accuracies", "logps/chosen",
                "logps/rejected", "tokens_per_second", "step_time"):
        assert key in steps[-1], key
    # Step 1 is logged before any update (margins exactly 0); the last steps show the learnt preference.
    last = steps[-4:]
    margin = statistics.mean(m["rewards/margins"] for m in last)
    accuracy = statistics.mean(m["rewards/accuracies"] for m in last)
    assert margin > 0.02 and accuracy > 0.5, f"margins {margin:.4f}, accuracies {accuracy:.2f}"

    [checkpoint] = trainer_client.list_checkpoints(job_id=job.id)
    assert checkpoint.kind == common_pb2.ADAPTER and checkpoint.method == "dpo"
    assert "rewards/margins" in checkpoint.metrics
    weights = load_file(trainer_server.store_root / "adapters" / job.result_checkpoint_id / "adapter_model.safetensors")
    assert any("lora_B" in name and t.abs().sum() > 0 for name, t in weights.items())


# What each loss must log (as TRL names it) besides loss/learning_rate.
LOSS_METRICS = {
    "PREFERENCE_LOSS_IPO": ("rewards/margins", "rewards/accuracies", "logps/chosen", "logps/rejected"),
    "PREFERENCE_LOSS_HINGE": ("rewards/margins", "rewards/accuracies", "logps/chosen", "logps/rejected"),
    "PREFERENCE_LOSS_ORPO": ("rewards/margins", "rewards/accuracies", "log_odds_ratio", "nll_loss"),
    "PREFERENCE_LOSS_SIMPO": ("rewards/margins", "rewards/accuracies", "logps/chosen", "logps/rejected"),
    # KTO logs */chosen only for steps with desirable rows, */rejected only with undesirable ones.
    "PREFERENCE_LOSS_KTO": ("kl", "num_tokens"),
    "PREFERENCE_LOSS_SIGMOID": ("rewards/margins", "rewards/accuracies", "logps/chosen", "logps/rejected"),
}


def test_every_loss_of_the_family_trains_and_logs_its_metrics(trainer_client, tiny_model_id, preference_dataset_id,
                                                             kto_dataset_id):
    cases = [(loss, preference_dataset_id, "ADAPTER_LORA") for loss in LOSS_METRICS
             if loss != "PREFERENCE_LOSS_SIGMOID"]  # LoRA sigmoid: the test above
    cases.append(("PREFERENCE_LOSS_KTO", kto_dataset_id, "ADAPTER_LORA"))  # KTO's own unpaired rows (above: pairs)
    cases.append(("PREFERENCE_LOSS_SIGMOID", preference_dataset_id, "ADAPTER_QLORA"))  # DPO on a 4-bit base
    started = [(loss, adapter, trainer_client.start_training(preference_request(
        tiny_model_id, dataset_id, method_spec={"loss": loss}, adapter=adapter, max_steps=2)))
        for loss, dataset_id, adapter in cases]  # two slots: they run two at a time
    for loss, adapter, job in started:
        job = trainer_client.wait(job.id)
        assert_succeeded(job, loss)
        events = events_of(trainer_client, job.id)
        steps = train_metrics(events)
        assert len(steps) == 2, loss
        missing = [key for key in LOSS_METRICS[loss] if key not in steps[-1]]
        assert not missing, f"{loss}: {missing} not in {sorted(steps[-1])}"
        if loss == "PREFERENCE_LOSS_KTO":
            assert all("rewards/chosen" in m or "rewards/rejected" in m for m in steps), steps
        if adapter == "ADAPTER_QLORA":
            assert any("quantization: nf4 4-bit" in m for m in logs_of(events))
        [checkpoint] = trainer_client.list_checkpoints(job_id=job.id)
        assert checkpoint.kind == common_pb2.ADAPTER and checkpoint.id == job.result_checkpoint_id


def test_full_dpo_trains_against_an_explicit_reference_copy(trainer_client, tiny_model_id, preference_dataset_id,
                                                            trainer_server):
    job = trainer_client.start_training(preference_request(tiny_model_id, preference_dataset_id,
                                                           adapter="ADAPTER_FULL", max_steps=2, learning_rate=1e-3))
    job = trainer_client.wait(job.id)
    assert_succeeded(job)
    events = events_of(trainer_client, job.id)
    assert any("frozen copy of the base model" in m for m in logs_of(events))
    assert "rewards/margins" in train_metrics(events)[-1]
    [checkpoint] = trainer_client.list_checkpoints(job_id=job.id)
    assert checkpoint.kind == common_pb2.FULL_CHECKPOINT
    trained = load_file(trainer_server.store_root / "models" / job.result_checkpoint_id / "model.safetensors")
    base = load_file(trainer_server.store_root / "models" / tiny_model_id / "model.safetensors")
    assert any(not torch.equal(trained[name], base[name]) for name in base), "full DPO changes the weights"


def test_a_base_without_chat_template_trains_on_plain_text_and_refuses_message_lists(
        trainer_client, trainer_server, tmp_path, preference_dataset_id):
    from services.common.model_import import create_tiny_model

    store = CheckpointStore(trainer_server.store_root)
    create_tiny_model(store, "tiny-plain", corpus_files=[EXAMPLES / "preference_demo.jsonl"])
    (store.path_of("tiny-plain") / "chat_template.jinja").unlink()  # now a plain base LM
    plain = tmp_path / "plain_pairs.jsonl"
    plain.write_text("".join(line + "\n" for line in (EXAMPLES / "preference_demo.jsonl").read_text(
        encoding="utf-8").splitlines() if not line.startswith('{"prompt": [')), encoding="utf-8")
    plain_id = trainer_client.upload_dataset(plain).id

    job = trainer_client.wait(trainer_client.start_training(preference_request("tiny-plain", plain_id)).id)
    assert_succeeded(job)
    assert any("no chat template" in m for m in logs_of(events_of(trainer_client, job.id)))

    job = trainer_client.wait(trainer_client.start_training(preference_request("tiny-plain",
                                                                               preference_dataset_id)).id)
    assert job.state == FAILED and job.error.code == "INVALID_ARGUMENT"
    fields = {v.field for v in job.error.violations}
    assert fields == {"prompt", "chosen", "rejected"} and "chat template" in job.error.violations[0].reason
    assert len({v.row for v in job.error.violations}) == 21, "every message-list row is reported"


# ------------------------------------------------------------------------------------------------ reward


def test_reward_model_beats_chance_on_held_out_pairs_and_scores_from_the_store(
        trainer_client, tiny_model_id, preference_dataset_id, trainer_server):
    from services.trainer.rewards.reward_model import load_reward_model, score

    request = preference_request(tiny_model_id, preference_dataset_id, method="reward", max_steps=20,
                                 learning_rate=1e-3)
    request["eval"] = {"split_ratio": 0.25, "metric_for_best": "accuracy"}
    job = trainer_client.wait(trainer_client.start_training(request).id)
    assert_succeeded(job)

    events = events_of(trainer_client, job.id)
    assert {"accuracy", "margin"} <= train_metrics(events)[-1].keys()
    final_eval = eval_metrics(events)[-1]
    # 16 held-out pairs the model never trained on (a seeded split): chance would be 0.5.
    assert final_eval["eval_accuracy"] >= 0.8 and final_eval["eval_margin"] > 0, final_eval

    [checkpoint] = trainer_client.list_checkpoints(job_id=job.id)
    assert checkpoint.kind == common_pb2.REWARD_MODEL and checkpoint.method == "reward"
    assert checkpoint.id == job.result_checkpoint_id
    model, tokenizer = load_reward_model(CheckpointStore(trainer_server.store_root), job.result_checkpoint_id)
    assert type(model).__name__ == "LlamaForSequenceClassification"
    assert not any("lora" in name for name, _ in model.named_parameters()), "LoRA is merged into full weights"
    prompts = [p for p, _, _ in UNSEEN]
    chosen = score(model, tokenizer, prompts, [c for _, c, _ in UNSEEN])
    rejected = score(model, tokenizer, prompts, [r for _, _, r in UNSEEN])
    assert all(c > r for c, r in zip(chosen, rejected)), (chosen, rejected)


def test_reward_model_id_is_checked_when_loading(trainer_server, tiny_model_id):
    from services.common.errors import FailedPrecondition
    from services.trainer.rewards.reward_model import load_reward_model

    with pytest.raises(FailedPrecondition, match="not a reward model"):
        load_reward_model(CheckpointStore(trainer_server.store_root), tiny_model_id)


# -------------------------------------------------------------------------------------------- bad data


BROKEN = {  # examples/data/preference_broken.jsonl: line -> field reported (docs/datasets.md lists them)
    2: "rejected",            # missing
    3: "rejected",            # identical to chosen
    4: "chosen",              # a number
    5: "prompt[0].role",      # role "human"
    7: "prompt",              # whitespace only
    8: "chosen[0].content",   # message without content
    9: "",                    # invalid JSON
}


def test_bad_preference_rows_are_reported_per_row_at_validation(trainer_client, tiny_model_id, trainer_server):
    dataset = trainer_client.upload_dataset(EXAMPLES / "preference_broken.jsonl")
    report = trainer_client.validate_dataset(dataset.id, method="dpo")
    assert not report.ok and (report.total_rows, report.valid_rows, report.bad_rows) == (9, 2, 7)
    assert {v.row: v.field for v in report.violations} == BROKEN
    assert all(v.reason and v.hint for v in report.violations)

    job = trainer_client.wait(trainer_client.start_training(preference_request(tiny_model_id, dataset.id)).id)
    assert job.state == FAILED and job.error.code == "INVALID_ARGUMENT"
    assert {v.row: v.field for v in job.error.violations} == BROKEN
    states = [e.state_change.state for e in events_of(trainer_client, job.id)
              if e.WhichOneof("payload") == "state_change"]
    assert states == [trainer_pb2.JOB_STATE_VALIDATING, FAILED], "no compute was spent"


def test_kto_rows_given_to_a_sigmoid_dpo_job_fail_validation_clearly(trainer_client, tiny_model_id, kto_dataset_id):
    job = trainer_client.wait(trainer_client.start_training(preference_request(tiny_model_id, kto_dataset_id)).id)
    assert job.state == FAILED and job.error.code == "INVALID_ARGUMENT"
    first = job.error.violations[0]
    assert first.row == 1 and "completion, label, prompt" in first.reason and "prompt + chosen + rejected" in first.hint


# ---------------------------------------------------------------------------------- normalisation (no server)


def test_string_and_message_rows_mix_in_conversational_form(tmp_path):
    rows = tmp_path / "pairs.jsonl"
    rows.write_text(
        '{"prompt": "Hi?", "chosen": "Hello! Hope this helps!", "rejected": "Go away."}\n'
        '{"prompt": [{"role": "system", "content": "Be kind."}, {"role": "user", "content": "你好？"}], '
        '"chosen": [{"role": "assistant", "content": "你好！"}], "rejected": "走开。"}\n', encoding="utf-8")
    ds = load_preference_for_training(rows, FileFormat.JSONL, conversational=True, cache_dir=tmp_path / "cache")
    assert ds.column_names == ["prompt", "chosen", "rejected"]
    assert ds[0]["prompt"] == [{"role": "user", "content": "Hi?"}]
    assert ds[1]["prompt"][-1] == {"role": "user", "content": "你好？"}
    assert ds[1]["rejected"] == [{"role": "assistant", "content": "走开。"}]

    with pytest.raises(InvalidArgument) as info:  # a tokenizer without a chat template cannot render lists
        load_preference_for_training(rows, FileFormat.JSONL, conversational=False, cache_dir=tmp_path / "cache2")
    assert [(v.row, v.field) for v in info.value.violations] == [(2, "prompt"), (2, "chosen")]
    assert "chat template" in info.value.violations[0].reason


def test_unpaired_csv_labels_and_response_roles(tmp_path):
    rows = tmp_path / "kto.csv"
    rows.write_text('prompt,completion,label\n"Hi?","Hello!",true\n"Hi?","Go away.",FALSE\n', encoding="utf-8")
    ds = load_preference_for_training(rows, FileFormat.CSV, DatasetFormat.UNPAIRED_PREFERENCE, conversational=False,
                                      cache_dir=tmp_path / "cache")
    assert ds["label"] == [True, False] and ds["completion"] == ["Hello!", "Go away."]

    bad = {"prompt": [{"role": "user", "content": "Hi"}, {"role": "assistant", "content": "Hello"}],
           "chosen": [{"role": "user", "content": "x"}], "rejected": "y"}
    with pytest.raises(InvalidArgument) as info:
        to_preference_example(bad, DatasetFormat.PREFERENCE, conversational=True, row_number=5)
    assert [(v.row, v.field) for v in info.value.violations] == [(5, "prompt[1].role"), (5, "chosen[0].role")]
