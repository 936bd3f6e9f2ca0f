"""Trainer service overhead: the demo's LoRA SFT run bare (TRL in a plain process) vs through the service.

    python bench/trainer_throughput.py                                  # SmolLM2 135M, 40 steps, 1 repeat
    python bench/trainer_throughput.py --repeats 3 --packing            # packed sequences, medians of 3
    LMFORGE_HOME=/tmp/dev python bench/trainer_throughput.py --base-model tiny-bench --max-steps 10

Each repeat runs, one after the other on this machine:

* bare:    `python bench/trainer_throughput.py --bare ...` in a fresh process: builds the TrainingSpec the
           service would build for the same request (harness.bare_spec), then SFTTrainer with
           methods.sft.recipe.build_sft_config / load_datasets and training.adapters.load_base_for_training,
           with one tiny callback (wall time of the first on_log, last num_tokens). Prints one
           `BENCH_RESULT {json}` line.
* service: `lmforge-trainer --port 0` with a temporary home and the real store, dataset uploaded with
           TrainerClient, StartTraining with the same request, events followed with stream_metrics.

If the store lacks the SmolLM2 base, it is imported into a temporary store first (harness.ensure_base).

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
import sys  # noqa: E402
from pathlib import Path  # noqa: E402

import harness  # noqa: E402  (bench/harness.py: servers, bare runs, tables, JSON)

REPO = harness.REPO
JOB_FILE = REPO / "examples" / "jobs" / "sft_lora.yaml"


def build_request(base_model: str, dataset_id: str, max_steps: int, packing: bool) -> dict:
    """The demo job (examples/jobs/sft_lora.yaml) with the bench's overrides; identical on both sides."""
    request = harness.job_request(JOB_FILE, base_model, dataset_id, max_steps)
    request["hyperparameters"]["packing"] = packing
    return request


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
    work_dir = Path(args.work_dir)
    spec, store = harness.bare_spec(args.store, args.dataset, work_dir, lambda dataset_id: build_request(
        args.base_model, dataset_id, args.max_steps, args.packing), args.device)

    import torch
    from transformers import AutoTokenizer, TrainerCallback
    from trl import SFTTrainer

    from services.trainer.training.adapters import load_base_for_training, resolve_precision
    from services.trainer.methods.sft.recipe import build_sft_config, load_datasets

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
    step_times = harness.step_times(probe.log_times)  # what the service's step_time metric measures
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
        "step_time_median_s": harness.median(step_times),
        "spec": json.loads(spec.to_json()),
    }
    harness.emit_result(result)
    return 0


def bare_once(args: argparse.Namespace, tmp: Path, index: int, device: str) -> dict:
    work_dir = tmp / f"bare-{index}"
    work_dir.mkdir(parents=True)
    command = [sys.executable, str(Path(__file__).resolve()), "--bare", "--work-dir", str(work_dir),
               "--base-model", args.base_model, "--store", str(args.store), "--dataset", str(args.dataset),
               "--max-steps", str(args.max_steps), "--device", device] + (["--packing"] if args.packing else [])
    launch = time.time()
    return harness.run_child(command + ["--launch-time", repr(launch)], env=harness.worker_env(device),
                             cwd=work_dir, log_path=work_dir / "bare.log", what="bare")


# ---------------------------------------------------------------------------------------------- service


def service_once(args: argparse.Namespace, tmp: Path, index: int) -> dict:
    """`lmforge-trainer` as a subprocess: upload, StartTraining with the bare run's request, follow the events."""
    from lmforge.client import TrainerClient

    with harness.trainer_service(tmp / f"trainer-{index}", args.store, in_process=False) as service:
        with TrainerClient(service.address) as client:
            dataset = client.upload_dataset(args.dataset)
            request = build_request(args.base_model, dataset.id, args.max_steps, args.packing)
            t0 = time.time()
            job = client.start_training(request)
            first_metric = first_metric_emit = None
            latencies: list[float] = []
            step_times: list[float] = []
            num_tokens = runtime = service_tps = None
            for event in service.follow(client, job.id):
                received = time.time()
                if event.WhichOneof("payload") == "metrics":
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
            done = client.get_job(job.id)
        spec_path = service.home / "jobs" / job.id / "spec.json"
        return {
            "job_id": job.id,
            "device": done.device,
            "global_step": done.current_step,
            "num_tokens": num_tokens,
            "train_runtime": runtime,
            "tokens_per_second": num_tokens / runtime if num_tokens and runtime else None,
            "tokens_per_second_reported": service_tps,
            "first_metric_from_start_training": first_metric,
            "first_metric_emitted_from_start_training": first_metric_emit,
            "step_time_median_s": harness.median(step_times),
            "metric_events": len(latencies),
            "delivery_latency_s": latencies,
            "spec": json.loads(spec_path.read_text()) if spec_path.exists() else None,
        }


# ------------------------------------------------------------------------------------------------ report


