"""Small helpers shared by the integration tests."""

from __future__ import annotations

import time

import grpc
import pytest

from lmforge.v1 import trainer_pb2


def sft_request(base_model_id: str, dataset_id: str, *, adapter: str = "ADAPTER_LORA", max_steps: int = 4,
                save_every: int = 0, **hyper) -> dict:
    """A StartTrainingRequest (as the dict form clients send) for a quick SFT job on a tiny model."""
    return {
        "base_model_id": base_model_id,
        "dataset_id": dataset_id,
        "sft": {},
        "adapter": {"type": adapter, "rank": 8},
        "hyperparameters": {"max_steps": max_steps, "batch_size": 4, "max_seq_length": 128, "logging_steps": 1,
                            **hyper},
        "checkpoints": {"every_steps": save_every},
    }


def wait_for(predicate, timeout: float = 180.0, interval: float = 0.1, what: str = "condition"):
    """Poll until predicate() is truthy (returns its value); fails the test after `timeout` seconds."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        value = predicate()
        if value:
            return value
        time.sleep(interval)
    raise AssertionError(f"timed out after {timeout}s waiting for {what}")


def rpc_code(call) -> grpc.StatusCode:
    """The status code a unary call fails with (asserts it fails)."""
    with pytest.raises(grpc.RpcError) as info:
        call()
    return info.value.code()


def collect_generation(stream) -> tuple[str, list[int], object, list[str]]:
    """Drain a Generate stream (choice 0): (text, token ids, its GenerationFinished, the deltas)."""
    deltas, ids, finished = [], [], None
    for response in stream:
        deltas.append(response.text_delta)
        ids.extend(response.token_ids)
        if response.HasField("finished"):
            finished = response.finished
    return "".join(deltas), ids, finished, deltas


def run_job(client, request: dict) -> trainer_pb2.Job:
    """Start a training job, wait for its end and assert it SUCCEEDED (the error is shown otherwise)."""
    job = client.start_training(request)
    final = client.wait(job.id)
    assert final.state == trainer_pb2.JOB_STATE_SUCCEEDED, f"{trainer_pb2.JobState.Name(final.state)}: {final.error}"
    return final


def all_events(client, job_id: str) -> list[trainer_pb2.TrainingEvent]:
    """Every event of a job so far, in sequence order."""
    return list(client.stream_metrics(job_id, after_sequence=0, follow=False))


def train_losses(events) -> list[float]:
    """The training loss of each logged step, in order."""
    return [e.metrics.values["loss"] for e in events
            if e.WhichOneof("payload") == "metrics" and "loss" in e.metrics.values]
