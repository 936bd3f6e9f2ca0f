"""RFT and distillation through the real trainer service, served afterwards by the real inference service.

    .venv/bin/python -m pytest tests/integration/test_rft_and_distill.py -q

A "teacher" is tiny-llama after a quick full SFT on examples/data/learn_task.jsonl (it answers those
prompts, a random tiny-llama does not); the student is a fresh tiny-llama. Everything runs real steps on CPU.
"""

from __future__ import annotations

import json

import pytest

from lmforge.client import InferenceClient
from lmforge.v1 import common_pb2, trainer_pb2
from tests.conftest import EXAMPLES
from tests.helpers import all_events, run_job, sft_request

FAILED = trainer_pb2.JOB_STATE_FAILED


@pytest.fixture(scope="module")
def inference(store_root):
    from services.inference.server import InferenceServer

    server = InferenceServer(store_root, port=0, max_batch_size=16, max_requests_per_model=64)
    server.serve()
    with InferenceClient(server.address, timeout=120) as client:
        yield client
    server.stop(grace_seconds=2)


@pytest.fixture(scope="module")
def learn_prompts() -> list[list[dict]]:
    """The distinct user prompts of learn_task.jsonl, as chats."""
    prompts = []
    for line in (EXAMPLES / "learn_task.jsonl").read_text(encoding="utf-8").splitlines():
        prompt = json.loads(line)["messages"][:-1]
        if prompt not in prompts:
            prompts.append(prompt)
    return prompts


@pytest.fixture(scope="module")
def learn_prompts_dataset_id(trainer_client, learn_prompts, tmp_path_factory) -> str:
    path = tmp_path_factory.mktemp("distill") / "learn_prompts.jsonl"
    path.write_text("".join(json.dumps({"prompt": p}, ensure_ascii=False) + "\n" for p in learn_prompts),
                    encoding="utf-8")
    return trainer_client.upload_dataset(path).id


@pytest.fixture(scope="module")
def teacher_id(trainer_client, tiny_model_id, learn_dataset_id) -> str:
    """tiny-llama fully fine-tuned on learn_task: a FULL_CHECKPOINT that answers its prompts."""
    job = run_job(trainer_client, sft_request(tiny_model_id, learn_dataset_id, adapter="ADAPTER_FULL", max_steps=60,
                                              learning_rate=3e-3, lr_scheduler="constant", batch_size=8))
    return job.result_checkpoint_id


def greedy_answers(inference, model_id: str, prompts, adapter_id: str = "", max_new_tokens: int = 12) -> list[str]:
    calls = [inference.generate(model_id, messages=p, adapter_id=adapter_id, temperature=0.0,
                                max_new_tokens=max_new_tokens) for p in prompts]
    answers = []
    for call in calls:
        text = ""
        for response in call:
            if response.HasField("finished"):
                text = response.finished.text
        answers.append(text.strip())
    return answers


def agreement(a: list[str], b: list[str]) -> float:
    return sum(x == y for x, y in zip(a, b)) / len(a)


def distill_request(student: str, dataset_id: str, teacher: str, *, mode: str = "DISTILL_MODE_OFFLINE",
                    adapter: str = "ADAPTER_FULL", max_steps: int = 40, **distill) -> dict:
    return {
        "base_model_id": student,
        "dataset_id": dataset_id,
        "distill": {"teacher_model_id": teacher, "mode": mode, "max_new_tokens": 12, **distill},
        "adapter": {"type": adapter, "rank": 8},
        "hyperparameters": {"max_steps": max_steps, "batch_size": 8, "max_seq_length": 128, "logging_steps": 5,
                            "learning_rate": 3e-3, "lr_scheduler": "constant"},
    }


# ------------------------------------------------------------------------------------------ distillation


