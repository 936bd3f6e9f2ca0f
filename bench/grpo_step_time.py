"""GRPO wall time per step through the service vs bare TRL, and the share of a step spent generating.

    python bench/grpo_step_time.py                               # SmolLM2 135M, 10 steps
    python bench/grpo_step_time.py --steps 3                     # a quick check that everything runs
    LMFORGE_HOME=/tmp/dev python bench/grpo_step_time.py --base-model tiny-bench --steps 10

One GRPO job (examples/jobs/grpo.yaml: LoRA r16, 4 completions per prompt, batch 8 = 2 prompts per step,
max_completion_length 32, rule rewards numeric_match + language_consistency + length_penalty; data
examples/data/rl_prompts.jsonl) is run twice, one after the other on this machine:

* bare: `python bench/grpo_step_time.py --bare` in a fresh process with a worker's environment: the
  TrainingSpec the service builds for the same request, then GRPOTrainer with recipes.grpo.build_grpo_config,
  recipes.grpo.load_datasets, recipes.grpo.build_rewards and recipes.adapters.load_base_for_training (the
  recipe's own functions). Generation time is what TRL's own profiling contexts measure around generation
  ("GRPOTrainer.transformers.generate" or "GRPOTrainer.vLLM.generate"): TRL only sends those timings to
  wandb/mlflow/trackio, so the bare run wraps `trl.extras.profiling.ProfilingContext._log_metrics` to
  collect them. Prints one `BENCH_RESULT {json}` line.
* service: an in-process TrainerServer (port 0, temporary home, one slot) and TrainerClient: upload,
  StartTraining with the same request, follow StreamMetrics; per-step wall time is the `step_time` metric.

Step times are medians over steps 2.. (step 1 includes warm-up); the generation share is the bare run's
generation seconds / step seconds over the same steps. If the store lacks the SmolLM2 base, it is imported
into a temporary store (services.common.model_import.import_smollm2). See bench/README.md.
"""

from __future__ import annotations

import argparse
import json
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from collections import defaultdict
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))
sys.path.insert(0, str(Path(__file__).resolve().parent))

import trainer_throughput as shared  # noqa: E402  (worker_env, lmforge_home, machine, cpu_busy, fmt)

JOB_FILE = REPO / "examples" / "jobs" / "grpo.yaml"
RESULT_MARK = "BENCH_RESULT "
SMOLLM2_ID = "smollm2-135m-instruct"
GENERATION_NAMES = ("transformers.generate", "transformers.generate_batch", "vLLM.generate")


def build_request(base_model: str, dataset_id: str, steps: int) -> dict:
    """examples/jobs/grpo.yaml with the bench's overrides; identical for bare and service runs."""
    from lmforge.client import load_request_file

    request = load_request_file(JOB_FILE)
    request["base_model_id"] = base_model
    request["dataset_id"] = dataset_id
    request.setdefault("hyperparameters", {})["max_steps"] = steps
    request["grpo"].setdefault("samples", {})["fraction_of_steps"] = 0.1
    request["checkpoints"] = {"every_steps": 0}  # the bare side writes no checkpoints either
    return request


def median_after_first(values: dict[int, float]) -> float | None:
    later = [v for step, v in sorted(values.items()) if step > 1] or list(values.values())
    return statistics.median(later) if later else None


# ------------------------------------------------------------------------------------------------- bare


