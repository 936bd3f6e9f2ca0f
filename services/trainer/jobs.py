"""Jobs: state machine, queue over device slots, one worker process per job, event log and fan-out.

    VALIDATING -> QUEUED -> RUNNING -> SUCCEEDED | FAILED | CANCELLED

* Validation (every row of the dataset) runs on a background thread in the server, before the job is
  queued; bad data fails the job at VALIDATING with each bad row listed, and no worker is started.
* The queue hands each job a free slot (one per GPU by default, or N CPU slots) and starts
  `python -m services.trainer.worker` in its own session, so a crash, OOM or kill -9 of training can
  never take the server down: the reader thread sees the exit and fails the job with the reason and
  the tail of the worker's log.
* Every event (state changes, metrics, checkpoints, logs) is appended to SQLite with the next per-job
  sequence number and then broadcast; subscribers read from SQLite after the sequence they last saw,
  so a reconnecting client misses nothing and sees nothing twice.
* On start, jobs a previous server left RUNNING are failed (their workers died with it), VALIDATING
  ones are validated again and QUEUED ones run.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import threading
import time
import uuid
from collections.abc import Callable, Iterator
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path

from services.common.errors import FailedPrecondition, LmforgeError, NotFound
from services.common.logging import get_logger
from services.trainer import methods
from services.trainer.jobdb import ErrorInfo, Event, Job, JobDB, JobState
from services.trainer.spec import TrainingSpec
from services.trainer.worker import EVENT_FD_ENV, EXIT_CANCELLED, EXIT_OK

log = get_logger(__name__)

LOG_TAIL_LINES = 40
LOG_TAIL_BYTES = 8192


def detect_devices() -> list[str]:
    """One slot per visible NVIDIA GPU ("cuda:N"), or a single "cpu" slot. Does not import torch."""
    visible = os.environ.get("CUDA_VISIBLE_DEVICES")
    if visible is not None and visible.strip() in ("", "-1"):
        return ["cpu"]
    try:
        out = subprocess.run(["nvidia-smi", "-L"], capture_output=True, text=True, timeout=10, check=False)
        count = sum(1 for line in out.stdout.splitlines() if line.startswith("GPU "))
    except (FileNotFoundError, subprocess.TimeoutExpired):
        count = 0
    if count == 0:
        return ["cpu"]
    ids = [v.strip() for v in visible.split(",")] if visible else [str(i) for i in range(count)]
    return [f"cuda:{i}" for i in ids[:count]]


@dataclass
class ManagerConfig:
    home: Path                      # jobs.db and jobs/<id>/ (spec.json, worker.log, scratch) live here
    store_root: Path
    devices: list[str] = field(default_factory=lambda: ["cpu"])  # one concurrent job per entry
    cancel_grace_seconds: float = 10.0
    python: str = sys.executable


@dataclass
class _Running:
    process: subprocess.Popen
    device: str
    latest_metrics: dict = field(default_factory=dict)
    checkpoint_ids: list[str] = field(default_factory=list)
    error: dict | None = None
    result_id: str = ""
    cancel_requested: bool = False
    shutdown_requested: bool = False


def new_job_id() -> str:
    return f"job-{time.strftime('%Y%m%d-%H%M%S', time.gmtime())}-{uuid.uuid4().hex[:6]}"


class JobManager:
    def __init__(self, config: ManagerConfig, db: JobDB | None = None):
        self.config = config
        self.db = db or JobDB(config.home / "jobs.db")
        (config.home / "jobs").mkdir(parents=True, exist_ok=True)
        self._lock = threading.RLock()
        self._scheduler_wakeup = threading.Condition(self._lock)
        self._events_cond = threading.Condition()
        self._running: dict[str, _Running] = {}
        self._free_devices = list(config.devices)
        self._validator = ThreadPoolExecutor(max_workers=1, thread_name_prefix="validate")
        self._stopping = False
        self._scheduler = threading.Thread(target=self._schedule_loop, name="scheduler", daemon=True)

    # ---- lifecycle ---------------------------------------------------------------------------------

    def start(self) -> None:
        self._recover()
        self._scheduler.start()

    def shutdown(self, grace_seconds: float = 5.0) -> None:
        """Stop scheduling and stop running workers; their jobs fail with a message saying why."""
        with self._lock:
            self._stopping = True
            running = list(self._running.items())
            for _, run in running:
                run.shutdown_requested = True
                _signal_group(run.process, signal.SIGTERM)
            self._scheduler_wakeup.notify_all()
        deadline = time.monotonic() + grace_seconds
        for _, run in running:
            try:
                run.process.wait(timeout=max(0.1, deadline - time.monotonic()))
            except subprocess.TimeoutExpired:
                _signal_group(run.process, signal.SIGKILL)
        for _, run in running:
            run.process.wait()
        self._validator.shutdown(wait=True, cancel_futures=True)
        with self._events_cond:
            self._events_cond.notify_all()

    def _recover(self) -> None:
        for job in self.db.jobs_in_states([JobState.RUNNING]):
            kept = ", ".join(job.checkpoint_ids) or "none"
            self._transition(job.id, JobState.FAILED, error=ErrorInfo(
                "ABORTED", "the trainer server stopped while this job was running, so its worker was lost; "
                f"checkpoints it saved are kept ({kept}); start the job again to retry",
                log_tail=self._log_tail(job.id)), finished_at=time.time())
        for job in self.db.jobs_in_states([JobState.VALIDATING]):
            self._validator.submit(self._validate, job.id)

    # ---- requests ----------------------------------------------------------------------------------

    def submit(self, spec: TrainingSpec, *, request_id: str, display_name: str, request_blob: bytes) -> Job:
        """Create a job in VALIDATING (or return the job an earlier call with this request_id made)."""
        with self._lock:
            if request_id:
                existing = self.db.job_by_request_id(request_id)
                if existing:
                    return existing
            job_id = new_job_id()
            spec.job_id = job_id
            spec.store_root = str(self.config.store_root)
            self.db.insert_job(Job(
                id=job_id, request_id=request_id, method=spec.method, display_name=display_name or job_id,
                state=JobState.VALIDATING, created_at=time.time(), request_blob=request_blob,
                spec_json=spec.to_json()))
            self._transition(job_id, JobState.VALIDATING, message="checking every row of the dataset")
        self._validator.submit(self._validate, job_id)
        return self.get(job_id)

    def get(self, job_id: str) -> Job:
        job = self.db.get_job(job_id) if job_id else None
        if job is None:
            raise NotFound(f"job_id: no job {job_id!r} (list jobs with `lmforge jobs list`)")
        return job

    def list(self, *, states: list[JobState] | None = None, limit: int = 50,
             before: tuple[float, str] | None = None) -> list[Job]:
        return self.db.list_jobs(states=states, limit=limit, before=before)

    def cancel(self, job_id: str) -> Job:
        """Cancel a job. A running worker gets SIGTERM (it stops at the next step) and SIGKILL after the
        grace period; checkpoints already in the store stay. Returns the job once it has ended (or after
        the grace period)."""
        with self._lock:
            job = self.get(job_id)
            if job.state.terminal:
                raise FailedPrecondition(f"job {job_id} already ended in state {job.state.value}; nothing to cancel")
            run = self._running.get(job_id)
            if run is None:  # VALIDATING or QUEUED: nothing runs yet
                self._transition(job_id, JobState.CANCELLED, error=ErrorInfo("CANCELLED", "cancelled by the user"),
                                 finished_at=time.time())
                return self.get(job_id)
            run.cancel_requested = True
            _signal_group(run.process, signal.SIGTERM, leader_only=True)
            timer = threading.Timer(self.config.cancel_grace_seconds, _signal_group,
                                    args=(run.process, signal.SIGKILL))
            timer.daemon = True
            timer.start()
        deadline = time.monotonic() + self.config.cancel_grace_seconds + 5
        while time.monotonic() < deadline:
            job = self.get(job_id)
            if job.state.terminal:
                return job
            time.sleep(0.05)
        return self.get(job_id)

    def events(self, job_id: str, after_sequence: int = 0, follow: bool = False,
               is_active: Callable[[], bool] = lambda: True) -> Iterator[Event]:
        """Events with sequence > after_sequence in order; with follow, until the terminal state is sent."""
        self.get(job_id)
        after = max(0, after_sequence)
        while is_active():
            batch = self.db.events_after(job_id, after)
            for event in batch:
                yield event
                after = event.sequence
            if batch:
                continue
            with self._events_cond:
                job = self.get(job_id)
                if job.last_sequence > after:
                    continue
                if not follow or job.state.terminal or self._stopping:
                    return
                self._events_cond.wait(timeout=1.0)

    # ---- internals ---------------------------------------------------------------------------------

    def _append(self, job_id: str, kind: str, data: dict, step: int = 0, at: float | None = None,
                **job_fields) -> Event:
        with self._events_cond:
            event = self.db.append_event(job_id, kind, data, step, at, **job_fields)
            self._events_cond.notify_all()
        return event

    def _transition(self, job_id: str, state: JobState, message: str = "", error: ErrorInfo | None = None,
                    **job_fields) -> None:
        data = {"state": state.value, "message": message or (error.message if error else "")}
        if error:
            data["error"] = error.__dict__
            job_fields["error"] = error
        self._append(job_id, "state", data, job_fields.get("current_step", 0), state=state, **job_fields)
        log.info("job state", job_id=job_id, state=state.value, message=data["message"][:200])

    def _validate(self, job_id: str) -> None:
        try:
            job = self.get(job_id)
            if job.state is not JobState.VALIDATING:
                return
            spec = methods.load_spec(job.spec_json)
            violations, messages = [], []
            for label, dataset in (("dataset", spec.dataset), ("eval_dataset", spec.eval_dataset)):
                if dataset is None:
                    continue
                result = methods.validate_dataset(spec, dataset)
                dataset.format = result.format.value
                if not result.ok:
                    messages.append(f"{label} {dataset.dataset_id}: {result.bad_rows} of {result.total_rows} rows "
                                    "are invalid")
                    violations += [{**v.to_dict(), "field": f"{label}:{v.field}" if label != "dataset" else v.field}
                                   for v in result.violations]
            with self._lock:
                if self.get(job_id).state is not JobState.VALIDATING:
                    return  # cancelled meanwhile
                if messages:
                    self._transition(job_id, JobState.FAILED, error=ErrorInfo(
                        "INVALID_ARGUMENT", "; ".join(messages) + ". Fix the rows listed and upload the data again.",
                        violations), finished_at=time.time())
                    return
                self.db.update_job(job_id, spec_json=spec.to_json())
                self._transition(job_id, JobState.QUEUED, message="data valid; waiting for a free slot")
                self._scheduler_wakeup.notify_all()
        except LmforgeError as exc:
            self._transition(job_id, JobState.FAILED, error=ErrorInfo(exc.code, exc.message,
                                                                      [v.to_dict() for v in exc.violations]),
                             finished_at=time.time())
        except Exception as exc:  # noqa: BLE001 - a bug here must fail the job, not hang it in VALIDATING
            log.exception("validation crashed", job_id=job_id)
            self._transition(job_id, JobState.FAILED, error=ErrorInfo("INTERNAL", f"validation failed: {exc}"),
                             finished_at=time.time())

    def _schedule_loop(self) -> None:
        while True:
            with self._lock:
                while not self._stopping:
                    queued = self.db.jobs_in_states([JobState.QUEUED]) if self._free_devices else []
                    if queued:
                        break
                    self._scheduler_wakeup.wait(timeout=5.0)
                if self._stopping:
                    return
                job = queued[0]
                device = self._free_devices.pop(0)
                try:
                    self._launch(job, device)
                except Exception as exc:  # noqa: BLE001
                    log.exception("could not start worker", job_id=job.id)
                    self._free_devices.insert(0, device)
                    self._transition(job.id, JobState.FAILED, error=ErrorInfo(
                        "INTERNAL", f"could not start the worker process: {exc}"), finished_at=time.time())

    def _work_dir(self, job_id: str) -> Path:
        return self.config.home / "jobs" / job_id

    def _launch(self, job: Job, device: str) -> None:
        work_dir = self._work_dir(job.id)
        work_dir.mkdir(parents=True, exist_ok=True)
        spec_path = work_dir / "spec.json"
        spec_path.write_text(job.spec_json, encoding="utf-8")
        read_fd, write_fd = os.pipe()
        env = {**os.environ, EVENT_FD_ENV: str(write_fd), "HF_HUB_OFFLINE": "1", "HF_DATASETS_OFFLINE": "1",
               "TOKENIZERS_PARALLELISM": "false", "PYTHONUNBUFFERED": "1",
               "CUDA_VISIBLE_DEVICES": device.split(":")[1] if device.startswith("cuda:") else ""}
        with open(work_dir / "worker.log", "ab") as log_file:
            process = subprocess.Popen(
                [self.config.python, "-m", "services.trainer.worker", str(spec_path)],
                pass_fds=[write_fd], env=env, stdout=log_file, stderr=subprocess.STDOUT,
                stdin=subprocess.DEVNULL, start_new_session=True, cwd=str(work_dir),
            )
        os.close(write_fd)
        run = _Running(process=process, device=device)
        self._running[job.id] = run
        self._transition(job.id, JobState.RUNNING, message=f"worker pid {process.pid} on {device}",
                         started_at=time.time(), device=device)
        threading.Thread(target=self._follow_worker, args=(job.id, run, read_fd), name=f"worker-{job.id}",
                         daemon=True).start()

    def _follow_worker(self, job_id: str, run: _Running, read_fd: int) -> None:
        with os.fdopen(read_fd, "r", encoding="utf-8") as pipe:
            for line in pipe:
                try:
                    self._on_worker_message(job_id, run, json.loads(line))
                except Exception:  # noqa: BLE001 - one bad line must not stop the job's event stream
                    log.exception("bad worker message", job_id=job_id, line=line[:200])
        returncode = run.process.wait()
        self._finish(job_id, run, returncode)

    def _on_worker_message(self, job_id: str, run: _Running, message: dict) -> None:
        kind, data, step, at = message["kind"], message["data"], int(message.get("step", 0)), message.get("time")
        if kind == "metrics":
            run.latest_metrics.update(data.get("values", {}))
            self._append(job_id, kind, data, step, at, current_step=step,
                         total_steps=int(data.get("total_steps", 0)), latest_metrics=run.latest_metrics)
        elif kind == "checkpoint":
            run.checkpoint_ids.append(data["id"])
            self._append(job_id, kind, data, step, at, checkpoint_ids=run.checkpoint_ids)
        elif kind in ("log", "rollouts"):
            self._append(job_id, kind, data, step, at)
        elif kind == "error":
            run.error = data
        elif kind == "result":
            run.result_id = data["checkpoint_id"]

    def _finish(self, job_id: str, run: _Running, returncode: int) -> None:
        with self._lock:
            self._running.pop(job_id, None)
            self._free_devices.append(run.device)
            kept = ", ".join(run.checkpoint_ids) or "none"
            now = time.time()
            if run.cancel_requested or (returncode == EXIT_CANCELLED and not run.shutdown_requested):
                self._transition(job_id, JobState.CANCELLED, error=ErrorInfo(
                    "CANCELLED", f"cancelled by the user; checkpoints saved before that are kept: {kept}"),
                    finished_at=now)
            elif returncode == EXIT_OK and run.result_id:
                self._transition(job_id, JobState.SUCCEEDED, message=f"result: {run.result_id}",
                                 finished_at=now, result_checkpoint_id=run.result_id)
            else:
                self._transition(job_id, JobState.FAILED, error=self._failure(job_id, run, returncode),
                                 finished_at=now)
            self._scheduler_wakeup.notify_all()

    def _failure(self, job_id: str, run: _Running, returncode: int) -> ErrorInfo:
        tail = self._log_tail(job_id)
        if run.shutdown_requested:
            return ErrorInfo("ABORTED", "the trainer server shut down while this job was running; checkpoints "
                             "it saved are kept; start the job again to retry", log_tail=tail)
        if run.error:
            return ErrorInfo(run.error["code"], run.error["message"], run.error.get("violations", []), tail)
        if returncode < 0:
            name = signal.Signals(-returncode).name
            hint = " (usually the machine ran out of memory, or an operator killed it)" \
                if returncode == -signal.SIGKILL else ""
            return ErrorInfo("ABORTED", f"the worker process was killed by {name}{hint}", log_tail=tail)
        return ErrorInfo("INTERNAL", f"the worker process exited with code {returncode}; see the log tail",
                         log_tail=tail)

    def _log_tail(self, job_id: str) -> str:
        path = self._work_dir(job_id) / "worker.log"
        if not path.is_file():
            return ""
        with open(path, "rb") as handle:
            handle.seek(max(0, path.stat().st_size - LOG_TAIL_BYTES * 4))
            lines = handle.read().decode("utf-8", "replace").splitlines()
        return "\n".join(lines[-LOG_TAIL_LINES:])[-LOG_TAIL_BYTES:]

    def worker_pid(self, job_id: str) -> int | None:
        """PID of a running job's worker (for operators and tests)."""
        with self._lock:
            run = self._running.get(job_id)
            return run.process.pid if run else None


def _signal_group(process: subprocess.Popen, sig: int, leader_only: bool = False) -> None:
    """Signal the worker (and with leader_only=False, every process it started)."""
    if process.poll() is not None:
        return
    try:
        if leader_only:
            process.send_signal(sig)
        else:
            os.killpg(process.pid, sig)
    except ProcessLookupError:
        pass
