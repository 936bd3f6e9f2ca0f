"""The training worker: one OS process per job, started by the job manager.

    python -m services.trainer.worker <spec.json>      (with LMFORGE_EVENT_FD set by the manager)

Events go to the server as JSON lines on a dedicated pipe (file descriptor LMFORGE_EVENT_FD), never on
stdout/stderr: those are the job's log file, where libraries print what they like. One line is
`{"kind", "time", "step", "data"}`; kinds are metrics / checkpoint / log, plus "error" (why the job
failed, sent just before exiting). Exit codes: 0 succeeded, 1 failed, 3 cancelled.

SIGTERM asks the job to stop at the next step boundary (the manager escalates to SIGKILL after a grace
period). If the server dies, the worker notices (its parent changes, or the pipe breaks) and exits, so
no orphan keeps a GPU busy.
"""

from __future__ import annotations

import json
import os
import signal
import sys
import threading
import time
import traceback
from pathlib import Path

EXIT_OK, EXIT_FAILED, EXIT_CANCELLED = 0, 1, 3
EVENT_FD_ENV = "LMFORGE_EVENT_FD"


class EventPipe:
    """Thread-safe JSON-lines writer; a broken pipe means the server is gone, so the worker exits."""

    def __init__(self, fd: int):
        self._file = os.fdopen(fd, "w", buffering=1, encoding="utf-8")
        self._lock = threading.Lock()

    def emit(self, kind: str, data: dict, step: int = 0) -> None:
        line = json.dumps({"kind": kind, "time": time.time(), "step": step, "data": data}, ensure_ascii=False)
        with self._lock:
            try:
                self._file.write(line + "\n")
            except (BrokenPipeError, OSError):
                os._exit(EXIT_FAILED)


def _watch_parent(parent_pid: int) -> None:
    while True:
        if os.getppid() != parent_pid:
            os._exit(EXIT_FAILED)
        time.sleep(1.0)


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    parent_pid = os.getppid()
    threading.Thread(target=_watch_parent, args=(parent_pid,), daemon=True, name="parent-watch").start()
    pipe = EventPipe(int(os.environ[EVENT_FD_ENV]))
    stop = threading.Event()
    signal.signal(signal.SIGTERM, lambda *_: stop.set())
    spec_path = Path(argv[0])

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
        ctx = RecipeContext(spec=spec, store=CheckpointStore(spec.store_root), emit=pipe.emit,
                            should_stop=stop.is_set, work_dir=spec_path.parent, device=device)
        recipe = methods.load_recipe(spec.method)
        try:
            result_id = recipe.run(ctx)
        except Cancelled:
            return EXIT_CANCELLED
        if stop.is_set():
            return EXIT_CANCELLED
        pipe.emit("result", {"checkpoint_id": result_id})
        return EXIT_OK
    except LmforgeError as exc:
        pipe.emit("error", {"code": exc.code, "message": exc.message,
                            "violations": [v.to_dict() for v in exc.violations]})
        print(f"error: {exc.code}: {exc.message}", file=sys.stderr)
        return EXIT_FAILED
    except Exception as exc:  # noqa: BLE001 - everything else is reported, with its traceback in the log
        traceback.print_exc()
        code, message = "INTERNAL", f"{type(exc).__name__}: {exc}"
        if type(exc).__name__ == "OutOfMemoryError":
            code = "RESOURCE_EXHAUSTED"
            message += " (reduce hyperparameters.batch_size or max_seq_length, or use QLoRA)"
        pipe.emit("error", {"code": code, "message": message, "violations": []})
        return EXIT_FAILED


if __name__ == "__main__":
    code = main()
    sys.stdout.flush()
    sys.stderr.flush()
    os._exit(code)  # skip interpreter teardown of torch/datasets threads