def test_offline_distillation_makes_the_student_answer_like_the_teacher(
        trainer_client, inference, tiny_model_id, teacher_id, learn_prompts, learn_prompts_dataset_id):
    teacher = greedy_answers(inference, teacher_id, learn_prompts)
    before = agreement(greedy_answers(inference, tiny_model_id, learn_prompts), teacher)

    job = run_job(trainer_client, distill_request(tiny_model_id, learn_prompts_dataset_id, teacher_id, max_steps=80))
    [checkpoint] = trainer_client.list_checkpoints(job_id=job.id)
    assert checkpoint.kind == common_pb2.FULL_CHECKPOINT and checkpoint.id == job.result_checkpoint_id
    events = all_events(trainer_client, job.id)
    logs = [e.log.message for e in events if e.WhichOneof("payload") == "log"]
    assert any(m.startswith("teacher: ") for m in logs), "a few teacher answers are logged"
    assert any("loss" in e.metrics.values for e in events if e.WhichOneof("payload") == "metrics")

    # The distilled student is served by the inference service as is.
    after = agreement(greedy_answers(inference, job.result_checkpoint_id, learn_prompts), teacher)
    assert after >= before + 0.5, f"student/teacher exact-match agreement {before:.2f} -> {after:.2f}"


def test_on_policy_distillation_with_a_shared_tokenizer(trainer_client, inference, tiny_model_id, teacher_id,
                                                        learn_prompts_dataset_id, learn_prompts):
    job = run_job(trainer_client, distill_request(tiny_model_id, learn_prompts_dataset_id, teacher_id,
                                                  mode="DISTILL_MODE_ON_POLICY", adapter="ADAPTER_LORA",
                                                  max_steps=2, lmbda=0.5, beta=0.5))
    assert job.current_step == 2
    [checkpoint] = trainer_client.list_checkpoints(job_id=job.id)
    assert checkpoint.kind == common_pb2.ADAPTER
    losses = [e.metrics.values["loss"] for e in all_events(trainer_client, job.id)
              if e.WhichOneof("payload") == "metrics" and "loss" in e.metrics.values]
    assert losses and all(loss >= 0 for loss in losses)
    text, finished = inference.chat(tiny_model_id, learn_prompts[0], adapter_id=checkpoint.id, max_new_tokens=4)
    assert finished.usage.completion_tokens > 0


def test_on_policy_distillation_refuses_a_teacher_with_another_tokenizer(
        trainer_client, store_root, tiny_model_id, learn_prompts_dataset_id):
    from services.common.model_import import create_tiny_model
    from services.common.store import CheckpointStore

    create_tiny_model(CheckpointStore(store_root), "tiny-other-vocab", vocab_size=300,
                      corpus_files=[EXAMPLES / "pretrain_corpus.jsonl"])
    job = trainer_client.start_training(distill_request(tiny_model_id, learn_prompts_dataset_id, "tiny-other-vocab",
                                                        mode="DISTILL_MODE_ON_POLICY", max_steps=2))
    final = trainer_client.wait(job.id)
    assert final.state == FAILED and final.error.code == "FAILED_PRECONDITION", final.error
    assert "tokenizer" in final.error.message and "DISTILL_MODE_OFFLINE" in final.error.message


# ------------------------------------------------------------------------------------------ RFT


def rft_request(base: str, dataset_id: str, *, adapter: str = "ADAPTER_FULL", rounds: int = 3,
                steps_per_round: int = 15, learning_rate: float = 5e-3) -> dict:
    """RFT on a learnable toy: the rule reward pays completions that start with "a" (about 5% of a random
    tiny-llama's samples), so each round's kept answers teach the policy to start with "a" more often."""
    return {
        "base_model_id": base,
        "dataset_id": dataset_id,
        "rft": {"rewards": [{"name": "keyword", "params": {"keyword": "a", "position": "start"}}],
                "num_candidates": 8, "rounds": rounds, "max_completion_length": 8, "temperature": 1.0,
                "samples": {"fraction_of_steps": 1.0, "max_prompts": 2}},
        "adapter": {"type": adapter, "rank": 8, "alpha": 16},
        "hyperparameters": {"max_steps": steps_per_round, "batch_size": 8, "max_seq_length": 128,
                            "logging_steps": 2, "learning_rate": learning_rate, "lr_scheduler": "constant"},
    }


@pytest.fixture(scope="module")
def rft_dataset_id(trainer_client) -> str:
    return trainer_client.upload_dataset(EXAMPLES / "rft_prompts.jsonl").id


def round_metrics(events) -> list[dict]:
    return [dict(e.metrics.values) for e in events
            if e.WhichOneof("payload") == "metrics" and "acceptance_rate" in e.metrics.values]


