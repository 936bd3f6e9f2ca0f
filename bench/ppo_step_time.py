"""Actor-critic PPO vs RLOO on the same job: wall time per step, and the memory of PPO's four models.

    python bench/ppo_step_time.py                                  # SmolLM2 135M, 8 steps each
    python bench/ppo_step_time.py --steps 3                        # a quick check that everything runs
    LMFORGE_HOME=/tmp/dev python bench/ppo_step_time.py --base-model tiny-bench --steps 6

The job is examples/jobs/ppo.yaml (LoRA r16, batch 8 rollouts per step, max_completion_length 32, the reward
model plus the length rule at weight 0.5, data examples/data/rl_prompts.jsonl) with num_generations 4 for
both algorithms (RLOO needs a group: 2 prompts x 4 completions per step either way), and the actor-critic
fields dropped for RLOO (`ppo.algorithm` RLOO refuses them). The reward model is --reward-model, or else an
untrained one-score classifier on the base, written to the store for the run and removed afterwards (it
only has to score).

Each algorithm runs bare, one after the other, in its own fresh child process with a worker's environment:
the TrainingSpec the service builds for the request (harness.bare_spec), then the `ppo` recipe's `run(ctx)`
exactly as a worker runs it, with a context that collects its events instead of a server. Step time: the
`step_time` metric, median over steps 2..N (step 1 warms up). Memory: the actor-critic child records
`methods.ppo.models.memory_report` (parameters, trained parameters and MiB of weights of the actor, the
reference, the reward model and the critic) and `memory/optimizers_mib`; every child reports its RSS after
the imports (before any model is loaded) and its peak RSS (ru_maxrss). See bench/README.md.
"""

from __future__ import annotations

import argparse
import resource
import statistics
import sys
import time
from pathlib import Path

import harness  # bench/harness.py: base model, bare runs, tables, JSON

REPO = harness.REPO
JOB_FILE = REPO / "examples" / "jobs" / "ppo.yaml"
ALGORITHMS = ("actor_critic", "rloo")
ACTOR_CRITIC_ONLY = ("kl_control", "kl_target", "kl_horizon", "gamma", "lam", "cliprange", "cliprange_value",
                     "vf_coef", "ppo_epochs", "num_mini_batches", "whiten_advantages", "critic_init",
                     "critic_adapter", "critic_learning_rate")


def build_request(algorithm: str, base_model: str, dataset_id: str, steps: int, reward_model: str) -> dict:
    """examples/jobs/ppo.yaml for `algorithm` with the bench's base, data, steps and reward model."""
    request = harness.job_request(JOB_FILE, base_model, dataset_id, steps)
    ppo = request["ppo"]
    ppo.update(reward_model_id=reward_model, num_generations=4, samples={"fraction_of_steps": 0.0})
    if algorithm == "rloo":
        ppo["algorithm"] = "PPO_ALGORITHM_RLOO"
        for name in ACTOR_CRITIC_ONLY:
            ppo.pop(name, None)
    return request


def rss_mib() -> float:
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) / 1024
    return 0.0


# ------------------------------------------------------------------------------------------------- bare


