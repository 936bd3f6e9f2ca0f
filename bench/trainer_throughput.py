"""Trainer service overhead: the demo's LoRA SFT run bare (TRL in a plain process) vs through the service.

    python bench/trainer_throughput.py                                  # SmolLM2 135M, 40 steps, 1 repeat
    python bench/trainer_throughput.py --repeats 3 --packing            # packed sequences, medians of 3
    LMFORGE_HOME=/tmp/dev python bench/trainer_throughput.py --base-model tiny-bench --max-steps 10

Each repeat runs, one after the other on this machine:

* bare:    `python bench/trainer_throughput.py --bare ...` in a fresh process: builds the TrainingSpec the
           service would build for the same request (convert.spec_from_request + the same format detection),
           then SFTTrainer with recipes.sft.build_sft_config / load_datasets and
           recipes.adapters.load_base_for_training, with one tiny callback (wall time of the first on_log,
           last num_tokens). Prints one `BENCH_RESULT {json}` line.
* service: `lmforge-trainer --port 0` with a temporary home and the real store, dataset uploaded with
           TrainerClient, StartTraining with the same request, events followed with stream_metrics.

Reports medians of tokens/s (bare, service, ratio service/bare; goal >= 0.98), time to the first metrics
event (service, from StartTraining) vs time to the first log line (bare, from process launch), and the
delivery latency of metrics events (client receive time - the event's `time`, stamped by the worker at emit).
See bench/README.md. Writes the full results as JSON (--out).
"""

from __future__ import annotations

import time

PROCESS_START = time.time()  # before any heavy import: the bare run's own start

import argparse  # noqa: E402
import json  # noqa: E402
import os  # noqa: E402
import platform  # noqa: E402
import shutil  # noqa: E402
import signal  # noqa: E402
import statistics  # noqa: E402
import subprocess  # noqa: E402
import sys  # noqa: E402
import tempfile  # noqa: E402
from importlib import metadata  # noqa: E402
from pathlib import Path  # noqa: E402

REPO = Path(__file__).resolve().parent.parent
JOB_FILE = REPO / "examples" / "jobs" / "sft_lora.yaml"
RESULT_MARK = "BENCH_RESULT "
TERMINAL = {"SUCCEEDED", "FAILED", "CANCELLED"}


def lmforge_home() -> Path:
    return Path(os.environ.get("LMFORGE_HOME", ".lmforge"))


def build_request(base_model: str, dataset_id: str, max_steps: int, packing: bool) -> dict:
    """The demo job (examples/jobs/sft_lora.yaml) with the bench's overrides; identical on both sides."""
    from lmforge.client import load_request_file

    request = load_request_file(JOB_FILE)
    request["base_model_id"] = base_model
    request["dataset_id"] = dataset_id
    hyper = request.setdefault("hyperparameters", {})
    hyper["max_steps"] = max_steps
    hyper["packing"] = packing
    # No periodic store checkpoints: the bare run writes none either (the final save comes after train_runtime).
    request["checkpoints"] = {"every_steps": 0}
    return request


def worker_env(device: str) -> dict:
    """The environment the job manager gives a worker (services/trainer/jobs.py `_launch`)."""
    return {**os.environ, "HF_HUB_OFFLINE": "1", "HF_DATASETS_OFFLINE": "1", "TOKENIZERS_PARALLELISM": "false",
            "PYTHONUNBUFFERED": "1",
            "CUDA_VISIBLE_DEVICES": device.split(":")[1] if device.startswith("cuda:") else ""}


def comparable_spec(spec: dict) -> dict:
    """A spec without what differs by construction (ids, the dataset's stored path)."""
    spec = json.loads(json.dumps(spec))
    spec.pop("job_id", None)
    for key in ("dataset", "eval_dataset"):
        if spec.get(key):
            spec[key].pop("path", None)
    return spec


# ------------------------------------------------------------------------------------------------- bare


