"""A trainer killed (SIGKILL) mid-job and started again on the same state loses nothing it had recorded."""

from __future__ import annotations

import os
import re
import signal
import subprocess
import sys
from pathlib import Path

from lmforge.client import TrainerClient
from lmforge.v1 import trainer_pb2
from tests.conftest import EXAMPLES
from tests.helpers import sft_request, wait_for


class TrainerProcess:
    """`lmforge-trainer` as its own OS process, as an operator runs it."""

    def __init__(self, home: Path, store: Path):
        self.process = subprocess.Popen(
            [sys.executable, "-m", "services.trainer.server", "--port", "0", "--home", str(home), "--store",
             str(store)], stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, text=True)
        line = self.process.stdout.readline()
        match = re.search(r"listening on (\S+)", line)
        assert match, f"trainer did not start: {line!r}"
        self.address = match.group(1)

    def kill(self) -> None:
        self.process.send_signal(signal.SIGKILL)
        self.process.wait()

    def stop(self) -> None:
        self.process.terminate()
        self.process.wait(timeout=60)


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    return True


def test_restart_keeps_every_job_and_event(tmp_path, store_root, tiny_model_id):
    home = tmp_path / "trainer"
    first = TrainerProcess(home, store_root)
    try:
        with TrainerClient(first.address) as client:
            dataset = client.upload_dataset(EXAMPLES / "sft_demo.jsonl")
            done = client.start_training(sft_request(tiny_model_id, dataset.id, max_steps=2))
            assert client.wait(done.id).state == trainer_pb2.JOB_STATE_SUCCEEDED
            history_before = list(client.stream_metrics(done.id, follow=False))

            running = client.start_training(sft_request(tiny_model_id, dataset.id, max_steps=100_000, save_every=1))
            worker_pid = None
            for event in client.stream_metrics(running.id, follow=True, reconnect=False):
                kind = event.WhichOneof("payload")
                if kind == "state_change" and event.state_change.state == trainer_pb2.JOB_STATE_RUNNING:
                    worker_pid = int(re.search(r"pid (\d+)", event.state_change.message).group(1))
                if kind == "checkpoint_saved":
                    break
    finally:
        first.kill()

    # The orphaned worker notices its server is gone and exits by itself.
    wait_for(lambda: not _alive(worker_pid), timeout=15, what="orphaned worker to exit")

    second = TrainerProcess(home, store_root)
    try:
        with TrainerClient(second.address) as client:
            jobs = {job.id: job for job in client.list_jobs()}
            assert set(jobs) == {done.id, running.id}
            assert jobs[done.id].state == trainer_pb2.JOB_STATE_SUCCEEDED
            assert list(client.stream_metrics(done.id, follow=False)) == history_before

            lost = jobs[running.id]
            assert lost.state == trainer_pb2.JOB_STATE_FAILED and lost.error.code == "ABORTED"
            assert "server stopped" in lost.error.message
            assert lost.checkpoint_ids, "checkpoints saved before the crash are still listed"
            assert {c.id for c in client.list_checkpoints(job_id=running.id)} >= set(lost.checkpoint_ids)
            events = list(client.stream_metrics(running.id, follow=True))
            assert [e.sequence for e in events] == list(range(1, len(events) + 1))
            assert events[-1].state_change.state == trainer_pb2.JOB_STATE_FAILED

            # And the restarted server trains.
            again = client.start_training(sft_request(tiny_model_id, dataset.id, max_steps=1))
            assert client.wait(again.id).state == trainer_pb2.JOB_STATE_SUCCEEDED
    finally:
        second.stop()