def run_bare(args: argparse.Namespace) -> int:
    """The child process: the `ppo` recipe on the service's spec. Prints one BENCH_RESULT line."""
    work_dir = Path(args.work_dir)
    spec, store = harness.bare_spec(args.store, args.dataset, work_dir, lambda dataset_id: build_request(
        args.algorithm, args.base_model, dataset_id, args.steps, args.reward_model), args.device)
    spec.job_id = f"bench-ppo-{args.algorithm}"

    import torch

    from services.trainer.methods.ppo import actor_critic, models, recipe
    from services.trainer.training.context import RecipeContext

    reports: list[dict] = []
    original = models.memory_report

    def record(*model_args):
        reports.append(original(*model_args))
        return reports[-1]

    models.memory_report = record
    # Actor-critic: seconds per step in generation, the whole rollout phase (generation, scoring, the three
    # no-grad forward passes, GAE) and the PPO updates.
    phases: dict[str, list[float]] = {"generate_all": [], "collect": [], "update": []}

    def timed(name: str):
        inner = getattr(actor_critic, name)

        def call(*call_args, **kwargs):
            start = time.perf_counter()
            try:
                return inner(*call_args, **kwargs)
            finally:
                phases[name].append(time.perf_counter() - start)
        setattr(actor_critic, name, call)

    for name in phases:
        timed(name)
    step_times: dict[int, float] = {}
    first: dict[str, float] = {}
    rewards: list[float] = []

    def emit(kind: str, data: dict, step: int) -> None:
        if kind != "metrics" or data.get("phase") != "train":
            return
        values = data["values"]
        if "step_time" in values:
            step_times[step] = values["step_time"]
            first.update(values if step == 1 and not first else {})
        if "reward" in values:
            rewards.append(values["reward"])

    device = "cuda" if torch.cuda.is_available() else "cpu"
    before = rss_mib()
    started = time.perf_counter()
    ctx = RecipeContext(spec=spec, store=store, emit=emit, should_stop=lambda: False, work_dir=work_dir,
                        device=device)
    result_id = recipe.run(ctx)
    later = [v for s, v in sorted(step_times.items()) if s > 1] or list(step_times.values())
    harness.emit_result({
        "algorithm": args.algorithm,
        "device": device,
        "device_name": torch.cuda.get_device_name(0) if device == "cuda" else "cpu",
        "torch_threads": torch.get_num_threads(),
        "result_id": result_id,
        "wall_s": time.perf_counter() - started,
        "step_time_median_s": statistics.median(later) if later else None,
        "step_times_s": [round(step_times[s], 4) for s in sorted(step_times)],
        "rewards": rewards,
        "rss_after_imports_mib": before,
        "rss_peak_mib": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024,
        "models": reports[0] if reports else None,
        "optimizers_mib": first.get("memory/optimizers_mib"),
        "phase_median_s": {name: statistics.median(times[1:] or times) for name, times in phases.items() if times},
    })
    return 0


def bare_once(args: argparse.Namespace, tmp: Path, device: str, algorithm: str) -> dict:
    work_dir = tmp / algorithm
    work_dir.mkdir(parents=True)
    command = [sys.executable, str(Path(__file__).resolve()), "--bare", "--algorithm", algorithm,
               "--work-dir", str(work_dir), "--base-model", args.base_model, "--store", str(args.store),
               "--dataset", str(args.dataset), "--steps", str(args.steps), "--reward-model", args.reward_model,
               "--device", device]
    return harness.run_child(command, env=harness.worker_env(device), cwd=work_dir, log_path=work_dir / "bare.log",
                             what=f"bare {algorithm}")


# -------------------------------------------------------------------------------------------------- main


def untrained_scorer(store_root: Path, base_model: str) -> str:
    """A one-score classifier on the base stored as a REWARD_MODEL (removed by `main` afterwards)."""
    from transformers import AutoModelForSequenceClassification

    from services.common.store import CheckpointStore, EntryKind, Manifest
    from services.trainer.training.common import load_tokenizer

    store = CheckpointStore(store_root)
    entry_id = f"bench-ppo-scorer-{base_model}"
    if not store.exists(entry_id):
        model = AutoModelForSequenceClassification.from_pretrained(store.path_of(base_model), num_labels=1)
        tokenizer = load_tokenizer(store.path_of(base_model))
        model.config.pad_token_id = tokenizer.pad_token_id
        with store.write_entry(Manifest(id=entry_id, kind=EntryKind.REWARD_MODEL, base_model_id=base_model,
                                        has_tokenizer=True)) as out:
            model.save_pretrained(out)
            tokenizer.save_pretrained(out)
    return entry_id


def remove_entries(store_root: Path, prefixes: list[str]) -> None:
    import shutil

    for prefix in prefixes:
        for entry in store_root.glob(f"*/{prefix}*"):
            shutil.rmtree(entry, ignore_errors=True)


