"""The trainer service over real gRPC: jobs of every adapter type on a tiny model, the event stream,
cancellation, worker crashes and bad input. Every job runs real training steps in a worker process."""

from __future__ import annotations

import json
import math
import os
import signal

import grpc
import pytest
from google.rpc import error_details_pb2
from grpc_health.v1 import health_pb2, health_pb2_grpc
from grpc_reflection.v1alpha import reflection_pb2, reflection_pb2_grpc
from grpc_status import rpc_status
from safetensors.torch import load_file

from lmforge.v1 import common_pb2, trainer_pb2
from tests.conftest import EXAMPLES
from tests.helpers import all_events, rpc_code, run_job, sft_request, train_losses, wait_for

SUCCEEDED = trainer_pb2.JOB_STATE_SUCCEEDED

def test_lora_job_succeeds_streams_metrics_and_saves_adapters(trainer_client, tiny_model_id, demo_dataset_id,
                                                              trainer_server):
    job = run_job(trainer_client, sft_request(tiny_model_id, demo_dataset_id, max_steps=6, save_every=3))

    events = all_events(trainer_client, job.id)
    assert [e.sequence for e in events] == list(range(1, len(events) + 1)), "sequences must be 1..N without gaps"
    states = [e.state_change.state for e in events if e.WhichOneof("payload") == "state_change"]
    assert states == [trainer_pb2.JOB_STATE_VALIDATING, trainer_pb2.JOB_STATE_QUEUED,
                      trainer_pb2.JOB_STATE_RUNNING, SUCCEEDED]
    step_metrics = [e.metrics for e in events if e.WhichOneof("payload") == "metrics" and "loss" in e.metrics.values]
    assert len(step_metrics) == 6
    for metrics in step_metrics[1:]:
        for key in ("loss", "learning_rate", "grad_norm", "num_tokens", "tokens_per_second", "step_time",
                    "progress", "eta_seconds", "mean_token_accuracy"):
            assert key in metrics.values, key
        assert metrics.total_steps == 6
    assert step_metrics[-1].values["progress"] == pytest.approx(1.0)

    checkpoints = trainer_client.list_checkpoints(job_id=job.id)
    assert [(c.step, c.is_final, c.kind) for c in checkpoints] == [
        (3, False, common_pb2.ADAPTER), (6, True, common_pb2.ADAPTER)]
    assert job.result_checkpoint_id == checkpoints[-1].id
    assert list(job.checkpoint_ids) == [c.id for c in checkpoints]
    assert checkpoints[-1].base_model_id == tiny_model_id and checkpoints[-1].method == "sft"
    assert "loss" in checkpoints[-1].metrics

    # LoRA B matrices start at zero: after training they are not, so the adapter changes the model.
    adapter_dir = trainer_server.store_root / "adapters" / job.result_checkpoint_id
    weights = load_file(adapter_dir / "adapter_model.safetensors")
    lora_b = [t for name, t in weights.items() if "lora_B" in name]
    assert lora_b and all(t.abs().sum() > 0 for t in lora_b)
    config = json.loads((adapter_dir / "adapter_config.json").read_text())
    assert config["base_model_name_or_path"] == tiny_model_id, "adapters name their base by store id, not path"


def test_full_fine_tuning_changes_the_weights(trainer_client, tiny_model_id, demo_dataset_id, trainer_server):
    job = run_job(trainer_client, sft_request(tiny_model_id, demo_dataset_id, adapter="ADAPTER_FULL", max_steps=3,
                                              learning_rate=1e-3))
    result = trainer_server.store_root / "models" / job.result_checkpoint_id
    base = load_file(trainer_server.store_root / "models" / tiny_model_id / "model.safetensors")
    trained = load_file(result / "model.safetensors")
    assert base.keys() == trained.keys()
    changed = [name for name in base if not base[name].equal(trained[name])]
    assert len(changed) > len(base) // 2, f"only {changed} changed"
    assert (result / "tokenizer.json").is_file(), "full checkpoints carry their tokenizer"
    [checkpoint] = trainer_client.list_checkpoints(job_id=job.id)
    assert checkpoint.kind == common_pb2.FULL_CHECKPOINT and checkpoint.has_tokenizer


