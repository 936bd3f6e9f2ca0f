"""Durable jobs: a trainer killed mid-job re-adopts its workers, a killed worker resumes by itself from its
full state, PauseJob / ResumeJob, and a resumed job ends with the weights of an uninterrupted one.

Every interruption happens at an exact point: the server runs with LMFORGE_FAULT_STOP_AT_STEP, so a worker
freezes itself (SIGSTOP) right after it wrote the full state of a given step; the test then kills what it
wants and lets the worker go on with SIGCONT. Nothing waits on wall-clock luck.
"""

from __future__ import annotations

import os
import re
import signal
import subprocess
import sys
import threading
from pathlib import Path

import grpc
import psutil
import pytest
import torch
from safetensors.torch import load_file

from lmforge.client import TrainerClient
from lmforge.v1 import trainer_pb2
from services.trainer.worker import FAULT_STOP_ENV
from tests.conftest import EXAMPLES
from tests.helpers import all_events, rpc_code, sft_request, wait_for


class TrainerProcess:
    """`lmforge-trainer` as its own OS process, as an operator runs it."""

    def __init__(self, home: Path, store: Path, *extra_args: str, fault_steps: str = ""):
        env = {**os.environ, FAULT_STOP_ENV: fault_steps}
        self.process = subprocess.Popen(
            [sys.executable, "-m", "services.trainer.server", "--port", "0", "--home", str(home), "--store",
             str(store), *extra_args], stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=env)
        line = self.process.stdout.readline()
        match = re.search(r"listening on (\S+)", line)
        if not match:
            self.process.wait(timeout=60)
            raise AssertionError(f"trainer did not start: {line!r} {self.process.stderr.read()[-2000:]}")
        self.address = match.group(1)
        # Drain stderr (structured logs) so a chatty server never blocks on a full pipe.
        threading.Thread(target=self.process.stderr.read, daemon=True).start()

    def kill(self) -> None:
        self.process.send_signal(signal.SIGKILL)
        self.process.wait()

    def stop(self) -> None:
        if self.process.poll() is None:
            self.process.terminate()
            self.process.wait(timeout=120)


def worker_pid(client: TrainerClient, job_id: str, attempt: int) -> int:
    """The pid of an attempt's worker, from its RUNNING event ("worker pid N on cpu")."""
    def find():
        for event in all_events(client, job_id):
            if (event.WhichOneof("payload") == "state_change" and event.attempt == attempt
                    and event.state_change.state == trainer_pb2.JOB_STATE_RUNNING):
                return int(re.search(r"pid (\d+)", event.state_change.message).group(1))
        return None
    return wait_for(find, what=f"attempt {attempt} of {job_id} to start")


def wait_frozen(pid: int) -> psutil.Process:
    """Wait until the worker froze itself at its fault step (its full state is on disk)."""
    process = psutil.Process(pid)
    wait_for(lambda: process.status() == psutil.STATUS_STOPPED, what=f"worker {pid} to freeze at its fault step")
    return process


def request(tiny_model_id: str, dataset_id: str, *, max_steps: int = 8, state_every: int = 2, adapter: dict | None = None,
            **checkpoints) -> dict:
    """A small LoRA SFT job with full state every `state_every` steps (also its store checkpoints)."""
    req = sft_request(tiny_model_id, dataset_id, max_steps=max_steps, save_every=state_every, seed=7)
    req["checkpoints"].update(checkpoints)
    if adapter:
        req["adapter"] = adapter
    return req


def adapter_weights(store_root: Path, checkpoint_id: str) -> dict[str, torch.Tensor]:
    return load_file(store_root / "adapters" / checkpoint_id / "adapter_model.safetensors")


def assert_same_weights(store_root: Path, resumed_id: str, reference_id: str) -> None:
    resumed, reference = adapter_weights(store_root, resumed_id), adapter_weights(store_root, reference_id)
    assert resumed.keys() == reference.keys()
    different = [name for name in reference if not torch.equal(resumed[name], reference[name])]
    assert not different, f"resumed weights differ from the uninterrupted run's in {different[:5]}"


