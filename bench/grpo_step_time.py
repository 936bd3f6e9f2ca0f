"""GRPO wall time per step through the service vs bare TRL, and the share of a step spent generating.

    python bench/grpo_step_time.py                               # SmolLM2 135M, 10 steps
    python bench/grpo_step_time.py --steps 3                     # a quick check that everything runs
    LMFORGE_HOME=/tmp/dev python bench/grpo_step_time.py --base-model tiny-bench --steps 10

One GRPO job (examples/jobs/grpo.yaml: LoRA r16, 4 completions per prompt, batch 8 = 2 prompts per step,
max_completion_length 32, rule rewards numeric_match + language_consistency + length_penalty; data
examples/data/rl_prompts.jsonl) is run twice, one after the other on this machine:

* bare: `python bench/grpo_step_time.py --bare` in a fresh process with a worker's environment: the
  TrainingSpec the service builds for the same request, then GRPOTrainer with
  methods.grpo.recipe.build_grpo_config, training.online_rl.load_datasets / build_rewards and
  training.adapters.load_base_for_training (the recipe's own functions). Generation time is what TRL's own profiling contexts measure around generation
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
import statistics
import sys
import time
from collections import defaultdict
from pathlib import Path

import harness  # bench/harness.py: servers, bare runs, tables, JSON

REPO = harness.REPO
JOB_FILE = REPO / "examples" / "jobs" / "grpo.yaml"
GENERATION_NAMES = ("transformers.generate", "transformers.generate_batch", "vLLM.generate")


def build_request(base_model: str, dataset_id: str, steps: int) -> dict:
    """examples/jobs/grpo.yaml with the bench's overrides; identical for bare and service runs."""
    request = harness.job_request(JOB_FILE, base_model, dataset_id, steps)
    request["grpo"].setdefault("samples", {})["fraction_of_steps"] = 0.1
    return request


def median_after_first(values: dict[int, float]) -> float | None:
    later = [v for step, v in sorted(values.items()) if step > 1] or list(values.values())
    return statistics.median(later) if later else None


# ------------------------------------------------------------------------------------------------- bare


def run_bare(args: argparse.Namespace) -> int:
    """The child process: plain GRPOTrainer on the service's configuration. Prints one BENCH_RESULT line."""
    work_dir = Path(args.work_dir)
    spec, store = harness.bare_spec(args.store, args.dataset, work_dir, lambda dataset_id: build_request(
        args.base_model, dataset_id, args.steps), args.device)

    import torch
    from transformers import TrainerCallback
    from trl import GRPOTrainer
    from trl.extras import profiling

    from services.trainer.training.adapters import load_base_for_training, resolve_precision
    from services.trainer.training.common import load_tokenizer
    from services.trainer.methods.grpo.recipe import build_grpo_config
    from services.trainer.training.online_rl import build_rewards, load_datasets

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
    method = spec.method_spec
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
    harness.emit_result(result)
    return 0


def bare_once(args: argparse.Namespace, tmp: Path, device: str) -> dict:
    work_dir = tmp / "bare"
    work_dir.mkdir(parents=True)
    command = [sys.executable, str(Path(__file__).resolve()), "--bare", "--work-dir", str(work_dir),
               "--base-model", args.base_model, "--store", str(args.store), "--dataset", str(args.dataset),
               "--steps", str(args.steps), "--device", device]
    return harness.run_child(command, env=harness.worker_env(device), cwd=work_dir, log_path=work_dir / "bare.log",
                             what="bare")


# ---------------------------------------------------------------------------------------------- service


def service_once(args: argparse.Namespace, tmp: Path) -> dict:
    """An in-process trainer: upload, StartTraining with the bare run's request, follow the events."""
    from lmforge.client import TrainerClient

    with harness.trainer_service(tmp / "trainer-home", args.store, in_process=True) as service:
        with TrainerClient(service.address, timeout=120) as client:
            dataset = client.upload_dataset(args.dataset)
            job = client.start_training(build_request(args.base_model, dataset.id, args.steps))
            step_times: dict[int, float] = {}
            rewards: list[float] = []
            samples = 0
            runtime = None
            for event in service.follow(client, job.id):
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
        return {
            "job_id": job.id,
            "train_runtime": runtime,
            "step_time_median_s": median_after_first(step_times),
            "step_times_s": [round(step_times[s], 4) for s in sorted(step_times)],
            "rewards": rewards,
            "rollout_events": samples,
        }


# -------------------------------------------------------------------------------------------------- main


def print_table(result: dict) -> None:
    s, c, f, Note = result["summary"], result["config"], harness.fmt, harness.Note
    harness.print_heading(f"GRPO bench: {c['base_model']}, {c['job_file']}, {c['steps']} steps", result["machine"])
    harness.busy_warning(result["other_cpu_busy"], "the timings are noisy")
    harness.table((34, 10, 10), [
        ("", "bare", "service"),
        ("median wall time per step", f(s["step_time_median_bare_s"], ".3f", " s"),
         f(s["step_time_median_service_s"], ".3f", " s"),
         Note(f"ratio service/bare {f(s['ratio_service_over_bare'], '.3f')}")),
        ("median generation time per step", f(s["generation_time_median_bare_s"], ".3f", " s")),
        ("share of a step spent generating", f(s["generation_share_bare"], ".1%"),
         Note(f"(rollouts: {'vLLM' if s['use_vllm'] else 'transformers generate'})")),
    ])
    print()


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    parser = harness.training_parser(__doc__, dataset="rl_prompts.jsonl", out="grpo_step_time.json")
    parser.add_argument("--steps", type=int, default=10, help="optimizer steps per run")
    # Internal: the bare child process.
    parser.add_argument("--bare", action="store_true", help=argparse.SUPPRESS)
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
    fmt = harness.fmt
    with harness.scratch_dir("lmforge-grpo-bench-", keep=args.keep_tmp) as tmp:
        args.store = harness.ensure_base(args.store, args.base_model, tmp)
        busy.append(harness.cpu_busy())
        print("bare GRPO ...", end=" ", flush=True)
        bare = bare_once(args, tmp, device)
        print(f"{fmt(bare['step_time_median_s'], '.3f', ' s')}/step; service ...", end=" ", flush=True)
        busy.append(harness.cpu_busy())
        service = service_once(args, tmp)
        print(f"{fmt(service['step_time_median_s'], '.3f', ' s')}/step", flush=True)
    summary = {
        "step_time_median_bare_s": bare["step_time_median_s"],
        "step_time_median_service_s": service["step_time_median_s"],
        "ratio_service_over_bare": harness.ratio(service["step_time_median_s"], bare["step_time_median_s"]),
        "generation_time_median_bare_s": bare["generation_time_median_s"],
        "generation_share_bare": bare["generation_share"],
        "use_vllm": bare["use_vllm"],
    }
    result = {
        "benchmark": "grpo_step_time",
        "config": {"base_model": args.base_model, "dataset": str(args.dataset), "steps": args.steps,
                   "job_file": str(JOB_FILE.relative_to(REPO)), "store": str(args.store)},
        "machine": harness.machine(device, bare),
        "other_cpu_busy": busy,
        "summary": summary,
        "runs": {"bare": bare, "service": service},
    }
    print_table(result)
    harness.write_result(args.out, result)
    return 0


if __name__ == "__main__":
    sys.exit(main())
