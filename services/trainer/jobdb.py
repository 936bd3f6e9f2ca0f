"""SQLite persistence of jobs and their full event history (the embedded default).

One connection, used under one lock: the job manager is the only writer, and reads are short. Events
are appended with the job's `last_sequence` bumped in the same transaction, which is what makes
sequences gap-free and the history survive a restart of the server.
"""

from __future__ import annotations

import json
import sqlite3
import threading
import time
from dataclasses import dataclass, field
from enum import Enum
from pathlib import Path


class JobState(str, Enum):
    VALIDATING = "VALIDATING"
    QUEUED = "QUEUED"
    RUNNING = "RUNNING"
    SUCCEEDED = "SUCCEEDED"
    FAILED = "FAILED"
    CANCELLED = "CANCELLED"
    PAUSED = "PAUSED"

    @property
    def terminal(self) -> bool:
        """Nothing runs and nothing will unless someone calls ResumeJob (PAUSED included)."""
        return self in (JobState.SUCCEEDED, JobState.FAILED, JobState.CANCELLED, JobState.PAUSED)

    @property
    def resumable(self) -> bool:
        return self in (JobState.FAILED, JobState.CANCELLED, JobState.PAUSED)


@dataclass
class ErrorInfo:
    code: str
    message: str
    violations: list[dict] = field(default_factory=list)
    log_tail: str = ""


@dataclass
class Job:
    id: str
    request_id: str
    method: str
    display_name: str
    state: JobState
    created_at: float
    request_blob: bytes  # the StartTrainingRequest as sent, opaque here (the servicer decodes it)
    spec_json: str
    started_at: float = 0.0
    finished_at: float = 0.0
    current_step: int = 0
    total_steps: int = 0
    latest_metrics: dict[str, float] = field(default_factory=dict)
    checkpoint_ids: list[str] = field(default_factory=list)
    result_checkpoint_id: str = ""
    error: ErrorInfo | None = None
    device: str = ""
    last_sequence: int = 0
    attempt: int = 1
    restarts: int = 0
    # "pause" or "cancel" while a stop asked of the running worker is under way ("" otherwise).
    stop_request: str = ""
    # The running attempt's worker: {"pid", "create_time", "token", "attempt"} (see workers.WorkerProcess).
    worker: dict = field(default_factory=dict)
    # Lines of the running attempt's event journal already turned into events.
    journal_lines: int = 0
    # Why the next attempt runs (told to the worker, which reports it in its `resumed` event).
    resume_reason: str = ""


@dataclass
class Event:
    job_id: str
    sequence: int
    time: float
    step: int
    kind: str  # metrics | state | checkpoint | log | rollouts | resumed
    data: dict
    attempt: int = 1


_SCHEMA = """
CREATE TABLE IF NOT EXISTS jobs (
    id TEXT PRIMARY KEY,
    request_id TEXT NOT NULL,
    method TEXT NOT NULL,
    display_name TEXT NOT NULL,
    state TEXT NOT NULL,
    created_at REAL NOT NULL,
    request_blob BLOB NOT NULL,
    spec_json TEXT NOT NULL,
    started_at REAL NOT NULL DEFAULT 0,
    finished_at REAL NOT NULL DEFAULT 0,
    current_step INTEGER NOT NULL DEFAULT 0,
    total_steps INTEGER NOT NULL DEFAULT 0,
    latest_metrics TEXT NOT NULL DEFAULT '{}',
    checkpoint_ids TEXT NOT NULL DEFAULT '[]',
    result_checkpoint_id TEXT NOT NULL DEFAULT '',
    error TEXT,
    device TEXT NOT NULL DEFAULT '',
    last_sequence INTEGER NOT NULL DEFAULT 0
);
CREATE UNIQUE INDEX IF NOT EXISTS jobs_request_id ON jobs(request_id) WHERE request_id != '';
CREATE INDEX IF NOT EXISTS jobs_created ON jobs(created_at DESC, id DESC);
CREATE TABLE IF NOT EXISTS events (
    job_id TEXT NOT NULL,
    sequence INTEGER NOT NULL,
    time REAL NOT NULL,
    step INTEGER NOT NULL,
    kind TEXT NOT NULL,
    data TEXT NOT NULL,
    PRIMARY KEY (job_id, sequence)
) WITHOUT ROWID;
"""

# Columns added after the first release: a database from then gets them on open (nothing stored is lost).
_ADDED_COLUMNS = {
    "jobs": {"attempt": "INTEGER NOT NULL DEFAULT 1", "restarts": "INTEGER NOT NULL DEFAULT 0",
             "stop_request": "TEXT NOT NULL DEFAULT ''", "worker": "TEXT NOT NULL DEFAULT '{}'",
             "journal_lines": "INTEGER NOT NULL DEFAULT 0", "resume_reason": "TEXT NOT NULL DEFAULT ''"},
    "events": {"attempt": "INTEGER NOT NULL DEFAULT 1"},
}

_JSON_COLUMNS = {"latest_metrics", "checkpoint_ids", "worker"}


