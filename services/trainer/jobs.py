"""Jobs: state machine, queue over device slots, one worker process per attempt, event log and fan-out.

    VALIDATING -> QUEUED -> RUNNING -> SUCCEEDED | FAILED | CANCELLED | PAUSED
                    ^                     |  worker died, not the user's error, restarts left
                    +---------------------+  (and ResumeJob from PAUSED / FAILED / CANCELLED)

* Validation (every row of the dataset) runs on a background thread in the server, before the job is
  queued; bad data fails the job at VALIDATING with each bad row listed, and no worker is started.
* The queue hands each job a free slot (one per GPU by default, or N CPU slots) and starts
  `python -m services.trainer.worker` in its own session. The worker writes its events to a journal
  file in the job's work directory; a follower thread turns each journal line into the job's next
  event, storing the journal position with it.
* Attempts: a job's first run is attempt 1. A worker that dies without it being the user's error
  (killed, OOM-killed, crashed) is restarted from the job's last full-state checkpoint as the next
  attempt, up to max_restarts times (the job's checkpoints.max_restarts, or the server's). Errors that
  are the user's (bad data, bad config) fail the job at once. PauseJob stops a worker after it saved
  its full state (PAUSED, slot freed); ResumeJob queues a PAUSED, FAILED or CANCELLED job again as the
  next attempt.
* Every event is appended to SQLite with the next per-job sequence number and then broadcast;
  subscribers read from SQLite after the sequence they last saw, so a reconnecting client misses
  nothing and sees nothing twice, across server restarts too.
* A server owns its state directory through a lock file: a second server on the same directory refuses
  to start. On start it re-adopts the workers a previous server left running (identified by pid, start
  time and a token, see workers.py) and reads on in their journals from the stored position; a worker
  that died meanwhile is handled as any worker death. VALIDATING jobs are validated again and QUEUED
  ones run. On shutdown, workers are left running (`detach`, the default: the next server re-adopts
  them) or paused (`pause`).
"""

from __future__ import annotations

import fcntl
import json
import os
import shutil
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
from services.trainer.metrics import TrainerMetrics
from services.trainer.spec import TrainingSpec
from services.trainer.worker import EXIT_OK, EXIT_STOPPED, RESUME_REASON_ENV, journal_path
from services.trainer.workers import JournalReader, WorkerProcess

log = get_logger(__name__)

LOG_TAIL_LINES = 40
LOG_TAIL_BYTES = 8192
# How often a follower looks for new journal lines and checks that its worker lives.
JOURNAL_POLL_SECONDS = 0.1
# Error codes a worker reports for the user's mistakes: retrying cannot help, so the job fails at once.
USER_ERROR_CODES = frozenset({"INVALID_ARGUMENT", "FAILED_PRECONDITION", "NOT_FOUND", "OUT_OF_RANGE",
                              "RESOURCE_EXHAUSTED", "ALREADY_EXISTS", "PERMISSION_DENIED", "UNAUTHENTICATED"})
SHUTDOWN_MODES = ("detach", "pause")


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
    home: Path                      # jobs.db, server.lock and jobs/<id>/ (spec, journals, logs, full state)
    store_root: Path
    devices: list[str] = field(default_factory=lambda: ["cpu"])  # one concurrent job per entry
    cancel_grace_seconds: float = 10.0
    python: str = sys.executable
    # Automatic restarts of a job whose worker died, unless its request says otherwise.
    max_restarts: int = 2
    # What shutdown() does with running workers: "detach" (leave them running for the next server) or
    # "pause" (each saves its full state and stops; the jobs are PAUSED).
    on_shutdown: str = "detach"
    # How long shutdown waits for paused workers to save and stop before leaving them running.
    pause_grace_seconds: float = 300.0


class StateDirectoryLocked(FailedPrecondition):
    """Another trainer server owns this state directory."""


@dataclass
class _Running:
    worker: WorkerProcess
    device: str
    journal: JournalReader
    # Journal lines earlier servers already turned into events (re-adoption): read, but not sent again.
    lines_done: int = 0
    holds_slot: bool = True
    latest_metrics: dict = field(default_factory=dict)
    checkpoint_ids: list[str] = field(default_factory=list)
    error: dict | None = None
    result_id: str = ""
    exit_code: int | None = None
    cancel_timer: threading.Timer | None = None


def new_job_id() -> str:
    return f"job-{time.strftime('%Y%m%d-%H%M%S', time.gmtime())}-{uuid.uuid4().hex[:6]}"