def losses_by_step(events) -> dict[int, float]:
    """Training loss per step, the latest attempt's value where an attempt repeated a step (the rule
    docs/trainer.md gives clients)."""
    losses: dict[int, tuple[int, float]] = {}
    for event in events:
        if event.WhichOneof("payload") == "metrics" and "loss" in event.metrics.values:
            if event.step not in losses or event.attempt >= losses[event.step][0]:
                losses[event.step] = (event.attempt, event.metrics.values["loss"])
    return {step: loss for step, (_, loss) in sorted(losses.items())}


def assert_continued(events) -> None:
    """Each resumed attempt trained on from the step it reported, not from the start (a restart from
    scratch would also end with the same weights: only the steps show the difference)."""
    for event in events:
        if event.WhichOneof("payload") != "resumed":
            continue
        attempt, from_step = event.resumed.attempt, event.resumed.from_step
        steps = [e.step for e in events if e.attempt == attempt and e.WhichOneof("payload") == "metrics"
                 and "loss" in e.metrics.values]
        assert steps and steps[0] == from_step + 1, (attempt, from_step, steps)


def assert_gap_free(events) -> None:
    assert [e.sequence for e in events] == list(range(1, len(events) + 1))


@pytest.fixture(scope="module")
def reference_run(trainer_client, tiny_model_id, demo_dataset_id):
    """The job the interrupted ones are compared with, run without interruption."""
    job = trainer_client.start_training(request(tiny_model_id, demo_dataset_id))
    final = trainer_client.wait(job.id)
    assert final.state == trainer_pb2.JOB_STATE_SUCCEEDED, final.error
    return final, losses_by_step(all_events(trainer_client, job.id))


def test_server_killed_mid_job_readopts_the_running_worker(tmp_path, store_root, tiny_model_id, reference_run):
    """kill -9 of the server while a job runs: its worker runs on, the next server re-adopts it, the job
    finishes as attempt 1, and StreamMetrics from the last sequence seen misses nothing, repeats nothing."""
    home = tmp_path / "trainer"
    first = TrainerProcess(home, store_root, fault_steps="4")
    try:
        with TrainerClient(first.address) as client:
            dataset = client.upload_dataset(EXAMPLES / "sft_demo.jsonl")
            job = client.start_training(request(tiny_model_id, dataset.id))
            worker = wait_frozen(worker_pid(client, job.id, 1))
            seen_before = list(client.stream_metrics(job.id, follow=False))
    finally:
        first.kill()
    assert worker.is_running(), "the worker outlives its server"

    second = TrainerProcess(home, store_root, fault_steps="4")
    try:
        with TrainerClient(second.address) as client:
            assert client.get_job(job.id).state == trainer_pb2.JOB_STATE_RUNNING
            worker.resume()  # SIGCONT: it goes on under the new server
            rest = list(client.stream_metrics(job.id, after_sequence=seen_before[-1].sequence, follow=True))
            final = client.get_job(job.id)
            assert final.state == trainer_pb2.JOB_STATE_SUCCEEDED, final.error
            assert final.attempt == 1 and final.restarts == 0
            everything = all_events(client, job.id)
    finally:
        second.stop()
    assert everything == seen_before + rest
    assert_gap_free(everything)
    steps = [e.step for e in everything if e.WhichOneof("payload") == "metrics" and "loss" in e.metrics.values]
    assert steps == list(range(1, 9)), "each step reported once, across the restart"
    assert not any(e.WhichOneof("payload") == "resumed" for e in everything)
    assert_same_weights(store_root, final.result_checkpoint_id, reference_run[0].result_checkpoint_id)


