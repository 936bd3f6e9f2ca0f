"""Every bundled job file (examples/jobs/*.yaml) runs from the CLI as the README shows, on a tiny base
with a couple of steps, and what it produces is served by the inference service where it is a chat model.

This is the issue's "done when": each method runs as a job from the CLI and is servable."""

from __future__ import annotations

from pathlib import Path

import pytest

from lmforge.client import InferenceClient
from lmforge.v1 import common_pb2, trainer_pb2
from tests.integration.test_cli_and_node import _explain, lmforge

ROOT = Path(__file__).resolve().parents[2]
JOBS = ROOT / "examples" / "jobs"
DATA = ROOT / "examples" / "data"

# job file -> (dataset, kind of the result, served as a chat model)
JOB_FILES = {
    "sft_lora.yaml": ("sft_demo.jsonl", common_pb2.ADAPTER, True),
    "pretrain.yaml": ("pretrain_corpus.jsonl", common_pb2.FULL_CHECKPOINT, True),
    "continued_pretrain.yaml": ("pretrain_corpus.jsonl", common_pb2.FULL_CHECKPOINT, True),  # new tokens: merged
    "dpo_lora.yaml": ("preference_demo.jsonl", common_pb2.ADAPTER, True),
    "reward.yaml": ("preference_demo.jsonl", common_pb2.REWARD_MODEL, False),
}


def test_every_job_file_is_exercised():
    assert set(JOB_FILES) == {p.name for p in JOBS.glob("*.yaml")}, "add the new job file to JOB_FILES"


@pytest.fixture(scope="module")
def inference(store_root):
    from services.inference.server import InferenceServer

    server = InferenceServer(store_root, port=0)
    server.serve()
    with InferenceClient(server.address, timeout=120) as client:
        yield client
    server.stop(grace_seconds=1)


@pytest.mark.parametrize("job_file", sorted(JOB_FILES))
def test_job_file_runs_from_the_cli_and_its_result_serves(job_file, trainer_server, trainer_client, tiny_model_id,
                                                         inference):
    dataset, kind, servable = JOB_FILES[job_file]
    args = ["train", "-f", f"examples/jobs/{job_file}", "--dataset", f"examples/data/{dataset}",
            "--max-steps", "2", "--max-seq-length", "64", "--save-every", "0", "--follow"]
    if job_file != "pretrain.yaml":
        args += ["--base-model", tiny_model_id]
    result = lmforge(trainer_server, *args, timeout=540)
    assert result.returncode == 0, _explain(result)
    job = trainer_client.get_job(result.stdout.split()[0])
    assert job.state == trainer_pb2.JOB_STATE_SUCCEEDED and job.current_step == 2
    [checkpoint] = [c for c in trainer_client.list_checkpoints(job_id=job.id) if c.id == job.result_checkpoint_id]
    assert checkpoint.kind == kind
    if not servable:
        return
    if kind == common_pb2.ADAPTER:
        model_id, adapter_id = checkpoint.base_model_id, checkpoint.id
    else:
        model_id, adapter_id = checkpoint.id, ""
    text, finished = inference.chat(model_id, [{"role": "user", "content": "锻造 forge?"}], adapter_id=adapter_id,
                                    temperature=0.0, max_new_tokens=4)
    assert finished.usage.completion_tokens > 0
    if kind != common_pb2.ADAPTER:
        inference.unload_model(model_id)
