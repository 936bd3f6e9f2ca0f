"""What a recipe gets from the worker: its spec, the store, an event sink and a stop flag."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

from services.common.store import CheckpointStore
from services.trainer.spec import TrainingSpec

# emit(kind, data, step): kind is "metrics", "checkpoint" or "log"; data is JSON-serialisable.
Emit = Callable[[str, dict, int], None]


class Cancelled(Exception):
    """Raised by a recipe when the job was asked to stop before it finished."""


@dataclass
class RecipeContext:
    spec: TrainingSpec
    store: CheckpointStore
    emit: Emit
    should_stop: Callable[[], bool]
    # Scratch space of this job (trainer output_dir, caches); deleted never, so logs stay inspectable.
    work_dir: Path
    # "cuda" or "cpu": what this worker was given.
    device: str

    def log(self, message: str, level: str = "info", step: int = 0) -> None:
        self.emit("log", {"level": level, "message": message}, step)