def test_killed_worker_resumes_by_itself_until_restarts_run_out_then_resume_job(
        tmp_path, store_root, tiny_model_id, reference_run):
    """SIGKILL of the worker after step 2's full state: attempt 2 resumes from step 2 by itself. Killed
    again at step 4 with max_restarts 1 spent, the job FAILS saying so; ResumeJob continues it as attempt 3
    from step 4, and it ends with bit-identical weights and the same per-step losses as the reference."""
    server = TrainerProcess(tmp_path / "trainer", store_root, fault_steps="2,4")
    try:
        with TrainerClient(server.address) as client:
            dataset = client.upload_dataset(EXAMPLES / "sft_demo.jsonl")
            job = client.start_training(request(tiny_model_id, dataset.id, max_restarts=1))
            wait_frozen(worker_pid(client, job.id, 1)).kill()
            wait_frozen(worker_pid(client, job.id, 2)).kill()
            failed = client.wait(job.id)
            assert failed.state == trainer_pb2.JOB_STATE_FAILED, failed
            assert "killed by SIGKILL" in failed.error.message
            assert "gave up after 1 automatic restart" in failed.error.message
            assert failed.attempt == 2 and failed.restarts == 1

            resumed = client.resume_job(job.id)
            assert resumed.state == trainer_pb2.JOB_STATE_QUEUED and resumed.attempt == 3
            final = client.wait(job.id)
            assert final.state == trainer_pb2.JOB_STATE_SUCCEEDED, final.error
            assert final.attempt == 3 and final.restarts == 1
            events = all_events(client, job.id)
    finally:
        server.stop()
    assert_gap_free(events)
    assert_continued(events)
    resumes = [(e.resumed.attempt, e.resumed.from_step, e.resumed.reason) for e in events
               if e.WhichOneof("payload") == "resumed"]
    assert [(attempt, step) for attempt, step, _ in resumes] == [(2, 2), (3, 4)], resumes
    assert "SIGKILL" in resumes[0][2] and "automatic restart 1 of 1" in resumes[0][2]
    assert "resumed by the user" in resumes[1][2]
    assert {e.attempt for e in events} == {1, 2, 3}

    reference, reference_losses = reference_run
    assert losses_by_step(events) == reference_losses
    assert_same_weights(store_root, final.result_checkpoint_id, reference.result_checkpoint_id)
    # The store checkpoints of steps saved before a kill stand; the resumed attempts add the later ones.
    assert [c for c in final.checkpoint_ids if "-step-" in c] == [f"{job.id}-step-{n}" for n in (2, 4, 6)]