def test_loss_falls_on_a_learnable_task(trainer_client, tiny_model_id, learn_dataset_id):
    job = run_job(trainer_client, sft_request(tiny_model_id, learn_dataset_id, adapter="ADAPTER_FULL",
                                              max_steps=30, learning_rate=3e-3, lr_scheduler="constant"))
    losses = train_losses(all_events(trainer_client, job.id))
    assert len(losses) == 30
    first, last = sum(losses[:5]) / 5, sum(losses[-5:]) / 5
    assert last < 0.6 * first, f"loss did not fall enough: first {first:.3f}, last {last:.3f}"


def test_qlora_job_trains_a_4bit_base(trainer_client, tiny_model_id, demo_dataset_id, trainer_server):
    job = run_job(trainer_client, sft_request(tiny_model_id, demo_dataset_id, adapter="ADAPTER_QLORA", max_steps=3))
    [checkpoint] = trainer_client.list_checkpoints(job_id=job.id)
    assert checkpoint.kind == common_pb2.ADAPTER and checkpoint.labels["adapter_type"] == "qlora"
    logs = [e.log.message for e in all_events(trainer_client, job.id) if e.WhichOneof("payload") == "log"]
    assert any("quantization: nf4 4-bit" in m for m in logs), logs
    weights = load_file(trainer_server.store_root / "adapters" / job.result_checkpoint_id / "adapter_model.safetensors")
    assert any("lora_B" in name and t.abs().sum() > 0 for name, t in weights.items())