class JobManager:
    def __init__(self, config: ManagerConfig, db: JobDB | None = None, metrics: TrainerMetrics | None = None):
        if config.on_shutdown not in SHUTDOWN_MODES:
            raise ValueError(f"on_shutdown: {config.on_shutdown!r} is not one of {', '.join(SHUTDOWN_MODES)}")
        self.config = config
        config.home.mkdir(parents=True, exist_ok=True)
        self._lock_file = _lock_state_directory(config.home)
        self.db = db or JobDB(config.home / "jobs.db")
        self.metrics = metrics or TrainerMetrics()
        self.metrics.watch_jobs(self.db)
        (config.home / "jobs").mkdir(parents=True, exist_ok=True)
        self._lock = threading.RLock()
        self._scheduler_wakeup = threading.Condition(self._lock)
        self._events_cond = threading.Condition()
        self._running: dict[str, _Running] = {}
        self._followers: dict[str, threading.Thread] = {}
        self._free_devices = list(config.devices)
        self._validator = ThreadPoolExecutor(max_workers=1, thread_name_prefix="validate")
        self._stopping = False
        self._detached = threading.Event()  # set on shutdown: followers stop reading, workers keep running
        self._scheduler = threading.Thread(target=self._schedule_loop, name="scheduler", daemon=True)

    # ---- lifecycle ---------------------------------------------------------------------------------

    def start(self) -> None:
        self._recover()
        self._scheduler.start()

    def shutdown(self, grace_seconds: float = 5.0) -> None:
        """Stop scheduling. Running workers are left running (on_shutdown "detach") for the next server
        to re-adopt, or paused ("pause": each saves its full state and stops, up to pause_grace_seconds;
        any still saving then is left running)."""
        with self._lock:
            self._stopping = True
            self._scheduler_wakeup.notify_all()
            if self.config.on_shutdown == "pause":
                for job_id, run in self._running.items():
                    self.db.update_job(job_id, stop_request="pause")
                    run.worker.signal(signal.SIGTERM)
            followers = list(self._followers.values())
        if self.config.on_shutdown == "pause":
            deadline = time.monotonic() + self.config.pause_grace_seconds
            for follower in followers:
                follower.join(timeout=max(0.0, deadline - time.monotonic()))
        self._detached.set()
        for follower in followers:
            follower.join(timeout=grace_seconds)
        self._validator.shutdown(wait=True, cancel_futures=True)
        with self._events_cond:
            self._events_cond.notify_all()
        self._lock_file.close()

    def _recover(self) -> None:
        """Re-adopt the workers of RUNNING jobs (or handle their deaths), re-validate VALIDATING jobs."""
        for job in self.db.jobs_in_states([JobState.RUNNING]):
            work_dir = self._work_dir(job.id)
            worker = WorkerProcess.adopt(job.worker, work_dir)
            if worker is not None:
                log.info("re-adopted a running worker", job_id=job.id, pid=worker.pid, attempt=worker.attempt)
            else:  # it died while no server watched: read what its journal holds, then handle the end
                if WorkerProcess.kill_strays(work_dir):
                    log.warning("killed a stray worker that its record did not describe", job_id=job.id)
                worker = WorkerProcess(pid=0, create_time=0.0, token="", attempt=job.attempt)
            holds_slot = job.device in self._free_devices
            if holds_slot:
                self._free_devices.remove(job.device)
            run = _Running(worker=worker, device=job.device, journal=JournalReader(work_dir, job.attempt),
                           lines_done=job.journal_lines, holds_slot=holds_slot, latest_metrics=dict(job.latest_metrics),
                           checkpoint_ids=list(job.checkpoint_ids))
            self._running[job.id] = run
            self._follow(job.id, run)
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
        """Cancel a job. A running worker gets SIGTERM (it saves its full state at the next step and stops)
        and SIGKILL after the grace period; checkpoints already in the store stay, and ResumeJob can
        continue the job later. Returns the job once it has ended (or after the grace period)."""
        with self._lock:
            job = self.get(job_id)
            if job.state in (JobState.SUCCEEDED, JobState.FAILED, JobState.CANCELLED):
                raise FailedPrecondition(f"job {job_id} already ended in state {job.state.value}; nothing to cancel")
            run = self._running.get(job_id)
            if run is None:  # VALIDATING, QUEUED or PAUSED: nothing runs
                self._transition(job_id, JobState.CANCELLED, error=ErrorInfo("CANCELLED", "cancelled by the user"),
                                 finished_at=time.time())
                return self.get(job_id)
            self.db.update_job(job_id, stop_request="cancel")
            run.worker.signal(signal.SIGTERM)
            run.cancel_timer = threading.Timer(self.config.cancel_grace_seconds, run.worker.kill)
            run.cancel_timer.daemon = True
            run.cancel_timer.start()
        return self._wait_until_ended(job_id, self.config.cancel_grace_seconds + 5)

    def pause(self, job_id: str, wait_seconds: float = 60.0) -> Job:
        """Pause a job: a running worker saves its full state at the next step boundary and stops (PAUSED,
        its slot freed); a QUEUED job is PAUSED at once. Returns the job once it stopped, or after
        `wait_seconds` (still RUNNING, saving)."""
        with self._lock:
            job = self.get(job_id)
            if job.state is JobState.PAUSED:
                return job  # a repeated call (a retry) finds it done
            if job.state is JobState.QUEUED:
                self._transition(job_id, JobState.PAUSED, message="paused before it started; ResumeJob queues it again")
                return self.get(job_id)
            if job.state is not JobState.RUNNING or job_id not in self._running:
                raise FailedPrecondition(f"job {job_id} is {job.state.value}; only a QUEUED or RUNNING job can be "
                                         "paused" + (" (wait until its data is validated)"
                                                     if job.state is JobState.VALIDATING else ""))
            self.db.update_job(job_id, stop_request="pause")
            self._running[job_id].worker.signal(signal.SIGTERM)
        return self._wait_until_ended(job_id, wait_seconds)

    def resume(self, job_id: str) -> Job:
        """Queue a PAUSED, FAILED or CANCELLED job again as its next attempt; its worker continues from the
        last full-state checkpoint (from the start if there is none)."""
        with self._lock:
            job = self.get(job_id)
            if job.state is JobState.SUCCEEDED:
                raise FailedPrecondition(f"job {job_id} already succeeded (result {job.result_checkpoint_id}); "
                                         "there is nothing to resume; start a new job to train further")
            if not job.state.resumable:
                raise FailedPrecondition(f"job {job_id} is {job.state.value}, not paused, failed or cancelled; "
                                         "there is nothing to resume")
            if job.started_at == 0:  # it never ran: its data check did not finish (or failed)
                if job.error and job.error.code == "INVALID_ARGUMENT":
                    raise FailedPrecondition(f"job {job_id} failed its data check: fix the rows its error lists, "
                                             "upload the data again and start a new job")
                self.db.update_job(job_id, error=None, finished_at=0.0, stop_request="")
                self._transition(job_id, JobState.VALIDATING, message="resumed by the user; checking the data again")
                self._validator.submit(self._validate, job_id)
                return self.get(job_id)
            self._queue_next_attempt(job, f"resumed by the user (the job was {job.state.value})", restart=False)
            self._scheduler_wakeup.notify_all()
            return self.get(job_id)

    def events(self, job_id: str, after_sequence: int = 0, follow: bool = False,
               is_active: Callable[[], bool] = lambda: True) -> Iterator[Event]:
        """Events with sequence > after_sequence in order; with follow, until the job stops (a terminal or
        paused state) is sent."""
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

    def _wait_until_ended(self, job_id: str, seconds: float) -> Job:
        deadline = time.monotonic() + seconds
        with self._events_cond:
            while True:
                job = self.get(job_id)
                remaining = deadline - time.monotonic()
                if job.state.terminal or job.state is JobState.QUEUED or remaining <= 0:
                    return job
                self._events_cond.wait(timeout=min(remaining, 1.0))

    def _append(self, job_id: str, kind: str, data: dict, step: int = 0, at: float | None = None,
                **job_fields) -> Event:
        with self._events_cond:
            event = self.db.append_event(job_id, kind, data, step, at, **job_fields)
            self._events_cond.notify_all()
        self.metrics.event_stored(at)  # `at`: when a worker wrote it (None for the server's own events)
        return event

    def _transition(self, job_id: str, state: JobState, message: str = "", error: ErrorInfo | None = None,
                    **job_fields) -> None:
        data = {"state": state.value, "message": message or (error.message if error else "")}
        if error:
            data["error"] = error.__dict__
            job_fields["error"] = error
        self._append(job_id, "state", data, job_fields.get("current_step", 0), state=state, **job_fields)
        if state.terminal:
            job = self.db.get_job(job_id)
            self.metrics.job_ended(job.method, state, job.started_at, job.created_at)
        log.info("job state", job_id=job_id, state=state.value, message=data["message"][:200])

    def _queue_next_attempt(self, job: Job, reason: str, *, restart: bool) -> None:
        attempt = job.attempt + 1
        restarts = job.restarts + (1 if restart else 0)
        if restart:
            self.metrics.worker_restarts.inc()
        self.db.update_job(job.id, error=None, finished_at=0.0)
        self._transition(job.id, JobState.QUEUED, message=f"{reason}; queued as attempt {attempt}, to continue from "
                         "its last full-state checkpoint", attempt=attempt, restarts=restarts, stop_request="",
                         worker={}, journal_lines=0, resume_reason=reason, current_step=job.current_step)

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
        journal_path(work_dir, job.attempt).unlink(missing_ok=True)  # a launch that never got recorded
        env = {**os.environ, "HF_HUB_OFFLINE": "1", "HF_DATASETS_OFFLINE": "1", "TOKENIZERS_PARALLELISM": "false",
               "PYTHONUNBUFFERED": "1", RESUME_REASON_ENV: job.resume_reason,
               "CUDA_VISIBLE_DEVICES": device.split(":")[1] if device.startswith("cuda:") else ""}
        worker = WorkerProcess.launch(
            [self.config.python, "-m", "services.trainer.worker", str(spec_path), "--attempt", str(job.attempt)],
            work_dir=work_dir, attempt=job.attempt, env=env)
        run = _Running(worker=worker, device=device, journal=JournalReader(work_dir, job.attempt),
                       latest_metrics=dict(job.latest_metrics), checkpoint_ids=list(job.checkpoint_ids))
        self._running[job.id] = run
        attempt_note = f", attempt {job.attempt}" if job.attempt > 1 else ""
        self._transition(job.id, JobState.RUNNING, message=f"worker pid {worker.pid} on {device}{attempt_note}",
                         started_at=job.started_at or time.time(), device=device, worker=worker.record(),
                         journal_lines=0, current_step=job.current_step)
        self._follow(job.id, run)

    def _follow(self, job_id: str, run: _Running) -> None:
        thread = threading.Thread(target=self._follow_worker, args=(job_id, run), name=f"worker-{job_id}",
                                  daemon=True)
        self._followers[job_id] = thread
        thread.start()

    def _follow_worker(self, job_id: str, run: _Running) -> None:
        """Turn the worker's journal into events until it exits (then end the attempt) or the server
        detaches (then the worker runs on, and the next server reads on from the stored line)."""
        while not self._detached.is_set():
            alive = run.worker.alive()  # checked before reading, so nothing written before an exit is missed
            messages = run.journal.read_new()
            first_line = run.journal.lines_read - len(messages) + 1
            for offset, message in enumerate(messages):
                try:
                    self._on_worker_message(job_id, run, message, first_line + offset)
                except Exception:  # noqa: BLE001 - one bad line must not stop the job's event stream
                    log.exception("bad worker message", job_id=job_id, message=str(message)[:200])
            if not alive:
                self._finish(job_id, run)
                return
            if not messages:
                self._detached.wait(JOURNAL_POLL_SECONDS)
        with self._lock:
            self._followers.pop(job_id, None)

    def _on_worker_message(self, job_id: str, run: _Running, message: dict, line: int) -> None:
        kind, data, step, at = message["kind"], message["data"], int(message.get("step", 0)), message.get("time")
        if kind == "error":
            run.error = data
        elif kind == "result":
            run.result_id = data["checkpoint_id"]
        elif kind == "exit":
            run.exit_code = int(data["code"])
        if line <= run.lines_done:  # an earlier server already stored this line's event
            return
        if kind == "metrics":
            tokens, before = data.get("values", {}).get("num_tokens"), run.latest_metrics.get("num_tokens", 0.0)
            if tokens is not None and data.get("phase") == "train" and tokens > before:
                self.metrics.tokens_trained.inc(tokens - before)
            run.latest_metrics.update(data.get("values", {}))
            self._append(job_id, kind, data, step, at, current_step=step, total_steps=int(data.get("total_steps", 0)),
                         latest_metrics=run.latest_metrics, journal_lines=line)
        elif kind == "checkpoint":
            if data["id"] not in run.checkpoint_ids:
                run.checkpoint_ids.append(data["id"])
            self._append(job_id, kind, data, step, at, checkpoint_ids=run.checkpoint_ids, journal_lines=line)
        elif kind in ("log", "rollouts", "resumed"):
            self._append(job_id, kind, data, step, at, journal_lines=line)
        else:
            self.db.update_job(job_id, journal_lines=line)

    def _finish(self, job_id: str, run: _Running) -> None:
        """The attempt's worker has exited: decide the job's next state from what it reported."""
        with self._lock:
            if run.cancel_timer is not None:
                run.cancel_timer.cancel()
            self._running.pop(job_id, None)
            self._followers.pop(job_id, None)
            if run.holds_slot:
                self._free_devices.append(run.device)
            job = self.get(job_id)
            kept = ", ".join(job.checkpoint_ids) or "none"
            now = time.time()
            stopped_at = f"step {job.current_step}"
            if run.exit_code == EXIT_OK and run.result_id:
                self._transition(job_id, JobState.SUCCEEDED, message=f"result: {run.result_id}", finished_at=now,
                                 result_checkpoint_id=run.result_id, worker={}, stop_request="")
                if not json.loads(job.spec_json).get("keep_state_after_success"):
                    self._remove_full_state(job_id)
            elif job.stop_request == "cancel":
                self._transition(job_id, JobState.CANCELLED, error=ErrorInfo(
                    "CANCELLED", f"cancelled by the user at {stopped_at}; checkpoints saved before that are kept: "
                    f"{kept}; ResumeJob continues the job"), finished_at=now, worker={}, stop_request="")
            elif job.stop_request == "pause":
                self._transition(job_id, JobState.PAUSED, message=f"paused at {stopped_at} with its full state saved; "
                                 "ResumeJob continues it", finished_at=now, worker={}, stop_request="")
            elif run.error and run.error["code"] in USER_ERROR_CODES:
                self._transition(job_id, JobState.FAILED, error=ErrorInfo(
                    run.error["code"], run.error["message"], run.error.get("violations", []), self._log_tail(job_id)),
                    finished_at=now, worker={})
            else:
                self._worker_died(job, run, now)
            self._scheduler_wakeup.notify_all()

    def _worker_died(self, job: Job, run: _Running, now: float) -> None:
        """A death that is not the user's error: restart from the last full state while restarts remain."""
        reason = self._death_reason(run)
        limit = json.loads(job.spec_json).get("max_restarts")
        limit = self.config.max_restarts if limit is None else int(limit)
        if job.restarts < limit:
            self._queue_next_attempt(job, f"{reason} at step {job.current_step} (automatic restart "
                                     f"{job.restarts + 1} of {limit})", restart=True)
            return
        code = run.error["code"] if run.error else "ABORTED"
        gave_up = (f"; gave up after {job.restarts} automatic restart{'s' if job.restarts != 1 else ''}"
                   if limit else "; automatic restarts are off (checkpoints.max_restarts = 0)")
        self._transition(job.id, JobState.FAILED, error=ErrorInfo(
            code, f"{reason}{gave_up}; ResumeJob continues the job from its last full-state checkpoint",
            run.error.get("violations", []) if run.error else [], self._log_tail(job.id)),
            finished_at=now, worker={})

    @staticmethod
    def _death_reason(run: _Running) -> str:
        if run.error:
            return f"the worker failed: {run.error['message']}"
        if run.exit_code == EXIT_STOPPED:
            return "the worker was stopped by a SIGTERM from outside lmforge"
        returncode = run.worker.returncode()
        if returncode is not None and returncode < 0:
            name = signal.Signals(-returncode).name
            hint = " (usually the machine ran out of memory, or an operator killed it)" \
                if returncode == -signal.SIGKILL else ""
            return f"the worker process was killed by {name}{hint}"
        if returncode is not None and run.exit_code is None:
            return f"the worker process exited with code {returncode} without reporting why; see the log tail"
        return ("the worker process ended without reporting why (killed by an operator, the out-of-memory "
                "killer or a reboot)")

    def _remove_full_state(self, job_id: str) -> None:
        """Delete a succeeded job's full-state checkpoints and phases (the store entries stay)."""
        work_dir = self._work_dir(job_id)
        for checkpoint in work_dir.glob("**/checkpoint-*"):
            if checkpoint.is_dir():
                shutil.rmtree(checkpoint, ignore_errors=True)
        shutil.rmtree(work_dir / "phases", ignore_errors=True)

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
            return run.worker.pid if run else None


def _lock_state_directory(home: Path):
    """Hold an exclusive lock on home/server.lock for the server's life (released by the OS if it dies):
    two servers on one state directory would run every job twice."""
    handle = open(home / "server.lock", "a+")  # noqa: SIM115 - held open on purpose
    try:
        fcntl.flock(handle, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        handle.seek(0)
        owner = handle.read().strip() or "unknown"
        handle.close()
        raise StateDirectoryLocked(f"another lmforge-trainer (pid {owner}) already uses the state directory "
                                   f"{str(home)!r}; stop it first, or give this server its own --home") from None
    handle.seek(0)
    handle.truncate()
    handle.write(str(os.getpid()))
    handle.flush()
    return handle