def run_bare(args: argparse.Namespace) -> int:
    """The child process: plain TRL on the service's configuration. Prints one BENCH_RESULT line."""
    from services.common.logging import configure_logging

    configure_logging()  # as the worker does
    from lmforge.client import to_start_training_request
    from services.common.store import CheckpointStore
    from services.trainer import convert
    from services.trainer.data import DatasetFormat, FileFormat, validate_file
    from services.trainer.datasets import DatasetRegistry
    from services.trainer.spec import TrainingSpec

    work_dir = Path(args.work_dir)
    work_dir.mkdir(parents=True, exist_ok=True)
    store = CheckpointStore(args.store)
    registry = DatasetRegistry(work_dir / "datasets")
    dataset_path = Path(args.dataset)
    with open(dataset_path, "rb") as f:
        stored = registry.upload(dataset_path.name, None, iter(lambda: f.read(1 << 20), b""))
    request = to_start_training_request(build_request(args.base_model, stored.id, args.max_steps, args.packing))
    # What the servicer + job manager do: spec from the request, then format detection at validation.
    spec = convert.spec_from_request(request, store, registry, gpu=args.device != "cpu")
    spec.job_id = "bench-bare"
    spec.store_root = str(store.root)
    check = validate_file(Path(spec.dataset.path), FileFormat(spec.dataset.file_format), spec.method,
                          DatasetFormat(spec.method_config.format))
    if not check.ok:
        raise SystemExit(f"dataset has {check.bad_rows} invalid rows")
    spec.dataset.format = check.format.value
    spec = TrainingSpec.from_json(spec.to_json())  # exactly what a worker reads from spec.json

    import torch
    from transformers import AutoTokenizer, TrainerCallback
    from trl import SFTTrainer

    from services.trainer.recipes.adapters import load_base_for_training, resolve_precision
    from services.trainer.recipes.sft import build_sft_config, load_datasets

    device = "cuda" if torch.cuda.is_available() else "cpu"

    class FirstLog(TrainerCallback):
        def __init__(self):
            self.first_log_time: float | None = None
            self.num_tokens: float | None = None
            self.log_times: list[tuple[int, float]] = []  # (step, perf_counter) of each train log

        def on_log(self, args, state, control, logs=None, **kwargs):
            if self.first_log_time is None:
                self.first_log_time = time.time()
            if logs and "num_tokens" in logs and "train_runtime" not in logs:
                self.num_tokens = float(logs["num_tokens"])
                self.log_times.append((state.global_step, time.perf_counter()))

    # The same sequence as recipes/sft.py `run`, minus the service's callbacks and the final store save.
    base_dir = store.path_of(spec.base_model_id, "base_model_id")
    tokenizer = AutoTokenizer.from_pretrained(base_dir)
    if tokenizer.pad_token is None:
        tokenizer.pad_token = tokenizer.eos_token
    train_dataset, eval_dataset = load_datasets(spec, str(work_dir / "datasets-cache"))
    precision = resolve_precision(spec.hyperparameters, spec.adapter, device)
    model, peft_config = load_base_for_training(base_dir, spec.adapter, precision, device)
    config = build_sft_config(spec, str(work_dir / "trainer"), device, eval_dataset is not None)
    probe = FirstLog()
    trainer = SFTTrainer(model=model, args=config, train_dataset=train_dataset, eval_dataset=eval_dataset,
                         processing_class=tokenizer, peft_config=peft_config, callbacks=[probe])
    output = trainer.train()
    runtime = float(output.metrics["train_runtime"])
    # Seconds per optimizer step between consecutive logs (what the service's step_time metric measures);
    # the first log has no predecessor (the service measures it from on_train_begin), so it is left out.
    step_times = [(t1 - t0) / (s1 - s0) for (s0, t0), (s1, t1) in zip(probe.log_times, probe.log_times[1:])
                  if s1 > s0]
    result = {
        "device": device,
        "device_name": torch.cuda.get_device_name(0) if device == "cuda" else platform.processor() or "cpu",
        "torch_threads": torch.get_num_threads(),
        "global_step": trainer.state.global_step,
        "num_tokens": probe.num_tokens,
        "train_runtime": runtime,
        "tokens_per_second": probe.num_tokens / runtime if probe.num_tokens else None,
        "first_log_from_launch": probe.first_log_time - args.launch_time if probe.first_log_time else None,
        "first_log_from_process_start": probe.first_log_time - PROCESS_START if probe.first_log_time else None,
        "step_time_median_s": statistics.median(step_times) if step_times else None,
        "spec": json.loads(spec.to_json()),
    }
    print(RESULT_MARK + json.dumps(result), flush=True)
    return 0