def test_rft_acceptance_rises_across_rounds_and_rollouts_stream_with_rewards(
        trainer_client, inference, tiny_model_id, rft_dataset_id):
    job = run_job(trainer_client, rft_request(tiny_model_id, rft_dataset_id))
    events = all_events(trainer_client, job.id)
    rounds = round_metrics(events)
    assert [r["round"] for r in rounds] == [0, 1, 2]
    for r in rounds:
        assert {"reward", "reward_std", "acceptance_rate", "prompt_acceptance_rate", "kept",
                "rewards/keyword/mean"} <= r.keys()
        assert r["reward"] == pytest.approx(r["acceptance_rate"])  # one 0/1 reward, bar "> 0"
    first, last = rounds[0]["acceptance_rate"], rounds[-1]["acceptance_rate"]
    assert last > first + 0.2, f"acceptance rate {first:.2f} -> {last:.2f}"

    rollouts = [e for e in events if e.WhichOneof("payload") == "rollouts"]
    assert [e.rollouts.round for e in rollouts] == [0, 1, 2]
    for event in rollouts:
        assert len(event.rollouts.samples) == 2
        for sample in event.rollouts.samples:
            assert sample.prompt and len(sample.completions) == 8
            for completion in sample.completions:
                expected = float(completion.text.lstrip().startswith("a"))
                assert completion.reward == expected and completion.rewards["keyword"] == expected
    steps = [e.step for e in events if e.WhichOneof("payload") != "state_change"]
    assert steps == sorted(steps), "steps never go back across rounds"
    assert job.current_step == 3 * 15

    [checkpoint] = trainer_client.list_checkpoints(job_id=job.id)
    assert checkpoint.kind == common_pb2.FULL_CHECKPOINT and checkpoint.step == 45
    text, finished = inference.chat(job.result_checkpoint_id, [{"role": "user", "content": "3+4="}],
                                    max_new_tokens=4)
    assert finished.usage.completion_tokens > 0


def test_rft_with_lora_keeps_training_one_adapter_and_serves_it(trainer_client, inference, tiny_model_id,
                                                                rft_dataset_id):
    request = rft_request(tiny_model_id, rft_dataset_id, adapter="ADAPTER_LORA", rounds=2, steps_per_round=2)
    request["rft"].update(threshold=1.0, num_candidates=4, samples={"fraction_of_steps": 0.0})
    job = run_job(trainer_client, request)
    events = all_events(trainer_client, job.id)
    rounds = round_metrics(events)
    # threshold mode keeps every distinct passing candidate (not only each prompt's best)
    assert len(rounds) == 2 and 0 < rounds[0]["kept"] <= rounds[0]["acceptance_rate"] * 30 * 4
    assert rounds[0]["kept"] >= rounds[0]["prompt_acceptance_rate"] * 30
    assert not [e for e in events if e.WhichOneof("payload") == "rollouts"], "fraction 0: no samples"
    assert job.current_step == 4
    [checkpoint] = trainer_client.list_checkpoints(job_id=job.id)
    assert checkpoint.kind == common_pb2.ADAPTER and checkpoint.base_model_id == tiny_model_id
    _, finished = inference.chat(tiny_model_id, [{"role": "user", "content": "3+4="}], adapter_id=checkpoint.id,
                                 max_new_tokens=4)
    assert finished.usage.completion_tokens > 0


def test_rollout_rounds_follow_the_sampling_fraction():
    from services.trainer.methods.rft.recipe import sampled_rounds

    assert sampled_rounds(4, 1.0) == {0, 1, 2, 3}
    assert sampled_rounds(4, 0.5) == {0, 2}
    assert sampled_rounds(10, 0.1) == {0}
    assert sampled_rounds(3, 0.0) == set()


def test_rft_cancel_stops_between_rounds(trainer_client, tiny_model_id, rft_dataset_id):
    job = trainer_client.start_training(rft_request(tiny_model_id, rft_dataset_id, rounds=1000, steps_per_round=2))
    for event in trainer_client.stream_metrics(job.id, follow=True):
        if event.WhichOneof("payload") == "rollouts" and event.rollouts.round >= 1:
            break
    cancelled = trainer_client.cancel_job(job.id)
    assert cancelled.state == trainer_pb2.JOB_STATE_CANCELLED and not cancelled.result_checkpoint_id
    assert cancelled.current_step < 1000 * 2