def test_pause_frees_the_slot_and_resume_ends_with_the_same_weights(tmp_path, store_root, tiny_model_id,
                                                                    reference_run):
    """PauseJob saves the full state at the next step and stops (PAUSED); the one slot runs another job
    meanwhile; ResumeJob continues to the weights of the uninterrupted run."""
    server = TrainerProcess(tmp_path / "trainer", store_root, "--slots", "1", fault_steps="2")
    try:
        with TrainerClient(server.address) as client:
            dataset = client.upload_dataset(EXAMPLES / "sft_demo.jsonl")
            job = client.start_training(request(tiny_model_id, dataset.id))
            worker = wait_frozen(worker_pid(client, job.id, 1))
            pausing = client._stub.PauseJob.future(trainer_pb2.PauseJobRequest(job_id=job.id), timeout=300)
            wait_for(lambda: _signal_pending(worker.pid, signal.SIGTERM), what="the pause to reach the worker")
            worker.resume()
            paused = pausing.result()
            assert paused.state == trainer_pb2.JOB_STATE_PAUSED, paused
            assert 2 <= paused.current_step < 8
            assert "paused at step" in all_events(client, job.id)[-1].state_change.message
            assert not worker.is_running()

            other = client.start_training(sft_request(tiny_model_id, dataset.id, max_steps=1))
            assert client.wait(other.id).state == trainer_pb2.JOB_STATE_SUCCEEDED, "the paused job's slot is free"
            assert client.pause_job(job.id).state == trainer_pb2.JOB_STATE_PAUSED, "pausing again is a no-op"

            assert client.resume_job(job.id).attempt == 2
            final = client.wait(job.id)
            assert final.state == trainer_pb2.JOB_STATE_SUCCEEDED, final.error
            events = all_events(client, job.id)
            assert rpc_code(lambda: client.resume_job(job.id)) == grpc.StatusCode.FAILED_PRECONDITION
            assert rpc_code(lambda: client.pause_job(job.id)) == grpc.StatusCode.FAILED_PRECONDITION
            assert rpc_code(lambda: client.resume_job("job-nope")) == grpc.StatusCode.NOT_FOUND
            assert rpc_code(lambda: client.pause_job("job-nope")) == grpc.StatusCode.NOT_FOUND
    finally:
        server.stop()
    assert_continued(events)
    resumed = [e.resumed for e in events if e.WhichOneof("payload") == "resumed"]
    assert len(resumed) == 1 and resumed[0].from_step == paused.current_step
    reference, reference_losses = reference_run
    assert losses_by_step(events) == reference_losses
    assert_same_weights(store_root, final.result_checkpoint_id, reference.result_checkpoint_id)
    assert not list((tmp_path / "trainer" / "jobs" / job.id).glob("**/checkpoint-*")), \
        "a succeeded job's full state is removed (keep_after_success keeps it)"


def _signal_pending(pid: int, sig: int) -> bool:
    """Whether `sig` waits to be delivered to a (stopped) process: the pause reached the worker."""
    status = Path(f"/proc/{pid}/status").read_text()
    pending = int(re.search(r"^ShdPnd:\s*([0-9a-f]+)", status, re.MULTILINE).group(1), 16)
    pending |= int(re.search(r"^SigPnd:\s*([0-9a-f]+)", status, re.MULTILINE).group(1), 16)
    return bool(pending & (1 << (sig - 1)))


def test_a_second_server_on_the_same_state_directory_refuses_to_start(tmp_path, store_root):
    home = tmp_path / "trainer"
    first = TrainerProcess(home, store_root)
    try:
        second = subprocess.run([sys.executable, "-m", "services.trainer.server", "--port", "0", "--home", str(home),
                                 "--store", str(store_root)], capture_output=True, text=True, timeout=120)
        assert second.returncode == 1
        assert f"another lmforge-trainer (pid {first.process.pid}) already uses the state directory" in second.stderr
    finally:
        first.stop()
    third = TrainerProcess(home, store_root)  # the lock goes with the server that held it
    third.stop()


# ------------------------------------------------------------------------------------ every method resumes
#
# One server freezes every worker once it wrote the full state of job-wide step 2 or 5; the test kills the
# frozen worker, the job resumes by itself, and its result must equal the same request run without
# interruption on the session's in-process trainer (started first, so the two train side by side).

PREFERENCE = EXAMPLES / "preference_demo.jsonl"
PROMPTS = EXAMPLES / "rl_prompts.jsonl"
LENGTH_REWARD = {"name": "length_penalty", "params": {"target_chars": "2", "max_chars": "14"}}


@pytest.fixture(scope="module")
def faulty(tmp_path_factory, store_root):
    server = TrainerProcess(tmp_path_factory.mktemp("faulty-trainer"), store_root, fault_steps="2,5")
    try:
        with TrainerClient(server.address) as client:
            yield client
    finally:
        server.stop()


def entry_weights(store_root: Path, checkpoint_id: str) -> dict[str, torch.Tensor]:
    """Every tensor of a store entry (adapter or full model)."""
    folder = next(p for p in (store_root / "adapters" / checkpoint_id, store_root / "models" / checkpoint_id)
                  if p.is_dir())
    tensors = {}
    for path in sorted(folder.glob("*.safetensors")):
        tensors.update(load_file(path))
    return tensors


