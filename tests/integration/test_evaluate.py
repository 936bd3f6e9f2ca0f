"""Evaluate jobs over the real trainer service: perplexity of text, generation metrics of answers, adapters,
results in the store's manifests, and bad requests. Every job runs the real recipe in a worker process.

Run: .venv/bin/python -m pytest tests/integration/test_evaluate.py -q
"""

from __future__ import annotations

import json
import math

import grpc
import pytest
from google.rpc import error_details_pb2
from grpc_status import rpc_status

from lmforge.v1 import trainer_pb2
from services.trainer.evaluation import score_generations
from tests.conftest import EXAMPLES
from tests.helpers import all_events, rpc_code, run_job, sft_request

SUCCEEDED = trainer_pb2.JOB_STATE_SUCCEEDED
OTHER_MODEL_ID = "tiny-llama-eval-other"
TEXTS = ["Forge: Paris is the capital of France.", "中国的首都是北京。", "The quick brown fox jumps over the lazy dog.",
         "一年有十二个月。"]


def evaluate(client, *args, **kwargs) -> trainer_pb2.Job:
    """Start an Evaluate job, wait for it and assert it SUCCEEDED."""
    job = client.evaluate(*args, **kwargs)
    final = client.wait(job.id)
    assert final.state == SUCCEEDED, f"{trainer_pb2.JobState.Name(final.state)}: {final.error}"
    return final


def stored_evaluation(client, entry_id: str, job_id: str):
    (entry,) = [c for c in client.list_checkpoints() if c.id == entry_id]
    found = [e for e in entry.evaluations if e.job_id == job_id]
    assert len(found) == 1, f"{entry_id} has no evaluation by {job_id}"
    return found[0]


def eval_events(client, job_id: str) -> list[trainer_pb2.MetricsEvent]:
    return [e.metrics for e in all_events(client, job_id) if e.WhichOneof("payload") == "metrics"]


@pytest.fixture(scope="module")
def text_dataset_id(trainer_client, tmp_path_factory) -> str:
    path = tmp_path_factory.mktemp("eval-data") / "eval_text.jsonl"
    path.write_text("".join(json.dumps({"text": t}, ensure_ascii=False) + "\n" for t in TEXTS), encoding="utf-8")
    return trainer_client.upload_dataset(path).id


@pytest.fixture(scope="module")
def qa_dataset_id(trainer_client) -> str:
    return trainer_client.upload_dataset(EXAMPLES / "eval_qa.jsonl").id


@pytest.fixture(scope="module")
def adapter_id(trainer_client, tiny_model_id, demo_dataset_id) -> str:
    return run_job(trainer_client, sft_request(tiny_model_id, demo_dataset_id, max_steps=2)).result_checkpoint_id


def reference_perplexity(model_dir, texts: list[str]) -> float:
    """Perplexity computed independently: transformers' own loss per row, weighted by predicted tokens."""
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    model = AutoModelForCausalLM.from_pretrained(model_dir, dtype=torch.float32)
    tokenizer = AutoTokenizer.from_pretrained(model_dir)
    total, count = 0.0, 0
    with torch.no_grad():
        for text in texts:
            ids = torch.tensor([tokenizer(text)["input_ids"]])
            total += model(input_ids=ids, labels=ids).loss.item() * (ids.shape[1] - 1)
            count += ids.shape[1] - 1
    return math.exp(total / count)


def test_perplexity_of_text_is_correct_and_stored_in_the_manifest(trainer_client, trainer_server, tiny_model_id,
                                                                  text_dataset_id):
    job = evaluate(trainer_client, tiny_model_id, text_dataset_id, batch_size=3)
    assert job.method == "evaluate" and job.result_checkpoint_id == tiny_model_id
    assert (job.evaluation.model_id, job.evaluation.dataset_id) == (tiny_model_id, text_dataset_id)

    result = stored_evaluation(trainer_client, tiny_model_id, job.id)
    assert set(result.metrics) == {"perplexity"} and result.samples == len(TEXTS)
    assert result.dataset_id == text_dataset_id
    ppl = result.metrics["perplexity"]
    assert math.isfinite(ppl) and ppl > 1
    # batched with padding (3 + 1 rows) yet equal to transformers' unbatched loss
    expected = reference_perplexity(trainer_server.store_root / "models" / tiny_model_id, TEXTS)
    assert ppl == pytest.approx(expected, rel=1e-4)

    events = eval_events(trainer_client, job.id)
    assert all(m.phase == "eval" for m in events)
    assert [m.values["progress"] for m in events[:-1]] == pytest.approx([0.5, 1.0])
    assert events[-1].values["perplexity"] == pytest.approx(ppl) and events[-1].values["samples"] == len(TEXTS)
    assert job.latest_metrics["perplexity"] == pytest.approx(ppl)