def run_bare(args: argparse.Namespace) -> int:
    """The child process: plain GRPOTrainer on the service's configuration. Prints one BENCH_RESULT line."""
    from services.common.logging import configure_logging

    configure_logging()
    import torch
    from transformers import TrainerCallback
    from trl import GRPOTrainer
    from trl.extras import profiling

    from lmforge.client import to_start_training_request
    from services.common.store import CheckpointStore
    from services.trainer import convert
    from services.trainer.data import DatasetFormat, FileFormat, validate_file
    from services.trainer.datasets import DatasetRegistry
    from services.trainer.recipes.adapters import load_base_for_training, resolve_precision
    from services.trainer.recipes.common import load_tokenizer
    from services.trainer.recipes.grpo import build_grpo_config, build_rewards, load_datasets
    from services.trainer.spec import TrainingSpec

    work_dir = Path(args.work_dir)
    work_dir.mkdir(parents=True, exist_ok=True)
    store = CheckpointStore(args.store)
    registry = DatasetRegistry(work_dir / "datasets")
    with open(args.dataset, "rb") as f:
        stored = registry.upload(Path(args.dataset).name, None, iter(lambda: f.read(1 << 20), b""))
    request = to_start_training_request(build_request(args.base_model, stored.id, args.steps))
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
    timings: dict[str, float] = defaultdict(float)  # TRL profiling name -> seconds, for the current step
    original = profiling.ProfilingContext._log_metrics

    def collect(self, duration: float) -> None:
        # "GRPOTrainer.transformers.generate" -> "transformers.generate"
        timings[self.name.split(".", 1)[-1]] += duration
        original(self, duration)

    profiling.ProfilingContext._log_metrics = collect

    class Probe(TrainerCallback):
        def __init__(self):
            self.start = 0.0
            self.step_time: dict[int, float] = {}
            self.generation_time: dict[int, float] = {}
            self.rewards: list[float] = []

        def on_step_begin(self, args, state, control, **kwargs):
            timings.clear()
            self.start = time.perf_counter()

        def on_step_end(self, args, state, control, **kwargs):
            if kwargs.get("model") is not None and device == "cuda":
                torch.cuda.synchronize()
            self.step_time[state.global_step] = time.perf_counter() - self.start
            self.generation_time[state.global_step] = sum(timings.get(n, 0.0) for n in GENERATION_NAMES)

        def on_log(self, args, state, control, logs=None, **kwargs):
            if logs and "reward" in logs:
                self.rewards.append(float(logs["reward"]))

    # The same sequence as recipes/grpo.py `run`, minus the service's callbacks and the final store save.
    base_dir = store.path_of(spec.base_model_id, "base_model_id")
    tokenizer = load_tokenizer(base_dir)
    train_dataset, eval_dataset = load_datasets(spec, str(work_dir / "datasets-cache"), bool(tokenizer.chat_template))
    method = spec.method_config
    reward_funcs, weights = build_rewards(None, method.rewards, store=store, device=device)
    config = build_grpo_config(spec, str(work_dir / "trainer"), device, eval_dataset is not None, weights)
    precision = resolve_precision(spec.hyperparameters, spec.adapter, device)
    model, peft_config = load_base_for_training(base_dir, spec.adapter, precision, device)
    probe = Probe()
    trainer = GRPOTrainer(model=model, reward_funcs=reward_funcs, args=config, train_dataset=train_dataset,
                          eval_dataset=eval_dataset, processing_class=tokenizer, peft_config=peft_config,
                          callbacks=[probe])
    output = trainer.train()
    step = median_after_first(probe.step_time)
    generation = median_after_first(probe.generation_time)
    later = [s for s in probe.step_time if s > 1] or list(probe.step_time)
    share = (sum(probe.generation_time[s] for s in later) / sum(probe.step_time[s] for s in later)) if later else None
    result = {
        "adapter": spec.adapter.type,
        "device": device,
        "device_name": torch.cuda.get_device_name(0) if device == "cuda" else "cpu",
        "torch_threads": torch.get_num_threads(),
        "use_vllm": bool(config.use_vllm),
        "global_step": trainer.state.global_step,
        "train_runtime": float(output.metrics["train_runtime"]),
        "step_time_median_s": step,
        "generation_time_median_s": generation,
        "generation_share": share,
        "step_times_s": [round(probe.step_time[s], 4) for s in sorted(probe.step_time)],
        "generation_times_s": [round(probe.generation_time[s], 4) for s in sorted(probe.generation_time)],
        "rewards": probe.rewards,
    }
    print(RESULT_MARK + json.dumps(result), flush=True)
    return 0