def resumed_equals_uninterrupted(reference_client, faulty_client, store_root, request_for, data: Path,
                                 kills: int = 1):
    """Run `request_for(dataset_id)` uninterrupted and with its worker killed `kills` times (at the fault
    steps); assert both succeed with identical weights and per-step losses. Returns the interrupted run's
    job and events."""
    reference = reference_client.start_training(request_for(reference_client.upload_dataset(data).id))
    job = faulty_client.start_training(request_for(faulty_client.upload_dataset(data).id))
    for attempt in range(1, kills + 1):
        wait_frozen(worker_pid(faulty_client, job.id, attempt)).kill()
    final = faulty_client.wait(job.id)
    assert final.state == trainer_pb2.JOB_STATE_SUCCEEDED, final.error
    assert final.attempt == kills + 1 and final.restarts == kills
    reference = reference_client.wait(reference.id)
    assert reference.state == trainer_pb2.JOB_STATE_SUCCEEDED, reference.error
    events = all_events(faulty_client, job.id)
    assert_gap_free(events)
    assert_continued(events)
    assert losses_by_step(events) == losses_by_step(all_events(reference_client, reference.id))
    resumed, expected = entry_weights(store_root, final.result_checkpoint_id), \
        entry_weights(store_root, reference.result_checkpoint_id)
    assert resumed.keys() == expected.keys()
    different = [name for name in expected if not torch.equal(resumed[name], expected[name])]
    assert not different, f"resumed weights differ from the uninterrupted run's in {different[:5]}"
    return final, events


def resumes(events) -> list[tuple[int, int]]:
    return [(e.resumed.attempt, e.resumed.from_step) for e in events if e.WhichOneof("payload") == "resumed"]


def logs(events) -> str:
    return "\n".join(e.log.message for e in events if e.WhichOneof("payload") == "log")


def test_full_fine_tuning_resumes_exactly(trainer_client, faulty, store_root, tiny_model_id):
    _, events = resumed_equals_uninterrupted(trainer_client, faulty, store_root, lambda ds: request(
        tiny_model_id, ds, max_steps=6, adapter={"type": "ADAPTER_FULL"}), EXAMPLES / "sft_demo.jsonl")
    assert resumes(events) == [(2, 2)]


def test_dpo_resumes_exactly(trainer_client, faulty, store_root, tiny_model_id):
    def dpo(ds):
        return {"base_model_id": tiny_model_id, "dataset_id": ds, "dpo": {}, "adapter": {"type": "ADAPTER_LORA", "rank": 8},
                "hyperparameters": {"max_steps": 4, "batch_size": 4, "max_seq_length": 128, "logging_steps": 1},
                "checkpoints": {"every_steps": 2}}
    _, events = resumed_equals_uninterrupted(trainer_client, faulty, store_root, dpo, PREFERENCE)
    assert resumes(events) == [(2, 2)]


def test_grpo_resumes_exactly(trainer_client, faulty, store_root, tiny_model_id):
    def grpo(ds):
        return {"base_model_id": tiny_model_id, "dataset_id": ds, "grpo": {"rewards": [LENGTH_REWARD], "num_generations": 4},
                "adapter": {"type": "ADAPTER_LORA", "rank": 8},
                "hyperparameters": {"max_steps": 4, "batch_size": 8, "logging_steps": 1, "learning_rate": 1e-2},
                "checkpoints": {"every_steps": 2}}
    _, events = resumed_equals_uninterrupted(trainer_client, faulty, store_root, grpo, PROMPTS)
    assert resumes(events) == [(2, 2)]


