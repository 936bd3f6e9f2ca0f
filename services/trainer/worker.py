"""The training worker: one OS process per job attempt, started by the job manager.

    python -m services.trainer.worker <spec.json> --attempt N

Events go to a durable journal, `events-<N>.jsonl` in the job's work directory, one JSON line each
(`{"kind", "time", "step", "data"}`; kinds are metrics / checkpoint / log / rollouts / resumed, plus
"error" (why the job failed), "result" (the final store id) and, last, "exit" with the exit code). The
manager tails the journal and turns lines into the job's events; because the journal is a file and the
worker runs in its own session, the worker outlives a trainer restart and the next server re-adopts it
and reads on from the line it had reached (see workers.py). stdout/stderr are the job's log file, where
libraries print what they like.

Exit codes: 0 succeeded, 1 failed, 3 stopped (SIGTERM asks the job to save its full state at the next
step boundary and stop; the manager knows whether that was a pause or a cancel).

`LMFORGE_FAULT_STOP_AT_STEP=k[,k2...]` (tests and benchmarks only) makes the worker freeze itself (SIGSTOP)
right after the full-state checkpoint of step k (or of each listed step) is written, so a test can kill
it, or its server, at an exact point and let it go on with SIGCONT.
"""

from __future__ import annotations

import argparse
import json
import os
import signal
import sys
import threading
import time
import traceback
from pathlib import Path

EXIT_OK, EXIT_FAILED, EXIT_STOPPED = 0, 1, 3
TOKEN_ENV = "LMFORGE_WORKER_TOKEN"
RESUME_REASON_ENV = "LMFORGE_RESUME_REASON"
FAULT_STOP_ENV = "LMFORGE_FAULT_STOP_AT_STEP"


def journal_path(work_dir: Path, attempt: int) -> Path:
    return work_dir / f"events-{attempt}.jsonl"


class Journal:
    """Thread-safe JSON-lines appender; each line is flushed to the OS before `emit` returns, so a
    killed worker loses nothing it reported."""

    def __init__(self, path: Path):
        self._file = open(path, "a", buffering=1, encoding="utf-8")  # noqa: SIM115 - open for the process' life
        self._lock = threading.Lock()

    def emit(self, kind: str, data: dict, step: int = 0) -> None:
        line = json.dumps({"kind": kind, "time": time.time(), "step": step, "data": data}, ensure_ascii=False)
        with self._lock:
            self._file.write(line + "\n")
            self._file.flush()


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="services.trainer.worker")
    parser.add_argument("spec", type=Path)
    parser.add_argument("--attempt", type=int, default=1)
    args = parser.parse_args(sys.argv[1:] if argv is None else argv)
    work_dir = args.spec.parent
    journal = Journal(journal_path(work_dir, args.attempt))
    stop = threading.Event()
    signal.signal(signal.SIGTERM, lambda *_: stop.set())
    code = _run(args.spec, args.attempt, journal, stop)
    journal.emit("exit", {"code": code})
    return code


def _run(spec_path: Path, attempt: int, journal: Journal, stop: threading.Event) -> int:
    from services.common.errors import LmforgeError
    from services.common.logging import configure_logging

    configure_logging()
    try:
        # Imported here, not at the top: the job manager imports this module for its constants, and the
        # server must not load torch.
        import torch

        from services.common.store import CheckpointStore
        from services.trainer import methods
        from services.trainer.training.context import Cancelled, RecipeContext

        spec = methods.load_spec(spec_path.read_text(encoding="utf-8"))
        device = "cuda" if torch.cuda.is_available() else "cpu"
        fault_steps = frozenset(int(step) for step in os.environ.get(FAULT_STOP_ENV, "").split(",") if step.strip())
        ctx = RecipeContext(spec=spec, store=CheckpointStore(spec.store_root), emit=journal.emit,
                            should_stop=stop.is_set, work_dir=spec_path.parent, device=device, attempt=attempt,
                            resume_reason=os.environ.get(RESUME_REASON_ENV, ""), fault_stop_steps=fault_steps)
        recipe = methods.load_recipe(spec.method)
        try:
            result_id = recipe.run(ctx)
        except Cancelled:
            return EXIT_STOPPED
        if stop.is_set():
            return EXIT_STOPPED
        journal.emit("result", {"checkpoint_id": result_id})
        return EXIT_OK
    except LmforgeError as exc:
        journal.emit("error", {"code": exc.code, "message": exc.message,
                               "violations": [v.to_dict() for v in exc.violations]})
        print(f"error: {exc.code}: {exc.message}", file=sys.stderr)
        return EXIT_FAILED
    except Exception as exc:  # noqa: BLE001 - everything else is reported, with its traceback in the log
        traceback.print_exc()
        code, message = "INTERNAL", f"{type(exc).__name__}: {exc}"
        if type(exc).__name__ == "OutOfMemoryError":
            code = "RESOURCE_EXHAUSTED"
            message += " (reduce hyperparameters.batch_size or max_seq_length, or use QLoRA)"
        journal.emit("error", {"code": code, "message": message, "violations": []})
        return EXIT_FAILED


if __name__ == "__main__":
    exit_code = main()
    sys.stdout.flush()
    sys.stderr.flush()
    os._exit(exit_code)  # skip interpreter teardown of torch/datasets threads