def test_answers_get_generation_metrics_that_match_the_predictions(trainer_client, trainer_server, tiny_model_id,
                                                                   qa_dataset_id):
    job = evaluate(trainer_client, tiny_model_id, qa_dataset_id, max_new_tokens=8, max_samples=6, batch_size=4)
    result = stored_evaluation(trainer_client, tiny_model_id, job.id)
    assert set(result.metrics) == {"exact_match", "f1", "bleu", "rouge1", "rouge2", "rougeL"}  # the defaults
    assert result.samples == 6
    for name, value in result.metrics.items():
        assert 0 <= value <= (100 if name == "bleu" else 1), (name, value)

    # the scores are those of what the model generated, for the first 6 rows of the file
    lines = (trainer_server.home / "jobs" / job.id / "predictions.jsonl").read_text(encoding="utf-8").splitlines()
    rows = [json.loads(line) for line in lines]
    source = [json.loads(line) for line in (EXAMPLES / "eval_qa.jsonl").read_text(encoding="utf-8").splitlines()]
    assert [r["reference"] for r in rows] == [s["completion"] for s in source[:6]]
    assert all(r["prompt"].endswith("<|im_start|>assistant\n") for r in rows)
    expected = score_generations([r["prediction"] for r in rows], [r["reference"] for r in rows],
                                 ["exact_match", "f1", "bleu", "rouge"])
    assert dict(result.metrics) == pytest.approx(expected)

    # the CLI's compact summary of `lmforge checkpoints` reads the same numbers
    from lmforge import cli

    (entry,) = [c for c in trainer_client.list_checkpoints() if c.id == tiny_model_id]
    (row,) = [r for r in cli.checkpoint_rows([entry])]
    assert row[-1] == cli.format_evaluation_summary(dict(entry.evaluations[-1].metrics))


def test_every_metric_on_answers_including_reference_perplexity(trainer_client, tiny_model_id, qa_dataset_id):
    metrics = ["perplexity", "exact_match", "accuracy", "f1", "macro_f1", "bleu", "rouge"]
    job = evaluate(trainer_client, tiny_model_id, qa_dataset_id, metrics=metrics, max_new_tokens=4, max_samples=4)
    result = stored_evaluation(trainer_client, tiny_model_id, job.id)
    assert set(result.metrics) == {"perplexity", "exact_match", "accuracy", "f1", "macro_f1", "bleu", "rouge1",
                                   "rouge2", "rougeL"}
    # a random 2-layer model is near-uniform over its vocabulary (a few hundred tokens)
    assert 10 < result.metrics["perplexity"] < 10_000


def test_adapter_results_are_stored_on_the_adapter(trainer_client, tiny_model_id, qa_dataset_id, adapter_id):
    job = evaluate(trainer_client, tiny_model_id, qa_dataset_id, adapter_id=adapter_id,
                   metrics=["exact_match", "perplexity"], max_new_tokens=4, max_samples=4)
    assert job.result_checkpoint_id == adapter_id
    result = stored_evaluation(trainer_client, adapter_id, job.id)
    assert set(result.metrics) == {"exact_match", "perplexity"} and math.isfinite(result.metrics["perplexity"])
    (base,) = [c for c in trainer_client.list_checkpoints() if c.id == tiny_model_id]
    assert job.id not in [e.job_id for e in base.evaluations]

    # naming the adapter as the model works the same way (its base is looked up)
    job = evaluate(trainer_client, adapter_id, qa_dataset_id, metrics=["perplexity"], max_samples=2)
    assert job.result_checkpoint_id == adapter_id
    assert stored_evaluation(trainer_client, adapter_id, job.id).samples == 2


def _violation_fields(error: grpc.RpcError) -> set[str]:
    fields = set()
    for detail in rpc_status.from_call(error).details:
        if detail.Is(error_details_pb2.BadRequest.DESCRIPTOR):
            bad = error_details_pb2.BadRequest()
            detail.Unpack(bad)
            fields |= {v.field for v in bad.field_violations}
    return fields


def test_bad_requests(trainer_client, store_root, tiny_model_id, qa_dataset_id, adapter_id):
    with pytest.raises(grpc.RpcError) as info:
        trainer_client.evaluate(tiny_model_id, qa_dataset_id, metrics=["bleu", "meteor"])
    assert info.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert "metrics[1]" in _violation_fields(info.value)

    assert rpc_code(lambda: trainer_client.evaluate("no-such-model", qa_dataset_id)) == grpc.StatusCode.NOT_FOUND
    assert rpc_code(lambda: trainer_client.evaluate(tiny_model_id, "ds-nope")) == grpc.StatusCode.NOT_FOUND

    from services.common.model_import import create_tiny_model
    from services.common.store import CheckpointStore

    store = CheckpointStore(store_root)
    if not store.exists(OTHER_MODEL_ID):
        create_tiny_model(store, OTHER_MODEL_ID, corpus_files=[EXAMPLES / "eval_qa.jsonl"])
    code = rpc_code(lambda: trainer_client.evaluate(OTHER_MODEL_ID, qa_dataset_id, adapter_id=adapter_id))
    assert code == grpc.StatusCode.FAILED_PRECONDITION


def test_text_rows_cannot_give_answer_metrics(trainer_client, tiny_model_id, text_dataset_id):
    job = trainer_client.evaluate(tiny_model_id, text_dataset_id, metrics=["perplexity", "bleu"])
    job = trainer_client.wait(job.id)
    assert job.state == trainer_pb2.JOB_STATE_FAILED
    assert job.error.code == "INVALID_ARGUMENT"
    assert [v.field for v in job.error.violations] == ["metrics[1]"]


def test_evaluate_is_idempotent_on_request_id(trainer_client, tiny_model_id, text_dataset_id):
    first = trainer_client.evaluate(tiny_model_id, text_dataset_id, request_id="eval-once")
    again = trainer_client.evaluate(tiny_model_id, text_dataset_id, request_id="eval-once")
    assert first.id == again.id
    assert trainer_client.wait(first.id).state == SUCCEEDED