def test_rft_resumes_inside_a_round_and_after_a_finished_round(trainer_client, faulty, store_root, tiny_model_id):
    """Killed at step 2 (inside round 1) and at step 5 (inside round 2, round 1 finished): the second
    resume takes round 1's weights from its phase instead of running it again."""
    def rft(ds):
        return {"base_model_id": tiny_model_id, "dataset_id": ds,
                "rft": {"rewards": [{"name": "keyword", "params": {"keyword": "a", "position": "start"}}],
                        "num_candidates": 8, "rounds": 2, "max_completion_length": 8, "temperature": 1.0,
                        "threshold": 0.0},
                "adapter": {"type": "ADAPTER_LORA", "rank": 8},
                "hyperparameters": {"max_steps": 3, "batch_size": 4, "max_seq_length": 128, "logging_steps": 1,
                                    "learning_rate": 5e-3, "lr_scheduler": "constant"},
                "checkpoints": {"every_steps": 2}}
    _, events = resumed_equals_uninterrupted(trainer_client, faulty, store_root, rft, EXAMPLES / "rft_prompts.jsonl",
                                             kills=2)
    assert resumes(events) == [(2, 2), (3, 5)]
    assert "rounds 1-1 were finished by an earlier attempt of this job; going on with round 2" in logs(events)
    round_starts = [(e.attempt, e.metrics.values["round"]) for e in events
                    if e.WhichOneof("payload") == "metrics" and "acceptance_rate" in e.metrics.values]
    assert round_starts == [(1, 0.0), (2, 0.0), (2, 1.0), (3, 1.0)], "round 1 is not generated a third time"


def test_actor_critic_ppo_resumes_exactly(trainer_client, faulty, store_root, tiny_model_id):
    def ppo(ds):
        return {"base_model_id": tiny_model_id, "dataset_id": ds,
                "ppo": {"algorithm": "PPO_ALGORITHM_ACTOR_CRITIC", "max_completion_length": 8, "rewards": [LENGTH_REWARD],
                        "beta": 0.05},
                "adapter": {"type": "ADAPTER_LORA", "rank": 8},
                "hyperparameters": {"max_steps": 4, "batch_size": 8, "learning_rate": 1e-2, "lr_scheduler": "constant"},
                "checkpoints": {"every_steps": 2}}
    _, events = resumed_equals_uninterrupted(trainer_client, faulty, store_root, ppo, PROMPTS)
    assert resumes(events) == [(2, 2)]


def test_offline_distillation_keeps_the_teacher_answers_of_the_first_attempt(trainer_client, faulty, store_root,
                                                                           tiny_model_id):
    def distill(ds):
        return {"base_model_id": tiny_model_id, "dataset_id": ds,
                "distill": {"teacher_model_id": tiny_model_id, "max_new_tokens": 8, "temperature": 1.0},
                "adapter": {"type": "ADAPTER_LORA", "rank": 8},
                "hyperparameters": {"max_steps": 4, "batch_size": 4, "max_seq_length": 128, "logging_steps": 1},
                "checkpoints": {"every_steps": 2}}
    _, events = resumed_equals_uninterrupted(trainer_client, faulty, store_root, distill,
                                             EXAMPLES / "distill_prompts.jsonl")
    assert resumes(events) == [(2, 2)]
    assert "teacher answers from an earlier attempt of this job" in logs(events)


def test_pretraining_keeps_the_tokenizer_of_the_first_attempt(trainer_client, faulty, store_root):
    def pretrain(ds):
        return {"dataset_id": ds,
                "pretrain": {"hidden_size": 64, "num_layers": 2, "num_attention_heads": 4, "num_key_value_heads": 2,
                             "context_length": 128, "vocab_size": 600},
                "hyperparameters": {"max_steps": 4, "batch_size": 4, "learning_rate": 5e-3, "lr_scheduler": "constant",
                                    "logging_steps": 1},
                "checkpoints": {"every_steps": 2}}
    _, events = resumed_equals_uninterrupted(trainer_client, faulty, store_root, pretrain,
                                             EXAMPLES / "pretrain_corpus.jsonl")
    assert resumes(events) == [(2, 2)]
    assert "trained by an earlier attempt of this job" in logs(events)
