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


def request(tiny_model_id: str, dataset_id: str, *, max_steps: int = 8, state_every: int = 2, **checkpoints) -> dict:
    """A small LoRA SFT job with full state every `state_every` steps (also its store checkpoints)."""
    req = sft_request(tiny_model_id, dataset_id, max_steps=max_steps, save_every=state_every, seed=7)
    req["checkpoints"].update(checkpoints)
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
