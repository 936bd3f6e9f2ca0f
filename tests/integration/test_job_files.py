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
    "grpo.yaml": ("rl_prompts.jsonl", common_pb2.ADAPTER, True),
    "rloo.yaml": ("rl_prompts.jsonl", common_pb2.ADAPTER, True),
    "ppo.yaml": ("rl_prompts.jsonl", common_pb2.ADAPTER, True),
    "rft.yaml": ("rft_prompts.jsonl", common_pb2.ADAPTER, True),
    "distill.yaml": ("distill_prompts.jsonl", common_pb2.ADAPTER, True),
}
# Per job file: flags that point it at what the tiny test store holds, and its steps for --max-steps 2.
EXTRA_FLAGS = {
    "rloo.yaml": lambda store: ["--reward-model", _tiny_reward_model(store)],
    "ppo.yaml": lambda store: ["--reward-model", _tiny_reward_model(store)],
    "distill.yaml": lambda store: ["--teacher", "tiny-llama"],
}
STEPS = {"rft.yaml": 2 * 3}  # --max-steps is per round, 3 rounds
# A random tiny teacher answers greedily with whitespace only: let it sample instead.
FILE_EDITS = {"distill.yaml": lambda text: text.replace("temperature: 0.0", "temperature: 1.0")}


def test_every_job_file_is_exercised():
    assert set(JOB_FILES) == {p.name for p in JOBS.glob("*.yaml")}, "add the new job file to JOB_FILES"


def _tiny_reward_model(store_root) -> str:
    """A one-score classifier on the tiny base, stored as a REWARD_MODEL (untrained: RLOO only needs a scorer)."""
    from tests.integration.test_inference_service import _tiny_reward_model as make

    from services.common.store import CheckpointStore

    return make(CheckpointStore(store_root), "tiny-llama")


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
                                                         inference, tmp_path):
    dataset, kind, servable = JOB_FILES[job_file]
    path = JOBS / job_file
    if job_file in FILE_EDITS:
        path = tmp_path / job_file
        path.write_text(FILE_EDITS[job_file]((JOBS / job_file).read_text(encoding="utf-8")), encoding="utf-8")
    args = ["train", "-f", str(path), "--dataset", f"examples/data/{dataset}",
            "--max-steps", "2", "--max-seq-length", "64", "--save-every", "0", "--follow"]
    if job_file != "pretrain.yaml":
        args += ["--base-model", tiny_model_id]
    args += EXTRA_FLAGS.get(job_file, lambda store: [])(trainer_server.store_root)
    result = lmforge(trainer_server, *args, timeout=540)
    assert result.returncode == 0, _explain(result)
    job = trainer_client.get_job(result.stdout.split()[0])
    assert job.state == trainer_pb2.JOB_STATE_SUCCEEDED and job.current_step == STEPS.get(job_file, 2)
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
    if kind == common_pb2.ADAPTER:
        inference.unload_adapter(adapter_id, model_id)  # a model holds at most max_loras adapters at once
    else:
        inference.unload_model(model_id)
