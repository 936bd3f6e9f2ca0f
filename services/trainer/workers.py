"""Worker processes as the job manager sees them: started, re-adopted after a server restart, signalled,
and their event journals read.

A worker runs in its own session (`start_new_session`), so killing the server (even `kill -9`) does not
kill it. The next server finds it from what the database recorded at launch, `{pid, create_time, token}`,
and adopts it only if all three still match: a process with that pid, started at that time, whose
environment carries the token that is also in the job's work directory. A bare pid is never trusted
(pids are reused).

The journal (`events-<attempt>.jsonl`, written by services/trainer/worker.py) is read line by line; a
line is only complete with its newline, so a line being written is left for the next read.
"""

from __future__ import annotations

import json
import os
import secrets
import signal
import subprocess
from dataclasses import dataclass
from pathlib import Path

import psutil

from services.trainer.worker import TOKEN_ENV, journal_path

TOKEN_FILE = "worker.token"


@dataclass
class WorkerProcess:
    pid: int
    create_time: float
    token: str
    attempt: int
    # Set when this server started the process (then it is our child and must be reaped through it).
    popen: subprocess.Popen | None = None

    @classmethod
    def launch(cls, command: list[str], *, work_dir: Path, attempt: int, env: dict[str, str]) -> WorkerProcess:
        """Start a worker in `work_dir`; a stray worker of the same job is killed first (`kill_strays`)."""
        cls.kill_strays(work_dir)
        token = secrets.token_hex(16)
        (work_dir / TOKEN_FILE).write_text(token)
        with open(work_dir / "worker.log", "ab") as log_file:
            popen = subprocess.Popen(command, env={**env, TOKEN_ENV: token}, stdout=log_file,
                                     stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL, start_new_session=True,
                                     cwd=str(work_dir))
        try:
            create_time = psutil.Process(popen.pid).create_time()
        except psutil.NoSuchProcess:  # it ended already; record what we can, `alive` says the rest
            create_time = 0.0
        return cls(popen.pid, create_time, token, attempt, popen)

    @classmethod
    def adopt(cls, record: dict, work_dir: Path) -> WorkerProcess | None:
        """The worker a database record describes, if it is still that very process; None otherwise."""
        if not record or "pid" not in record:
            return None
        token_path = work_dir / TOKEN_FILE
        if not token_path.is_file() or token_path.read_text().strip() != record["token"]:
            return None
        try:
            process = psutil.Process(int(record["pid"]))
            if abs(process.create_time() - float(record["create_time"])) > 0.01:
                return None
            if process.environ().get(TOKEN_ENV) != record["token"] or process.status() == psutil.STATUS_ZOMBIE:
                return None
        except (psutil.NoSuchProcess, psutil.AccessDenied, ValueError):
            return None
        return cls(int(record["pid"]), float(record["create_time"]), record["token"], int(record["attempt"]))

    @staticmethod
    def kill_strays(work_dir: Path) -> int:
        """Kill live processes that carry the worker token of `work_dir` (with everything they started).

        A server records a worker after starting it; one that dies in between leaves a worker no record
        describes, which the next server cannot adopt and would otherwise run a second time next to it.
        One job never has two workers: the stray is killed before a new attempt starts, or when a job's
        recorded worker cannot be adopted. Returns how many processes were killed."""
        token_path = work_dir / TOKEN_FILE
        if not token_path.is_file():
            return 0
        token = token_path.read_text().strip()
        strays = []
        for process in psutil.process_iter():
            try:
                if process.pid != os.getpid() and process.environ().get(TOKEN_ENV) == token:
                    strays.append(process)
            except (psutil.NoSuchProcess, psutil.AccessDenied, psutil.ZombieProcess):
                continue
        for process in strays:
            try:
                os.killpg(process.pid, signal.SIGKILL)  # a worker leads its own session and process group
            except (ProcessLookupError, PermissionError):
                pass
            try:
                process.kill()
            except psutil.NoSuchProcess:
                pass
        psutil.wait_procs(strays, timeout=30)
        return len(strays)

    def record(self) -> dict:
        return {"pid": self.pid, "create_time": self.create_time, "token": self.token, "attempt": self.attempt}

    def alive(self) -> bool:
        if self.pid <= 0:
            return False
        if self.popen is not None:
            return self.popen.poll() is None
        try:
            process = psutil.Process(self.pid)
            return process.create_time() == self.create_time and process.status() != psutil.STATUS_ZOMBIE
        except psutil.NoSuchProcess:
            return False

    def returncode(self) -> int | None:
        """The exit status when this server started the process (negative: killed by that signal)."""
        return self.popen.poll() if self.popen is not None else None

    def signal(self, sig: int, *, group: bool = False) -> None:
        """Send `sig` to the worker (group=True: to every process it started too)."""
        if not self.alive():
            return
        try:
            if group:
                os.killpg(self.pid, sig)
            else:
                os.kill(self.pid, sig)
        except ProcessLookupError:
            pass

    def kill(self) -> None:
        self.signal(signal.SIGKILL, group=True)


class JournalReader:
    """Reads an attempt's journal from the start, one complete line at a time."""

    def __init__(self, work_dir: Path, attempt: int):
        self.path = journal_path(work_dir, attempt)
        self._offset = 0
        self._partial = b""
        self.lines_read = 0

    def read_new(self) -> list[dict]:
        """Messages appended since the last call (only lines already ended by a newline)."""
        if not self.path.is_file():
            return []
        with open(self.path, "rb") as handle:
            handle.seek(self._offset)
            data = handle.read()
        self._offset += len(data)
        data = self._partial + data
        *complete, self._partial = data.split(b"\n")
        messages = []
        for line in complete:
            self.lines_read += 1
            try:
                messages.append(json.loads(line))
            except json.JSONDecodeError:
                messages.append({"kind": "log", "step": 0, "data": {"level": "warning",
                                                                    "message": "unreadable journal line"}})
        return messages