def bare_once(args: argparse.Namespace, tmp: Path, index: int, device: str) -> dict:
    work_dir = tmp / f"bare-{index}"
    work_dir.mkdir(parents=True)
    log_path = work_dir / "bare.log"
    command = [sys.executable, str(Path(__file__).resolve()), "--bare", "--work-dir", str(work_dir),
               "--base-model", args.base_model, "--store", str(args.store), "--dataset", str(args.dataset),
               "--max-steps", str(args.max_steps), "--device", device]
    if args.packing:
        command.append("--packing")
    with open(log_path, "wb") as log_file:
        launch = time.time()
        process = subprocess.run(command + ["--launch-time", repr(launch)], env=worker_env(device), cwd=work_dir,
                                 stdout=log_file, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL, check=False)
    text = log_path.read_text(encoding="utf-8", errors="replace")
    lines = [line for line in text.splitlines() if line.startswith(RESULT_MARK)]
    if process.returncode != 0 or not lines:
        raise RuntimeError(f"bare run failed (exit {process.returncode}); log tail:\n{text[-4000:]}")
    return json.loads(lines[-1][len(RESULT_MARK):])


# ---------------------------------------------------------------------------------------------- service


def start_server(tmp: Path, store: Path, index: int) -> tuple[subprocess.Popen, str, Path]:
    home = tmp / f"trainer-{index}"
    home.mkdir(parents=True)
    out_path, err_path = home / "server.out", home / "server.err"
    script = Path(sys.executable).parent / "lmforge-trainer"
    command = [str(script)] if script.exists() else [sys.executable, "-m", "services.trainer.server"]
    env = {k: v for k, v in os.environ.items() if k not in ("LMFORGE_TRAINER_PORT", "LMFORGE_STORE")}
    with open(out_path, "wb") as out, open(err_path, "wb") as err:
        process = subprocess.Popen(command + ["--port", "0", "--home", str(home), "--store", str(store)],
                                   env=env, stdout=out, stderr=err, stdin=subprocess.DEVNULL)
    deadline = time.time() + 120
    while time.time() < deadline:
        for line in out_path.read_text(encoding="utf-8", errors="replace").splitlines():
            if line.startswith("lmforge-trainer listening on "):
                return process, line.rsplit(" ", 1)[1], home
        if process.poll() is not None:
            break
        time.sleep(0.05)
    stop_server(process)
    raise RuntimeError(f"lmforge-trainer did not start; stderr:\n{err_path.read_text()[-4000:]}")


def stop_server(process: subprocess.Popen) -> None:
    if process.poll() is None:
        process.send_signal(signal.SIGTERM)
        try:
            process.wait(timeout=30)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait()


