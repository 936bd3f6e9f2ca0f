"""One job never has two workers: a stray worker of a job (started by a server that died before recording
it) is killed when the next attempt of that job starts; other jobs' workers are left alone."""

from __future__ import annotations

import subprocess
import sys

import psutil

from services.trainer.worker import TOKEN_ENV
from services.trainer.workers import TOKEN_FILE, WorkerProcess

SLEEPER = [sys.executable, "-c", "import time; time.sleep(120)"]


def start_worker_like(work_dir, token: str) -> subprocess.Popen:
    """A process as `WorkerProcess.launch` starts one: own session, the job's token in its environment."""
    work_dir.mkdir(parents=True, exist_ok=True)
    (work_dir / TOKEN_FILE).write_text(token)
    return subprocess.Popen(SLEEPER, env={TOKEN_ENV: token}, start_new_session=True)


def test_a_new_attempt_kills_the_stray_worker_of_its_job_only(tmp_path):
    stray = start_worker_like(tmp_path / "job-a", "token-of-an-unrecorded-launch")
    other_job = start_worker_like(tmp_path / "job-b", "token-of-another-job")
    new = None
    try:
        new = WorkerProcess.launch(SLEEPER, work_dir=tmp_path / "job-a", attempt=2, env={})
        assert stray.poll() is not None, "the stray worker still runs next to the new attempt"
        assert new.alive()
        assert other_job.poll() is None and psutil.Process(other_job.pid).is_running()
        assert (tmp_path / "job-a" / TOKEN_FILE).read_text() == new.token
        # and nothing carries the new token but the new worker
        assert WorkerProcess.kill_strays(tmp_path / "job-b") == 1
        assert other_job.wait(timeout=30) is not None
    finally:
        for process in (stray, other_job):
            if process.poll() is None:
                process.kill()
                process.wait()
        if new is not None:
            new.kill()
            new.popen.wait()


def test_kill_strays_without_a_token_file_does_nothing(tmp_path):
    assert WorkerProcess.kill_strays(tmp_path) == 0