def bare_once(args: argparse.Namespace, tmp: Path, device: str) -> dict:
    work_dir = tmp / "bare"
    work_dir.mkdir(parents=True)
    log_path = work_dir / "bare.log"
    command = [sys.executable, str(Path(__file__).resolve()), "--bare", "--work-dir", str(work_dir),
               "--base-model", args.base_model, "--store", str(args.store), "--dataset", str(args.dataset),
               "--steps", str(args.steps), "--device", device]
    with open(log_path, "wb") as log_file:
        process = subprocess.run(command, env=shared.worker_env(device), cwd=work_dir, stdout=log_file,
                                 stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL, check=False)
    text = log_path.read_text(encoding="utf-8", errors="replace")
    lines = [line for line in text.splitlines() if line.startswith(RESULT_MARK)]
    if process.returncode != 0 or not lines:
        raise RuntimeError(f"bare run failed (exit {process.returncode}); log tail:\n{text[-4000:]}")
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
            job = client.start_training(build_request(args.base_model, dataset.id, args.steps))
            job_id = job.id
            step_times: dict[int, float] = {}
            rewards: list[float] = []
            samples = 0
            runtime = None
            final_state, message = "", ""
            for event in client.stream_metrics(job.id, follow=True):
                kind = event.WhichOneof("payload")
                if kind == "metrics" and event.metrics.phase == "train":
                    values = dict(event.metrics.values)
                    if "train_runtime" in values:
                        runtime = values["train_runtime"]
                    elif "step_time" in values:
                        step_times[event.step] = values["step_time"]
                        if "reward" in values:
                            rewards.append(values["reward"])
                elif kind == "rollouts":
                    samples += 1
                elif kind == "state_change":
                    final_state = job_state_name(event.state_change.state)
                    message = event.state_change.error.message or event.state_change.message
        if final_state != "SUCCEEDED":
            log = home / "jobs" / job_id / "worker.log"
            tail = log.read_text(errors="replace")[-4000:] if log.exists() else ""
            raise RuntimeError(f"service job {job_id} ended {final_state or '?'}: {message}\n{tail}")
        return {
            "job_id": job_id,
            "train_runtime": runtime,
            "step_time_median_s": median_after_first(step_times),
            "step_times_s": [round(step_times[s], 4) for s in sorted(step_times)],
            "rewards": rewards,
            "rollout_events": samples,
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
    f = shared.fmt
    print()
    print(f"GRPO bench: {c['base_model']}, {c['job_file']}, {c['steps']} steps")
    print(f"machine: {m['cpu_count']} CPUs ({m['cpu_model']}), device {m['device']} {m['device_name']}, "
          f"torch {m['torch']}, transformers {m['transformers']}, trl {m['trl']}")
    busy = [b for b in result["other_cpu_busy"] if b is not None]
    if busy and max(busy) > 0.10:
        print(f"WARNING: other processes kept the CPUs busy ({', '.join(f'{b:.0%}' for b in busy)} before the "
              "runs): the timings are noisy; rerun on a quiet machine")
    print(f"{'':34} {'bare':>10} {'service':>10}")
    print(f"{'median wall time per step':34} {f(s['step_time_median_bare_s'], '.3f', ' s'):>10} "
          f"{f(s['step_time_median_service_s'], '.3f', ' s'):>10}   ratio service/bare "
          f"{f(s['ratio_service_over_bare'], '.3f')}")
    print(f"{'median generation time per step':34} {f(s['generation_time_median_bare_s'], '.3f', ' s'):>10}")
    print(f"{'share of a step spent generating':34} {f(s['generation_share_bare'], '.1%'):>10}   "
          f"(rollouts: {'vLLM' if s['use_vllm'] else 'transformers generate'})")
    print()


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--base-model", default=SMOLLM2_ID, help="store id of the base model")
    parser.add_argument("--store", type=Path, default=None,
                        help="checkpoint store (default $LMFORGE_HOME/store, or .lmforge/store)")
    parser.add_argument("--dataset", type=Path, default=REPO / "examples" / "data" / "rl_prompts.jsonl")
    parser.add_argument("--steps", type=int, default=10, help="optimizer steps per run")
    parser.add_argument("--out", type=Path, default=REPO / "bench" / "results" / "grpo_step_time.json")
    parser.add_argument("--keep-tmp", action="store_true", help="keep the scratch directory (logs, job home)")
    # Internal: the bare child process.
    parser.add_argument("--bare", action="store_true", help=argparse.SUPPRESS)
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
    tmp = Path(tempfile.mkdtemp(prefix="lmforge-grpo-bench-"))
    busy: list[float | None] = []
    try:
        ensure_base(args, tmp)
        busy.append(shared.cpu_busy())
        print("bare GRPO ...", end=" ", flush=True)
        bare = bare_once(args, tmp, device)
        print(f"{shared.fmt(bare['step_time_median_s'], '.3f', ' s')}/step; service ...", end=" ", flush=True)
        busy.append(shared.cpu_busy())
        service = service_once(args, tmp)
        print(f"{shared.fmt(service['step_time_median_s'], '.3f', ' s')}/step", flush=True)
    finally:
        if args.keep_tmp:
            print(f"scratch kept in {tmp}")
        else:
            shutil.rmtree(tmp, ignore_errors=True)
    summary = {
        "step_time_median_bare_s": bare["step_time_median_s"],
        "step_time_median_service_s": service["step_time_median_s"],
        "ratio_service_over_bare": ratio(service["step_time_median_s"], bare["step_time_median_s"]),
        "generation_time_median_bare_s": bare["generation_time_median_s"],
        "generation_share_bare": bare["generation_share"],
        "use_vllm": bare["use_vllm"],
    }
    result = {
        "benchmark": "grpo_step_time",
        "config": {"base_model": args.base_model, "dataset": str(args.dataset), "steps": args.steps,
                   "job_file": str(JOB_FILE.relative_to(REPO)), "store": str(args.store)},
        "machine": shared.machine(device, bare),
        "other_cpu_busy": busy,
        "summary": summary,
        "runs": {"bare": bare, "service": service},
    }
    print_table(result)
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(result, indent=2) + "\n", encoding="utf-8")
    print(f"wrote {args.out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
