"""What a recipe gets from the worker: its spec, the store, an event sink, a stop flag, and where its
full state lives so that a later attempt of the same job can resume it.

Full state (what resuming needs: weights or adapter, optimizer, scheduler, RNG, data position) is written
by the trainers' own mechanism (transformers `save_strategy` into `checkpoint-N` folders of an output
directory in the job's work directory) and read back with `resume_from_checkpoint`. Methods that run in
phases (RFT rounds, offline distillation's teacher pass, pretraining's tokenizer) also record each
finished phase's result with `save_phase`, and a later attempt takes it from `finished_phase` instead of
redoing it.
"""

from __future__ import annotations

import json
import os
import re
import shutil
import signal
import uuid
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path

from services.common.store import CheckpointStore
from services.trainer.spec import TrainingSpec

# emit(kind, data, step): kind is "metrics", "checkpoint", "log", "rollouts" or "resumed"; data is JSON.
Emit = Callable[[str, dict, int], None]

_CHECKPOINT_DIR = re.compile(r"^checkpoint-(\d+)$")
# transformers writes trainer_state.json after the model, optimizer, scheduler and RNG files of a
# checkpoint: a folder that has it is complete.
_COMPLETE_MARKER = "trainer_state.json"


class Cancelled(Exception):
    """Raised by a recipe when the job was asked to stop before it finished."""


def latest_full_state(output_dir: Path) -> Path | None:
    """The newest complete `checkpoint-N` folder under a trainer's output_dir (None if there is none)."""
    if not output_dir.is_dir():
        return None
    found = [(int(m.group(1)), entry) for entry in output_dir.iterdir()
             if (m := _CHECKPOINT_DIR.match(entry.name)) and (entry / _COMPLETE_MARKER).is_file()]
    return max(found)[1] if found else None


def checkpoint_step(checkpoint_dir: Path) -> int:
    """The optimizer step of a `checkpoint-N` folder."""
    return int(checkpoint_dir.name.rsplit("-", 1)[1])


@dataclass
class RecipeContext:
    spec: TrainingSpec
    store: CheckpointStore
    emit: Emit
    should_stop: Callable[[], bool]
    # Scratch space of this job (trainer output_dir, caches, full state); kept across attempts.
    work_dir: Path
    # "cuda" or "cpu": what this worker was given.
    device: str
    # 1 for the first run of the job; each resume adds one.
    attempt: int = 1
    # Why this attempt runs (told by the job manager); reported in the `resumed` event.
    resume_reason: str = ""
    # Tests only: freeze the worker (SIGSTOP) once the full state of one of these steps is written.
    fault_stop_steps: frozenset[int] = frozenset()
    _resume_reported: bool = field(default=False, repr=False)

    def log(self, message: str, level: str = "info", step: int = 0) -> None:
        self.emit("log", {"level": level, "message": message}, step)

    # ---- full state -----------------------------------------------------------------------------

    def output_dir(self, name: str = "trainer") -> Path:
        """A trainer's output_dir in the work directory; its `checkpoint-N` folders are the full state."""
        return self.work_dir / name

    def resume_checkpoint(self, name: str = "trainer") -> str | None:
        """The checkpoint a trainer with this output_dir resumes from (None: start from scratch)."""
        latest = latest_full_state(self.output_dir(name))
        return str(latest) if latest else None

    def report_resume(self, from_step: int) -> None:
        """Emit the `resumed` event of this attempt once (nothing on a job's first run from scratch)."""
        if self._resume_reported or (self.attempt == 1 and from_step == 0):
            return
        self._resume_reported = True
        self.emit("resumed", {"attempt": self.attempt, "from_step": from_step,
                              "reason": self.resume_reason or "resumed"}, from_step)

    def full_state_saved(self, step: int) -> None:
        """Called once a full-state checkpoint of `step` is on disk (fault injection hook for tests)."""
        if step in self.fault_stop_steps:
            os.kill(os.getpid(), signal.SIGSTOP)

    # ---- phases ---------------------------------------------------------------------------------

    def _phases_dir(self) -> Path:
        return self.work_dir / "phases"

    def finished_phase(self, name: str) -> Path | None:
        """The folder `save_phase(name)` published in an earlier attempt, or None."""
        path = self._phases_dir() / name
        return path if (path / "phase.json").is_file() else None

    @contextmanager
    def save_phase(self, name: str, info: dict | None = None) -> Iterator[Path]:
        """Yield an empty folder for a finished phase's result; it is published (renamed into place, with
        `phase.json` holding `info`) only if the body completes, so a later attempt never sees half of it."""
        tmp = self._phases_dir() / f".{name}.{uuid.uuid4().hex[:8]}"
        tmp.mkdir(parents=True)
        try:
            yield tmp
            (tmp / "phase.json").write_text(json.dumps(info or {}))
            final = self._phases_dir() / name
            if final.exists():
                shutil.rmtree(final)
            os.rename(tmp, final)
        finally:
            if tmp.exists():
                shutil.rmtree(tmp, ignore_errors=True)

    def phase_info(self, name: str) -> dict:
        path = self.finished_phase(name)
        return json.loads((path / "phase.json").read_text()) if path else {}