def summarize(args, device: str, bare_runs: list[dict], service_runs: list[dict], load: dict,
              busy: list[float | None]) -> dict:
    median, percentile = harness.median, harness.percentile
    bare_tps = median(r["tokens_per_second"] for r in bare_runs)
    service_tps = median(r["tokens_per_second"] for r in service_runs)
    ratio = harness.ratio(service_tps, bare_tps)
    latencies = [x for r in service_runs for x in r["delivery_latency_s"]]
    specs_equal = all(r["spec"] is not None and comparable_spec(r["spec"]) == comparable_spec(b["spec"])
                      for b in bare_runs for r in service_runs)
    return {
        "benchmark": "trainer_throughput",
        "config": {"base_model": args.base_model, "dataset": str(args.dataset), "max_steps": args.max_steps,
                   "packing": args.packing, "repeats": args.repeats, "job_file": str(JOB_FILE.relative_to(REPO)),
                   "store": str(args.store)},
        "machine": harness.machine(device, bare_runs[0] if bare_runs else None),
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
    s, c, fmt, Note = result["summary"], result["config"], harness.fmt, harness.Note
    harness.print_heading(f"trainer throughput: {c['base_model']}, LoRA SFT ({c['job_file']}), {c['max_steps']} steps, "
                          f"packing={'on' if c['packing'] else 'off'}, median of {c['repeats']}", result["machine"])
    busy = result["other_cpu_busy"]
    print(f"CPU busy with other processes before each run: {', '.join(f'{b:.0%}' for b in busy if b is not None)}"
          f" (load average before/after: {result['load_average']['before']} / {result['load_average']['after']})")
    if result["busy_machine"]:
        print("WARNING: other processes kept the CPUs busy (> 10% before some run): they compete with training, "
              "so these numbers are noisy; rerun on a quiet machine and/or with --repeats 3")
    print(f"spec identical on both sides: {result['spec_identical']}")
    harness.table((22, 10, 10), [
        ("", "bare", "service"),
        ("tokens/s", fmt(s["tokens_per_second_bare"]), fmt(s["tokens_per_second_service"]),
         Note(f"ratio service/bare {fmt(s['ratio_service_over_bare'], '.3f')} "
              f"(goal >= {s['ratio_goal']}: {'met' if s['ratio_goal_met'] else 'NOT met'})")),
        ("median step time", fmt(s["step_time_median_bare_s"], ".3f", " s"),
         fmt(s["step_time_median_service_s"], ".3f", " s"),
         Note("per optimizer step, steps 2..N (robust to a slow stretch)")),
        ("time to first metric", fmt(s["first_log_bare_s"], ".2f", " s"), fmt(s["first_metric_service_s"], ".2f", " s"),
         Note("bare: launch -> first on_log; service: StartTraining -> first metrics event received "
              f"(emitted at {fmt(s['first_metric_service_emitted_s'], '.2f', ' s')})")),
        ("delivery latency p50", "", fmt(s["delivery_latency_p50_ms"], ".1f", " ms"),
         Note(f"worker emit -> client receive, {s['metric_events']} metrics events")),
        ("delivery latency p99", "", fmt(s["delivery_latency_p99_ms"], ".1f", " ms"),
         Note(f"max {fmt(s['delivery_latency_max_ms'], '.1f', ' ms')}")),
    ])
    print()


# -------------------------------------------------------------------------------------------------- main


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    parser = harness.training_parser(__doc__, dataset="sft_demo.jsonl", out="trainer_throughput.json")
    parser.add_argument("--max-steps", type=int, default=40)
    parser.add_argument("--packing", action="store_true", help="pack sequences (both sides)")
    parser.add_argument("--repeats", type=int, default=1, help="bare/service pairs, run alternately")
    # Internal: the bare child process.
    parser.add_argument("--bare", action="store_true", help=argparse.SUPPRESS)
    parser.add_argument("--launch-time", type=float, default=PROCESS_START, help=argparse.SUPPRESS)
    args = harness.resolve_paths(parser.parse_args(argv))
    if args.repeats < 1 or args.max_steps < 1:
        parser.error("--repeats and --max-steps must be at least 1")
    return args


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    if args.bare:
        return run_bare(args)
    from services.trainer.jobs import detect_devices

    device = detect_devices()[0]  # the slot the service's single job will get
    bare_runs: list[dict] = []
    service_runs: list[dict] = []
    load = {"before": [round(x, 2) for x in os.getloadavg()]}
    busy: list[float | None] = []  # CPU use by others, sampled just before each run
    fmt = harness.fmt
    with harness.scratch_dir("lmforge-bench-", keep=args.keep_tmp) as tmp:
        args.store = harness.ensure_base(args.store, args.base_model, tmp)
        for i in range(args.repeats):
            busy.append(harness.cpu_busy())
            print(f"[{i + 1}/{args.repeats}] bare ...", end=" ", flush=True)
            bare = bare_once(args, tmp, i, device)
            bare_runs.append(bare)
            print(f"{fmt(bare['tokens_per_second'])} tok/s, first log {fmt(bare['first_log_from_launch'], '.2f')} s;"
                  " service ...", end=" ", flush=True)
            busy.append(harness.cpu_busy())
            service = service_once(args, tmp, i)
            service_runs.append(service)
            print(f"{fmt(service['tokens_per_second'])} tok/s, first metric "
                  f"{fmt(service['first_metric_from_start_training'], '.2f')} s", flush=True)
    load["after"] = [round(x, 2) for x in os.getloadavg()]
    result = summarize(args, device, bare_runs, service_runs, load, busy)
    print_table(result)
    harness.write_result(args.out, result)
    return 0


if __name__ == "__main__":
    sys.exit(main())