def service_once(args: argparse.Namespace, tmp: Path, index: int) -> dict:
    from lmforge.client import TrainerClient, job_state_name

    process, address, home = start_server(tmp, args.store, index)
    job_id = ""
    try:
        with TrainerClient(address) as client:
            dataset = client.upload_dataset(args.dataset)
            request = build_request(args.base_model, dataset.id, args.max_steps, args.packing)
            t0 = time.time()
            job = client.start_training(request)
            job_id = job.id
            first_metric = first_metric_emit = None
            latencies: list[float] = []
            step_times: list[float] = []
            num_tokens = runtime = service_tps = None
            final_state, message = "", ""
            for event in client.stream_metrics(job.id):
                received = time.time()
                kind = event.WhichOneof("payload")
                if kind == "metrics":
                    emitted = event.time.ToNanoseconds() / 1e9
                    latencies.append(received - emitted)
                    if first_metric is None:
                        first_metric, first_metric_emit = received - t0, emitted - t0
                    values = dict(event.metrics.values)
                    if "train_runtime" in values:
                        runtime = values["train_runtime"]
                        service_tps = values.get("tokens_per_second")
                    elif event.metrics.phase == "train" and "num_tokens" in values:
                        num_tokens = values["num_tokens"]
                        if "step_time" in values and event.step > 1:  # same steps as the bare side's
                            step_times.append(values["step_time"])
                elif kind == "state_change":
                    final_state = job_state_name(event.state_change.state)
                    message = event.state_change.error.message or event.state_change.message
            done = client.get_job(job.id)
        if final_state != "SUCCEEDED":
            log = home / "jobs" / job_id / "worker.log"
            tail = log.read_text(errors="replace")[-4000:] if log.exists() else ""
            raise RuntimeError(f"service job {job_id} ended {final_state or '?'}: {message}\n{tail}")
        spec_path = home / "jobs" / job_id / "spec.json"
        return {
            "job_id": job_id,
            "device": done.device,
            "global_step": done.current_step,
            "num_tokens": num_tokens,
            "train_runtime": runtime,
            "tokens_per_second": num_tokens / runtime if num_tokens and runtime else None,
            "tokens_per_second_reported": service_tps,
            "first_metric_from_start_training": first_metric,
            "first_metric_emitted_from_start_training": first_metric_emit,
            "step_time_median_s": statistics.median(step_times) if step_times else None,
            "metric_events": len(latencies),
            "delivery_latency_s": latencies,
            "spec": json.loads(spec_path.read_text()) if spec_path.exists() else None,
        }
    finally:
        stop_server(process)
        if job_id:  # bench artefacts: the final adapter (and any step checkpoints) this job wrote to the store
            for entry in (Path(args.store) / "adapters").glob(f"{job_id}-*"):
                shutil.rmtree(entry, ignore_errors=True)


# ------------------------------------------------------------------------------------------------ report


def percentile(values: list[float], q: float) -> float | None:
    """Linear interpolation between closest ranks (numpy's default)."""
    if not values:
        return None
    ordered = sorted(values)
    pos = (len(ordered) - 1) * q / 100
    low = int(pos)
    high = min(low + 1, len(ordered) - 1)
    return ordered[low] + (ordered[high] - ordered[low]) * (pos - low)


def median(values) -> float | None:
    values = [v for v in values if v is not None]
    return statistics.median(values) if values else None


def version(package: str) -> str:
    try:
        return metadata.version(package)
    except metadata.PackageNotFoundError:
        return "-"


def machine(device: str, bare: dict | None) -> dict:
    cpu_model = ""
    try:
        cpu_model = next(line.split(":", 1)[1].strip() for line in Path("/proc/cpuinfo").read_text().splitlines()
                         if line.startswith("model name"))
    except (OSError, StopIteration):
        cpu_model = platform.processor()
    return {
        "hostname": platform.node(),
        "platform": platform.platform(),
        "python": platform.python_version(),
        "cpu_count": os.cpu_count(),
        "cpu_affinity": len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count(),
        "cpu_model": cpu_model,
        "device": device,
        "device_name": (bare or {}).get("device_name", ""),
        "torch_threads": (bare or {}).get("torch_threads"),
        "torch": version("torch"),
        "transformers": version("transformers"),
        "trl": version("trl"),
        "peft": version("peft"),
        "grpcio": version("grpcio"),
    }


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


def fmt(value, spec: str = ".1f", suffix: str = "") -> str:
    return "-" if value is None else f"{value:{spec}}{suffix}"