def test_stream_resumes_from_any_sequence_without_gaps_or_repeats(trainer_client, tiny_model_id, demo_dataset_id):
    job = trainer_client.start_training(sft_request(tiny_model_id, demo_dataset_id, max_steps=8))
    # A live subscriber that disconnects part-way through the run...
    first_part = []
    for event in trainer_client.stream_metrics(job.id, follow=True):
        first_part.append(event)
        if event.WhichOneof("payload") == "metrics":
            break
    # ...and reconnects with the last sequence it saw.
    rest = list(trainer_client.stream_metrics(job.id, after_sequence=first_part[-1].sequence, follow=True))
    assert rest[-1].state_change.state == SUCCEEDED, "follow ends after the terminal state"
    history = all_events(trainer_client, job.id)
    assert first_part + rest == history

    middle = history[len(history) // 2].sequence
    tail = list(trainer_client.stream_metrics(job.id, after_sequence=middle, follow=False))
    assert [e.sequence for e in tail] == [e.sequence for e in history if e.sequence > middle]
    assert list(trainer_client.stream_metrics(job.id, after_sequence=history[-1].sequence, follow=True)) == []


def test_cancel_stops_the_worker_and_keeps_saved_checkpoints(trainer_client, tiny_model_id, demo_dataset_id,
                                                             trainer_server):
    job = trainer_client.start_training(sft_request(tiny_model_id, demo_dataset_id, max_steps=100_000, save_every=2))
    for event in trainer_client.stream_metrics(job.id, follow=True):
        if event.WhichOneof("payload") == "checkpoint_saved":
            break
    pid = trainer_server.jobs.worker_pid(job.id)
    cancelled = trainer_client.cancel_job(job.id)
    assert cancelled.state == trainer_pb2.JOB_STATE_CANCELLED
    assert cancelled.error.code == "CANCELLED"
    assert cancelled.current_step < 100_000
    with pytest.raises(ProcessLookupError):
        os.kill(pid, 0)
    saved = trainer_client.list_checkpoints(job_id=job.id)
    assert saved and all(not c.is_final for c in saved), "checkpoints saved before the cancel stay"
    assert not cancelled.result_checkpoint_id
    code = rpc_code(lambda: trainer_client.cancel_job(job.id))
    assert code == grpc.StatusCode.FAILED_PRECONDITION


def test_killed_worker_fails_the_job_and_the_server_keeps_serving(trainer_client, tiny_model_id, demo_dataset_id,
                                                                  trainer_server):
    """With automatic restarts off (checkpoints.max_restarts = 0) a killed worker fails its job, saying
    why; test_trainer_restart.py covers the default, where the job resumes by itself."""
    request = sft_request(tiny_model_id, demo_dataset_id, max_steps=100_000)
    request["checkpoints"]["max_restarts"] = 0
    job = trainer_client.start_training(request)
    for event in trainer_client.stream_metrics(job.id, follow=True):
        if event.WhichOneof("payload") == "metrics":
            break
    os.kill(trainer_server.jobs.worker_pid(job.id), signal.SIGKILL)
    final = trainer_client.wait(job.id)
    assert final.state == trainer_pb2.JOB_STATE_FAILED
    assert "SIGKILL" in final.error.message and "automatic restarts are off" in final.error.message
    assert "'loss'" in final.error.log_tail, "the tail of the worker's log comes with the failure"

    # The server is unharmed: health says SERVING and the next job runs to the end.
    health = health_pb2_grpc.HealthStub(grpc.insecure_channel(trainer_server.address))
    assert health.Check(health_pb2.HealthCheckRequest(service="")).status == health_pb2.HealthCheckResponse.SERVING
    run_job(trainer_client, sft_request(tiny_model_id, demo_dataset_id, max_steps=1))


def test_bad_rows_fail_the_job_at_validation_with_every_row_reported(trainer_client, tiny_model_id, trainer_server):
    dataset = trainer_client.upload_dataset(EXAMPLES / "sft_broken.jsonl")
    job = trainer_client.start_training(sft_request(tiny_model_id, dataset.id))
    final = trainer_client.wait(job.id)
    assert final.state == trainer_pb2.JOB_STATE_FAILED
    assert final.error.code == "INVALID_ARGUMENT"
    bad_rows = {v.row for v in final.error.violations}
    assert bad_rows == {2, 3, 4, 5, 7, 8, 9, 10, 12}, "examples/data/README.md lists the broken lines"
    assert all(v.reason and v.hint for v in final.error.violations)
    states = [e.state_change.state for e in all_events(trainer_client, job.id)
              if e.WhichOneof("payload") == "state_change"]
    assert states == [trainer_pb2.JOB_STATE_VALIDATING, trainer_pb2.JOB_STATE_FAILED], "no compute was spent"
    assert not (trainer_server.home / "jobs" / job.id / "worker.log").exists()

    report = trainer_client.validate_dataset(dataset.id)
    assert not report.ok and report.total_rows == 12 and report.bad_rows == 9 and report.valid_rows == 3


def _bad_request_fields(error: grpc.RpcError) -> set[str]:
    status = rpc_status.from_call(error)
    fields = set()
    for detail in status.details:
        if detail.Is(error_details_pb2.BadRequest.DESCRIPTOR):
            bad_request = error_details_pb2.BadRequest()
            detail.Unpack(bad_request)
            fields |= {v.field for v in bad_request.field_violations}
    return fields


def test_bad_requests_get_precise_status_codes(trainer_client, tiny_model_id, demo_dataset_id):
    assert rpc_code(lambda: trainer_client.get_job("job-does-not-exist")) == grpc.StatusCode.NOT_FOUND
    assert rpc_code(lambda: trainer_client.cancel_job("job-does-not-exist")) == grpc.StatusCode.NOT_FOUND
    assert rpc_code(lambda: list(trainer_client.stream_metrics("job-nope", follow=False))) == grpc.StatusCode.NOT_FOUND
    assert rpc_code(lambda: trainer_client.start_training(
        sft_request("no-such-model", demo_dataset_id))) == grpc.StatusCode.NOT_FOUND
    assert rpc_code(lambda: trainer_client.start_training(
        sft_request(tiny_model_id, "ds-0000"))) == grpc.StatusCode.NOT_FOUND
    assert rpc_code(lambda: trainer_client.start_training(
        sft_request("../../etc", demo_dataset_id))) == grpc.StatusCode.INVALID_ARGUMENT

    no_method = sft_request(tiny_model_id, demo_dataset_id)
    del no_method["sft"]
    with pytest.raises(grpc.RpcError) as info:
        trainer_client.start_training(no_method)
    assert info.value.code() == grpc.StatusCode.INVALID_ARGUMENT and _bad_request_fields(info.value) == {"method"}
    ppo = sft_request(tiny_model_id, demo_dataset_id)
    del ppo["sft"]
    ppo["ppo"] = {"algorithm": "PPO_ALGORITHM_ACTOR_CRITIC", "critic_init": "PPO_CRITIC_INIT_REWARD_MODEL"}
    with pytest.raises(grpc.RpcError) as info:
        trainer_client.start_training(ppo)
    assert info.value.code() == grpc.StatusCode.INVALID_ARGUMENT and _bad_request_fields(info.value) == {
        "ppo.reward_model_id", "ppo.critic_init"}

    bad = sft_request(tiny_model_id, demo_dataset_id, learning_rate=-1.0, batch_size=-1, precision="fp16",
                      lr_scheduler="sideways")
    with pytest.raises(grpc.RpcError) as info:
        trainer_client.start_training(bad)
    assert info.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert _bad_request_fields(info.value) >= {
        "hyperparameters.learning_rate", "hyperparameters.batch_size", "hyperparameters.precision",
        "hyperparameters.lr_scheduler"}


def test_start_training_is_idempotent_on_request_id(trainer_client, tiny_model_id, demo_dataset_id):
    request = {**sft_request(tiny_model_id, demo_dataset_id, max_steps=1), "request_id": "retry-me-1"}
    first = trainer_client.start_training(request)
    second = trainer_client.start_training(request)
    assert first.id == second.id
    different = {**request, "display_name": "another body under the same request_id"}
    with pytest.raises(grpc.RpcError) as info:
        trainer_client.start_training(different)
    assert info.value.code() == grpc.StatusCode.ALREADY_EXISTS and "request_id" in info.value.details()
    trainer_client.wait(first.id)


def test_list_jobs_pages_through_every_job(trainer_client, tiny_model_id, demo_dataset_id):
    for _ in range(3):
        trainer_client.start_training(sft_request(tiny_model_id, demo_dataset_id, max_steps=1))
    paged = [j.id for j in trainer_client.list_jobs(page_size=2)]
    whole = trainer_client._stub.ListJobs(trainer_pb2.ListJobsRequest(page_size=500)).jobs
    assert paged == [j.id for j in whole] and len(paged) == len(set(paged)) >= 3
    created = [j.created_at.ToNanoseconds() for j in whole]
    assert created == sorted(created, reverse=True), "newest first"
    assert rpc_code(lambda: trainer_client._stub.ListJobs(trainer_pb2.ListJobsRequest(page_size=-1))) \
        == grpc.StatusCode.INVALID_ARGUMENT
    for job_id in paged[:3]:
        trainer_client.wait(job_id)


def test_uploads_are_content_addressed_and_checked(trainer_client):
    path = EXAMPLES / "sft_alpaca.jsonl"
    assert trainer_client.upload_dataset(path).id == trainer_client.upload_dataset(path).id
    parts = [trainer_pb2.UploadDatasetRequest(header=trainer_pb2.DatasetUploadHeader(name="x.jsonl", sha256="00" * 32)),
             trainer_pb2.UploadDatasetRequest(chunk=path.read_bytes())]
    assert rpc_code(lambda: trainer_client._stub.UploadDataset(iter(parts))) == grpc.StatusCode.DATA_LOSS
    parts = [trainer_pb2.UploadDatasetRequest(header=trainer_pb2.DatasetUploadHeader(name="data.xlsx")),
             trainer_pb2.UploadDatasetRequest(chunk=b"{}")]
    assert rpc_code(lambda: trainer_client._stub.UploadDataset(iter(parts))) == grpc.StatusCode.INVALID_ARGUMENT


def test_health_and_reflection(trainer_server):
    channel = grpc.insecure_channel(trainer_server.address)
    health = health_pb2_grpc.HealthStub(channel)
    response = health.Check(health_pb2.HealthCheckRequest(service="lmforge.v1.TrainerService"))
    assert response.status == health_pb2.HealthCheckResponse.SERVING
    stub = reflection_pb2_grpc.ServerReflectionStub(channel)
    [answer] = stub.ServerReflectionInfo(iter([reflection_pb2.ServerReflectionRequest(list_services="")]))
    names = {s.name for s in answer.list_services_response.service}
    assert {"lmforge.v1.TrainerService", "grpc.health.v1.Health"} <= names


def test_many_subscribers_see_the_same_stream(trainer_client, tiny_model_id, demo_dataset_id):
    import threading

    job = trainer_client.start_training(sft_request(tiny_model_id, demo_dataset_id, max_steps=3))
    seen: list[list[int]] = [[] for _ in range(3)]

    def follow(index: int) -> None:
        seen[index] = [e.sequence for e in trainer_client.stream_metrics(job.id, follow=True)]

    threads = [threading.Thread(target=follow, args=(i,)) for i in range(3)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(timeout=300)
    final = trainer_client.get_job(job.id)
    assert seen[0] == seen[1] == seen[2] == list(range(1, final.last_sequence + 1))


def test_queued_job_can_be_cancelled_before_it_runs(trainer_client, tiny_model_id, demo_dataset_id):
    # Two long jobs fill both slots; a third waits in QUEUED and is cancelled there.
    long_jobs = [trainer_client.start_training(sft_request(tiny_model_id, demo_dataset_id, max_steps=100_000))
                 for _ in range(2)]
    queued = trainer_client.start_training(sft_request(tiny_model_id, demo_dataset_id, max_steps=1))
    wait_for(lambda: trainer_client.get_job(queued.id).state == trainer_pb2.JOB_STATE_QUEUED, what="QUEUED")
    assert trainer_client.cancel_job(queued.id).state == trainer_pb2.JOB_STATE_CANCELLED
    for job in long_jobs:
        assert trainer_client.cancel_job(job.id).state == trainer_pb2.JOB_STATE_CANCELLED
    # A cancelled job can be resumed under its own id. This one never ran: its data is checked again and
    # it runs as its first attempt.
    resumed = trainer_client.resume_job(queued.id)
    assert resumed.id == queued.id and resumed.state == trainer_pb2.JOB_STATE_VALIDATING
    final = trainer_client.wait(queued.id)
    assert final.state == trainer_pb2.JOB_STATE_SUCCEEDED and final.attempt == 1 and final.result_checkpoint_id
    # One that ran goes on as its next attempt, saying so in a `resumed` event.
    again = trainer_client.resume_job(long_jobs[0].id)
    assert again.attempt == 2 and again.state == trainer_pb2.JOB_STATE_QUEUED
    resumed_event = wait_for(lambda: next((e for e in trainer_client.stream_metrics(again.id, follow=False)
                                           if e.WhichOneof("payload") == "resumed"), None), what="a resumed event")
    assert resumed_event.attempt == 2 and "resumed by the user" in resumed_event.resumed.reason
    assert trainer_client.cancel_job(again.id).state == trainer_pb2.JOB_STATE_CANCELLED


def eval_events(events) -> list[trainer_pb2.TrainingEvent]:
    return [e for e in events if e.WhichOneof("payload") == "metrics" and e.metrics.phase == "eval"]


def test_eval_split_and_packing_mark_the_best_checkpoint(trainer_client, tiny_model_id, demo_dataset_id):
    request = sft_request(tiny_model_id, demo_dataset_id, max_steps=4, packing=True)
    request["eval"] = {"split_ratio": 0.2, "every_steps": 2}
    job = run_job(trainer_client, request)
    evals = eval_events(all_events(trainer_client, job.id))
    assert [e.step for e in evals] == [2, 4], "at steps 2 and 4; the last one doubles as the final evaluation"
    for event in evals:
        values = event.metrics.values
        assert values["eval_perplexity"] == pytest.approx(math.exp(values["eval_loss"]), rel=1e-6)
    checkpoints = {c.id: c for c in trainer_client.list_checkpoints(job_id=job.id)}
    final = checkpoints[job.result_checkpoint_id]
    assert "eval_loss" in final.metrics, "final metrics (eval included) are in the manifest"
    [best] = [c for c in checkpoints.values() if c.is_best]
    best_eval = min(evals, key=lambda e: e.metrics.values["eval_loss"])
    assert best.step == best_eval.step and best.labels["best_metric"] == "eval_loss"
    assert float(best.labels["best_value"]) == pytest.approx(best_eval.metrics.values["eval_loss"], rel=1e-5)


def test_early_stopping_stops_when_the_eval_metric_stops_improving(trainer_client, tiny_model_id, learn_dataset_id):
    """A threshold no evaluation can beat makes every evaluation after the first a non-improvement, so
    with patience 2 training must stop at the third evaluation (step 6) of the 40 planned steps."""
    request = sft_request(tiny_model_id, learn_dataset_id, max_steps=40)
    request["eval"] = {"split_ratio": 0.25, "every_steps": 2, "early_stopping_patience": 2,
                       "early_stopping_threshold": 1e9}
    job = run_job(trainer_client, request)
    assert job.current_step == 6 and job.total_steps == 40
    events = all_events(trainer_client, job.id)
    assert any(e.WhichOneof("payload") == "log" and "early stopping after step 6" in e.log.message for e in events)
    [best] = [c for c in trainer_client.list_checkpoints(job_id=job.id) if c.is_best]
    evals = eval_events(events)
    assert best.step == min(evals, key=lambda e: e.metrics.values["eval_loss"]).step, \
        "the best checkpoint is the truly best evaluation (the threshold only drives stopping)"


def test_early_stopping_needs_periodic_evaluation(trainer_client, tiny_model_id, learn_dataset_id):
    request = sft_request(tiny_model_id, learn_dataset_id)
    request["eval"] = {"early_stopping_patience": 2}
    with pytest.raises(grpc.RpcError) as info:
        trainer_client.start_training(request)
    assert info.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert _bad_request_fields(info.value) >= {"eval.early_stopping_patience", "eval.every_steps"}


def test_errors_about_data_name_the_dataset_id_never_a_server_path(trainer_server, trainer_client, tmp_path,
                                                                    tiny_model_id):
    server_root = str(trainer_server.home)
    broken = tmp_path / "broken.parquet"
    broken.write_bytes(b"this is not a parquet file\n" * 10)
    dataset = trainer_client.upload_dataset(broken)
    texts = []
    with pytest.raises(grpc.RpcError) as info:
        trainer_client.validate_dataset(dataset.id)
    assert info.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    texts.append(info.value.details())
    assert f"dataset {dataset.id} is not a readable Parquet file" in info.value.details()
    with pytest.raises(grpc.RpcError) as info:
        trainer_client.describe_dataset(dataset.id, tiny_model_id, 128)
    texts.append(info.value.details())
    job = trainer_client.start_training(sft_request(tiny_model_id, dataset.id, max_steps=1))
    failed = trainer_client.wait(job.id)
    assert failed.state == trainer_pb2.JOB_STATE_FAILED and failed.error.code == "INVALID_ARGUMENT"
    texts += [failed.error.message, *(str(v) for v in failed.error.violations)]
    assert dataset.id in failed.error.message
    leaked = [text for text in texts if server_root in text or "/tmp/" in text]
    assert not leaked, leaked