def print_table(result: dict) -> None:
    s, c, f, Note = result["summary"], result["config"], harness.fmt, harness.Note
    harness.print_heading(f"PPO bench: {c['base_model']}, {c['job_file']}, {c['steps']} steps", result["machine"])
    harness.busy_warning(result["other_cpu_busy"], "the timings are noisy")
    runs = result["runs"]
    ac, rloo = runs["actor_critic"], runs["rloo"]
    harness.table((30, 14, 10), [
        ("", "actor-critic", "RLOO"),
        ("median wall time per step", f(s["step_time_actor_critic_s"], ".3f", " s"),
         f(s["step_time_rloo_s"], ".3f", " s"),
         Note(f"ratio actor-critic/RLOO {f(s['ratio_actor_critic_over_rloo'], '.2f')}")),
        ("RSS after imports", f(ac["rss_after_imports_mib"], ".0f", " MiB"),
         f(rloo["rss_after_imports_mib"], ".0f", " MiB")),
        ("peak RSS", f(ac["rss_peak_mib"], ".0f", " MiB"), f(rloo["rss_peak_mib"], ".0f", " MiB")),
    ])
    phases = ac.get("phase_median_s") or {}
    if phases:
        print(f"actor-critic step: generation {f(phases.get('generate_all'), '.2f', ' s')}, rollouts in all "
              f"(+ scoring, 3 forward passes, GAE) {f(phases.get('collect'), '.2f', ' s')}, PPO updates "
              f"{f(phases.get('update'), '.2f', ' s')}")
    print()
    harness.table((16, 12, 12, 10), [("actor-critic", "parameters", "trained", "weights")] + [
        (name.replace("_", " "), f(item["parameters"] / 1e6, ".1f", "M"), f(item["trainable"] / 1e6, ".2f", "M"),
         f(item["mib"], ".1f", " MiB"), *([Note("the actor's base, adapter disabled")] if item.get("shared") else []))
        for name, item in (ac["models"] or {}).items()
    ] + [("optimizers", "", "", f(ac["optimizers_mib"], ".1f", " MiB"), Note("AdamW, both"))])
    print()


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    parser = harness.training_parser(__doc__, dataset="rl_prompts.jsonl", out="ppo_step_time.json")
    parser.add_argument("--steps", type=int, default=8, help="steps per run")
    parser.add_argument("--reward-model", default="", help="store id of a REWARD_MODEL (default: an untrained "
                                                           "scorer on the base, made for the run)")
    # Internal: the bare child process.
    parser.add_argument("--bare", action="store_true", help=argparse.SUPPRESS)
    parser.add_argument("--algorithm", choices=ALGORITHMS, default="actor_critic", help=argparse.SUPPRESS)
    args = harness.resolve_paths(parser.parse_args(argv))
    if args.steps < 2:
        parser.error("--steps must be at least 2 (step 1 is warm-up)")
    return args


def measure(args: argparse.Namespace, device: str) -> dict:
    """Both bare runs, one after the other, with the CPU load sampled before each; the result's JSON."""
    busy: list[float | None] = []
    runs: dict[str, dict] = {}
    with harness.scratch_dir("lmforge-ppo-bench-", keep=args.keep_tmp) as tmp:
        args.store = harness.ensure_base(args.store, args.base_model, tmp)
        made_scorer = not args.reward_model
        args.reward_model = args.reward_model or untrained_scorer(args.store, args.base_model)
        try:
            for algorithm in ALGORITHMS:
                busy.append(harness.cpu_busy())
                print(f"bare {algorithm} ...", end=" ", flush=True)
                runs[algorithm] = bare_once(args, tmp, device, algorithm)
                print(f"{harness.fmt(runs[algorithm]['step_time_median_s'], '.3f', ' s')}/step", flush=True)
        finally:
            remove_entries(args.store, [f"bench-ppo-{a}-" for a in ALGORITHMS]
                           + ([args.reward_model] if made_scorer else []))
    actor_critic, rloo = runs["actor_critic"], runs["rloo"]
    return {
        "benchmark": "ppo_step_time",
        "config": {"base_model": args.base_model, "dataset": str(args.dataset), "steps": args.steps,
                   "job_file": str(JOB_FILE.relative_to(REPO)), "store": str(args.store),
                   "reward_model": "untrained scorer made for the run" if made_scorer else args.reward_model},
        "machine": harness.machine(device, actor_critic),
        "other_cpu_busy": busy,
        "summary": {
            "step_time_actor_critic_s": actor_critic["step_time_median_s"],
            "step_time_rloo_s": rloo["step_time_median_s"],
            "ratio_actor_critic_over_rloo": harness.ratio(actor_critic["step_time_median_s"],
                                                          rloo["step_time_median_s"]),
            "peak_rss_actor_critic_mib": actor_critic["rss_peak_mib"],
            "peak_rss_rloo_mib": rloo["rss_peak_mib"],
        },
        "runs": runs,
    }


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    if args.bare:
        return run_bare(args)
    from services.trainer.jobs import detect_devices

    result = measure(args, detect_devices()[0])
    print_table(result)
    harness.write_result(args.out, result)
    return 0


if __name__ == "__main__":
    sys.exit(main())