class JobDB:
    def __init__(self, path: Path):
        path.parent.mkdir(parents=True, exist_ok=True)
        self._conn = sqlite3.connect(str(path), check_same_thread=False, isolation_level=None)
        self._conn.row_factory = sqlite3.Row
        self._lock = threading.RLock()
        with self._lock:
            self._conn.execute("PRAGMA journal_mode=WAL")
            self._conn.execute("PRAGMA synchronous=NORMAL")
            self._conn.executescript(_SCHEMA)
            for table, columns in _ADDED_COLUMNS.items():
                present = {row["name"] for row in self._conn.execute(f"PRAGMA table_info({table})")}
                for name, declaration in columns.items():
                    if name not in present:
                        self._conn.execute(f"ALTER TABLE {table} ADD COLUMN {name} {declaration}")

    def close(self) -> None:
        with self._lock:
            self._conn.close()

    @staticmethod
    def _job_from_row(row: sqlite3.Row) -> Job:
        data = dict(row)
        for column in _JSON_COLUMNS:
            data[column] = json.loads(data[column])
        data["state"] = JobState(data["state"])
        data["error"] = ErrorInfo(**json.loads(data["error"])) if data["error"] else None
        return Job(**data)

    def insert_job(self, job: Job) -> None:
        with self._lock:
            self._conn.execute(
                "INSERT INTO jobs (id, request_id, method, display_name, state, created_at, request_blob, spec_json)"
                " VALUES (?, ?, ?, ?, ?, ?, ?, ?)",
                (job.id, job.request_id, job.method, job.display_name, job.state.value, job.created_at,
                 job.request_blob, job.spec_json),
            )

    def get_job(self, job_id: str) -> Job | None:
        with self._lock:
            row = self._conn.execute("SELECT * FROM jobs WHERE id = ?", (job_id,)).fetchone()
        return self._job_from_row(row) if row else None

    def job_by_request_id(self, request_id: str) -> Job | None:
        with self._lock:
            row = self._conn.execute("SELECT * FROM jobs WHERE request_id = ?", (request_id,)).fetchone()
        return self._job_from_row(row) if row else None

    def list_jobs(self, *, states: list[JobState] | None = None, limit: int = 50,
                  before: tuple[float, str] | None = None) -> list[Job]:
        """Newest first; `before` = (created_at, id) of the last job of the previous page."""
        clauses, params = [], []
        if states:
            clauses.append(f"state IN ({','.join('?' * len(states))})")
            params += [s.value for s in states]
        if before:
            clauses.append("(created_at < ? OR (created_at = ? AND id < ?))")
            params += [before[0], before[0], before[1]]
        where = f"WHERE {' AND '.join(clauses)}" if clauses else ""
        with self._lock:
            rows = self._conn.execute(
                f"SELECT * FROM jobs {where} ORDER BY created_at DESC, id DESC LIMIT ?", (*params, limit)
            ).fetchall()
        return [self._job_from_row(r) for r in rows]

    def count_by_state(self) -> dict[JobState, int]:
        with self._lock:
            rows = self._conn.execute("SELECT state, COUNT(*) FROM jobs GROUP BY state").fetchall()
        return {JobState(state): count for state, count in rows}

    def jobs_in_states(self, states: list[JobState]) -> list[Job]:
        with self._lock:
            rows = self._conn.execute(
                f"SELECT * FROM jobs WHERE state IN ({','.join('?' * len(states))}) ORDER BY created_at, id",
                [s.value for s in states],
            ).fetchall()
        return [self._job_from_row(r) for r in rows]

    def update_job(self, job_id: str, **fields) -> None:
        if not fields:
            return
        values = []
        for name, value in fields.items():
            if name in _JSON_COLUMNS:
                value = json.dumps(value)
            elif name == "state":
                value = JobState(value).value
            elif name == "error":
                value = json.dumps(value.__dict__) if value else None
            values.append(value)
        assignments = ", ".join(f"{name} = ?" for name in fields)
        with self._lock:
            self._conn.execute(f"UPDATE jobs SET {assignments} WHERE id = ?", (*values, job_id))

    def append_event(self, job_id: str, kind: str, data: dict, step: int = 0, at: float | None = None,
                     **job_fields) -> Event:
        """Append the job's next event (of its current attempt) and apply `job_fields` to the job, in one
        transaction: a journal position stored with the event it produced is never ahead or behind it."""
        with self._lock:
            self._conn.execute("BEGIN IMMEDIATE")
            try:
                sequence, attempt = self._conn.execute(
                    "SELECT last_sequence, attempt FROM jobs WHERE id = ?", (job_id,)).fetchone()
                attempt = job_fields.get("attempt", attempt)
                event = Event(job_id, sequence + 1, at if at is not None else time.time(), step, kind, data, attempt)
                self._conn.execute(
                    "INSERT INTO events (job_id, sequence, time, step, kind, data, attempt)"
                    " VALUES (?, ?, ?, ?, ?, ?, ?)",
                    (job_id, event.sequence, event.time, step, kind, json.dumps(data, ensure_ascii=False), attempt),
                )
                sequence = event.sequence
                self.update_job(job_id, last_sequence=sequence, **job_fields)
                self._conn.execute("COMMIT")
            except BaseException:
                self._conn.execute("ROLLBACK")
                raise
        return event

    def events_after(self, job_id: str, after_sequence: int, limit: int = 500) -> list[Event]:
        with self._lock:
            rows = self._conn.execute(
                "SELECT * FROM events WHERE job_id = ? AND sequence > ? ORDER BY sequence LIMIT ?",
                (job_id, after_sequence, limit),
            ).fetchall()
        return [Event(r["job_id"], r["sequence"], r["time"], r["step"], r["kind"], json.loads(r["data"]), r["attempt"])
                for r in rows]