def summarize(args, device: str, bare_runs: list[dict], service_runs: list[dict], load: dict,
              busy: list[float | None]) -> dict:
    bare_tps = median(r["tokens_per_second"] for r in bare_runs)
    service_tps = median(r["tokens_per_second"] for r in service_runs)
    ratio = service_tps / bare_tps if bare_tps and service_tps else None
    latencies = [x for r in service_runs for x in r["delivery_latency_s"]]
    specs_equal = all(r["spec"] is not None and comparable_spec(r["spec"]) == comparable_spec(b["spec"])
                      for b in bare_runs for r in service_runs)
    return {
        "benchmark": "trainer_throughput",
        "config": {"base_model": args.base_model, "dataset": str(args.dataset), "max_steps": args.max_steps,
                   "packing": args.packing, "repeats": args.repeats, "job_file": str(JOB_FILE.relative_to(REPO)),
                   "store": str(args.store)},
        "machine": machine(device, bare_runs[0] if bare_runs else None),
        "load_average": load,
        "other_cpu_busy": busy,
        "busy_machine": any(b is not None and b > 0.10 for b in busy),
        "spec_identical": specs_equal,
        "summary": {
            "tokens_per_second_bare": bare_tps,
            "tokens_per_second_service": service_tps,
            "ratio_service_over_bare": ratio,
            "ratio_goal": 0.98,
            "ratio_goal_met": ratio is not None and ratio >= 0.98,
            "step_time_median_bare_s": median(r["step_time_median_s"] for r in bare_runs),
            "step_time_median_service_s": median(r["step_time_median_s"] for r in service_runs),
            "first_log_bare_s": median(r["first_log_from_launch"] for r in bare_runs),
            "first_metric_service_s": median(r["first_metric_from_start_training"] for r in service_runs),
            "first_metric_service_emitted_s": median(r["first_metric_emitted_from_start_training"]
                                                     for r in service_runs),
            "delivery_latency_p50_ms": None if not latencies else percentile(latencies, 50) * 1000,
            "delivery_latency_p99_ms": None if not latencies else percentile(latencies, 99) * 1000,
            "delivery_latency_max_ms": None if not latencies else max(latencies) * 1000,
            "metric_events": len(latencies),
        },
        "runs": {"bare": [{k: v for k, v in r.items() if k != "spec"} for r in bare_runs],
                 "service": [{k: v for k, v in r.items() if k != "spec"} for r in service_runs]},
    }


def print_table(result: dict) -> None:
    s, m, c = result["summary"], result["machine"], result["config"]
    print()
    print(f"trainer throughput: {c['base_model']}, LoRA SFT ({c['job_file']}), {c['max_steps']} steps, "
          f"packing={'on' if c['packing'] else 'off'}, median of {c['repeats']}")
    print(f"machine: {m['cpu_count']} CPUs ({m['cpu_model']}), device {m['device']} {m['device_name']}, "
          f"torch {m['torch']}, transformers {m['transformers']}, trl {m['trl']}")
    busy = result["other_cpu_busy"]
    print(f"CPU busy with other processes before each run: {', '.join(f'{b:.0%}' for b in busy if b is not None)}"
          f" (load average before/after: {result['load_average']['before']} / {result['load_average']['after']})")
    if result["busy_machine"]:
        print("WARNING: other processes kept the CPUs busy (> 10% before some run): they compete with training, "
              "so these numbers are noisy; rerun on a quiet machine and/or with --repeats 3")
    print(f"spec identical on both sides: {result['spec_identical']}")
    rows = [
        ("tokens/s", fmt(s["tokens_per_second_bare"]), fmt(s["tokens_per_second_service"]),
         f"ratio service/bare {fmt(s['ratio_service_over_bare'], '.3f')} "
         f"(goal >= {s['ratio_goal']}: {'met' if s['ratio_goal_met'] else 'NOT met'})"),
        ("median step time", fmt(s["step_time_median_bare_s"], ".3f", " s"),
         fmt(s["step_time_median_service_s"], ".3f", " s"), "per optimizer step, steps 2..N (robust to a slow stretch)"),
        ("time to first metric", fmt(s["first_log_bare_s"], ".2f", " s"), fmt(s["first_metric_service_s"], ".2f", " s"),
         "bare: launch -> first on_log; service: StartTraining -> first metrics event received "
         f"(emitted at {fmt(s['first_metric_service_emitted_s'], '.2f', ' s')})"),
        ("delivery latency p50", "", fmt(s["delivery_latency_p50_ms"], ".1f", " ms"),
         f"worker emit -> client receive, {s['metric_events']} metrics events"),
        ("delivery latency p99", "", fmt(s["delivery_latency_p99_ms"], ".1f", " ms"),
         f"max {fmt(s['delivery_latency_max_ms'], '.1f', ' ms')}"),
    ]
    print(f"{'':22} {'bare':>10} {'service':>10}")
    for name, bare, service, note in rows:
        print(f"{name:22} {bare:>10} {service:>10}   {note}")
    print()


# -------------------------------------------------------------------------------------------------- main


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--base-model", default="smollm2-135m-instruct", help="store id of the base model")
    parser.add_argument("--store", type=Path, default=None,
                        help="checkpoint store (default $LMFORGE_HOME/store, or .lmforge/store)")
    parser.add_argument("--dataset", type=Path, default=REPO / "examples" / "data" / "sft_demo.jsonl")
    parser.add_argument("--max-steps", type=int, default=40)
    parser.add_argument("--packing", action="store_true", help="pack sequences (both sides)")
    parser.add_argument("--repeats", type=int, default=1, help="bare/service pairs, run alternately")
    parser.add_argument("--out", type=Path, default=REPO / "bench" / "results" / "trainer_throughput.json")
    parser.add_argument("--keep-tmp", action="store_true", help="keep the scratch directory (logs, job homes)")
    # Internal: the bare child process.
    parser.add_argument("--bare", action="store_true", help=argparse.SUPPRESS)
    parser.add_argument("--launch-time", type=float, default=PROCESS_START, help=argparse.SUPPRESS)
    parser.add_argument("--work-dir", default="", help=argparse.SUPPRESS)
    parser.add_argument("--device", default="cpu", help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.repeats < 1 or args.max_steps < 1:
        parser.error("--repeats and --max-steps must be at least 1")
    args.store = (args.store or lmforge_home() / "store").resolve()
    args.dataset = args.dataset.resolve()
    return args


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    if args.bare:
        return run_bare(args)
    if not (args.store / "models" / args.base_model).is_dir():
        print(f"error: no model {args.base_model!r} in the store {args.store} (set --store or LMFORGE_HOME)",
              file=sys.stderr)
        return 2
    from services.trainer.jobs import detect_devices

    device = detect_devices()[0]  # the slot the service's single job will get
    tmp = Path(tempfile.mkdtemp(prefix="lmforge-bench-"))
    bare_runs: list[dict] = []
    service_runs: list[dict] = []
    load = {"before": [round(x, 2) for x in os.getloadavg()]}
    busy: list[float | None] = []  # CPU use by others, sampled just before each run
    try:
        for i in range(args.repeats):
            busy.append(cpu_busy())
            print(f"[{i + 1}/{args.repeats}] bare ...", end=" ", flush=True)
            bare = bare_once(args, tmp, i, device)
            bare_runs.append(bare)
            print(f"{fmt(bare['tokens_per_second'])} tok/s, first log {fmt(bare['first_log_from_launch'], '.2f')} s;"
                  " service ...", end=" ", flush=True)
            busy.append(cpu_busy())
            service = service_once(args, tmp, i)
            service_runs.append(service)
            print(f"{fmt(service['tokens_per_second'])} tok/s, first metric "
                  f"{fmt(service['first_metric_from_start_training'], '.2f')} s", flush=True)
    finally:
        if args.keep_tmp:
            print(f"scratch kept in {tmp}")
        else:
            shutil.rmtree(tmp, ignore_errors=True)
    load["after"] = [round(x, 2) for x in os.getloadavg()]
    result = summarize(args, device, bare_runs, service_runs, load, busy)
    print_table(result)
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(result, indent=2) + "\n", encoding="utf-8")
    print(f"wrote {args.out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
