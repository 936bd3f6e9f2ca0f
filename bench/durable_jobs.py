"""What durable jobs cost and how fast they come back: full-state checkpoints, a killed worker, a killed server.

    .venv/bin/python bench/durable_jobs.py                         # SmolLM2 135M, the demo LoRA job
    LMFORGE_HOME=/tmp/benchdev .venv/bin/python bench/durable_jobs.py --base-model tiny-bench --steps 12 --every 4

One `lmforge-trainer --port 0` subprocess (temporary home, the real store), the demo job
(examples/jobs/sft_lora.yaml, data examples/data/sft_demo.jsonl), jobs one after the other (1 and 2
`--repeats` times each, interleaved; the run with the median time of each counts):

1. **baseline**: `--steps` steps, `checkpoints.every_steps` 0: no full state is written within the run
   (the default interval is 50 steps; keep --steps below it).
2. **checkpointed**: the same job with `checkpoints.every_steps = --every` (a store checkpoint and the
   full state every --every steps) and `keep_after_success`, so the full state can be measured on disk.
   Reported: tokens/s against the baseline (the ratio is what checkpointing costs), seconds per save,
   and the bytes of one full-state `checkpoint-N` folder against the adapter alone (the store entry).
3. **worker killed**: the checkpointed job; once it reports step --every + 2, its worker is killed with
   SIGKILL. Reported: seconds from the kill to the job RUNNING again (attempt 2), to its `resumed` event,
   and to the first trained step of the new attempt; steps redone (killed at - resumed from).
4. **server killed**: the checkpointed job; once it reports step 3, the server is killed with SIGKILL and a
   new one started on the same state directory. Reported: seconds from the kill to the new server
   listening, and to the next event of the job on a fresh `StreamMetrics(after_sequence=last seen)`;
   the sequences seen before and after must be one gapless run, and the worker must be the same pid
   (re-adopted, still attempt 1).

Jobs 3 and 4 are cancelled once measured. Results: bench/results/durable_jobs.json.
"""

from __future__ import annotations

import argparse
import os
import re
import shutil
import signal
import time
from pathlib import Path

import harness
import psutil

REPO = harness.REPO
JOB_FILE = REPO / "examples" / "jobs" / "sft_lora.yaml"


class Server:
    """`lmforge-trainer` as a subprocess we may kill -9 and start again on the same home."""

    def __init__(self, home: Path, store: Path, logs: Path, name: str):
        self.process, self.address = harness.launch_server(
            "lmforge-trainer", "services.trainer.server",
            ["--port", "0", "--home", str(home), "--store", str(store), "--max-restarts", "2"], logs, name)

    def kill(self) -> None:
        self.process.kill()
        self.process.wait()

    def stop(self) -> None:
        harness.stop_process(self.process)


def request_for(base_model: str, dataset_id: str, steps: int, every: int) -> dict:
    request = harness.job_request(JOB_FILE, base_model, dataset_id, steps)
    request["checkpoints"] = {"every_steps": every, "keep_after_success": True}
    return request


def run_to_end(client, job_id: str) -> dict:
    """Follow a job to its end; the summary event's values and how many store checkpoints it saved."""
    from lmforge.client import job_state_name

    summary, saves = {}, 0
    for event in client.stream_metrics(job_id, follow=True):
        kind = event.WhichOneof("payload")
        if kind == "metrics" and "train_runtime" in event.metrics.values:
            summary = dict(event.metrics.values)
        elif kind == "checkpoint_saved" and not event.checkpoint_saved.checkpoint.is_final:
            saves += 1
    job = client.get_job(job_id)
    if job_state_name(job.state) != "SUCCEEDED":
        raise RuntimeError(f"job {job_id} ended {job_state_name(job.state)}: {job.error.message}")
    return {"summary": summary, "saves": saves}


def median_run(runs: list[dict]) -> dict:
    """The run with the median train_runtime (all runs kept under "runs")."""
    ordered = sorted(runs, key=lambda r: r["summary"].get("train_runtime", 0.0))
    return {**ordered[(len(ordered) - 1) // 2], "runs": runs}


def folder_bytes(path: Path) -> int:
    return sum(f.stat().st_size for f in path.rglob("*") if f.is_file())


def worker_pid_of(client, job_id: str, attempt: int) -> int:
    """The pid in the RUNNING state message of an attempt ("worker pid N on cpu[, attempt K]")."""
    for event in client.stream_metrics(job_id, follow=False):
        if event.WhichOneof("payload") == "state_change" and event.attempt == attempt:
            found = re.search(r"worker pid (\d+)", event.state_change.message)
            if found:
                return int(found.group(1))
    raise RuntimeError(f"no RUNNING event of attempt {attempt} for {job_id}")


def kill_worker(client, job_id: str, kill_after_step: int) -> dict:
    """Measure a worker death: kill at `kill_after_step`, time the way back to training."""
    from lmforge.v1 import trainer_pb2

    killed_at, t_kill, times = 0, 0.0, {}
    for event in client.stream_metrics(job_id, follow=True):
        kind = event.WhichOneof("payload")
        if not t_kill and kind == "metrics" and event.metrics.phase == "train" and event.step >= kill_after_step:
            killed_at = event.step
            os.kill(worker_pid_of(client, job_id, 1), signal.SIGKILL)
            t_kill = time.perf_counter()
        elif t_kill and event.attempt == 2:
            now = time.perf_counter() - t_kill
            if kind == "state_change" and event.state_change.state == trainer_pb2.JOB_STATE_RUNNING:
                times["running"] = now
            elif kind == "resumed":
                times["resumed"], times["from_step"] = now, event.resumed.from_step
            elif kind == "metrics" and event.metrics.phase == "train":
                times["first_step"], times["first_step_number"] = now, event.step
                break
    client.cancel_job(job_id)
    return {"killed_at_step": killed_at, "seconds_to_running": times.get("running"),
            "seconds_to_resumed_event": times.get("resumed"), "seconds_to_first_step": times.get("first_step"),
            "resumed_from_step": times.get("from_step"), "steps_redone": killed_at - times.get("from_step", 0)}


def kill_server(server: Server, home: Path, store: Path, logs: Path, job_id: str, kill_after_step: int):
    """Measure a server death: kill -9 at `kill_after_step`, start a new one, read on from the last sequence."""
    from lmforge.client import TrainerClient

    sequences = []
    with TrainerClient(server.address) as client:
        for event in client.stream_metrics(job_id, follow=True):
            sequences.append(event.sequence)
            if event.WhichOneof("payload") == "metrics" and event.step >= kill_after_step:
                break
        pid = worker_pid_of(client, job_id, 1)
    server.kill()
    t_kill = time.perf_counter()
    server = Server(home, store, logs, "server-2")
    listening = time.perf_counter() - t_kill
    with TrainerClient(server.address) as client:
        first = next(iter(client.stream_metrics(job_id, after_sequence=sequences[-1], follow=True)))
        next_event = time.perf_counter() - t_kill
        sequences.append(first.sequence)
        job = client.get_job(job_id)
        readopted = job.attempt == 1 and job.restarts == 0 and psutil.pid_exists(pid)
        client.cancel_job(job_id)
    gapless = sequences == list(range(sequences[0], sequences[-1] + 1))
    return server, {"seconds_to_listening": listening, "seconds_to_next_event": next_event,
                    "sequences_gapless": gapless, "same_worker_readopted": readopted}


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--base-model", default=harness.SMOLLM2_ID)
    parser.add_argument("--store", type=Path, default=None)
    parser.add_argument("--dataset", type=Path, default=REPO / "examples" / "data" / "sft_demo.jsonl")
    parser.add_argument("--steps", type=int, default=40, help="optimizer steps of the baseline and checkpointed jobs")
    parser.add_argument("--every", type=int, default=10, help="checkpoints.every_steps of the checkpointed jobs")
    parser.add_argument("--repeats", type=int, default=2, help="baseline and checkpointed runs, interleaved")
    parser.add_argument("--out", type=Path, default=REPO / "bench" / "results" / "durable_jobs.json")
    parser.add_argument("--keep-tmp", action="store_true")
    args = parser.parse_args()
    if not 0 < args.every < args.steps < 50:
        parser.error("need 0 < --every < --steps < 50 (50: the default full-state interval of the baseline)")
    args = harness.resolve_paths(args)

    from lmforge.client import TrainerClient

    with harness.scratch_dir("lmforge-bench-durable-", keep=args.keep_tmp) as tmp:
        store = harness.ensure_base(args.store, args.base_model, tmp)
        home, logs = tmp / "home", tmp / "logs"
        busy = harness.cpu_busy()
        server = Server(home, store, logs, "server-1")
        job_ids = []
        try:
            with TrainerClient(server.address, timeout=600) as client:
                dataset_id = client.upload_dataset(args.dataset).id
                baseline_request = request_for(args.base_model, dataset_id, args.steps, 0)
                checkpointed_request = request_for(args.base_model, dataset_id, args.steps, args.every)

                baselines, checkpointeds = [], []
                for _ in range(args.repeats):  # interleaved, so a slow spell of the machine hits both
                    job = client.start_training(baseline_request)
                    job_ids.append(job.id)
                    baselines.append(run_to_end(client, job.id))
                    job = client.start_training(checkpointed_request)
                    job_ids.append(job.id)
                    checkpointeds.append(run_to_end(client, job.id))
                baseline, checkpointed = median_run(baselines), median_run(checkpointeds)
                state_dirs = sorted((home / "jobs" / job.id / "trainer").glob("checkpoint-*"))
                adapter = store / "adapters" / f"{job.id}-final"
                full_state_bytes = folder_bytes(state_dirs[-1]) if state_dirs else 0
                adapter_bytes = folder_bytes(adapter) if adapter.is_dir() else 0

                job = client.start_training({**checkpointed_request, "hyperparameters": {
                    **checkpointed_request["hyperparameters"], "max_steps": args.steps + 20}})
                job_ids.append(job.id)
                worker_death = kill_worker(client, job.id, args.every + 2)

                job = client.start_training({**checkpointed_request, "hyperparameters": {
                    **checkpointed_request["hyperparameters"], "max_steps": args.steps + 20}})
                job_ids.append(job.id)
            server, server_death = kill_server(server, home, store, logs, job.id, 3)
        finally:
            server.stop()
            for job_id in job_ids:
                for entry in [*(store / "adapters").glob(f"{job_id}-*"), *(store / "models").glob(f"{job_id}-*")]:
                    shutil.rmtree(entry, ignore_errors=True)

    base_tps = baseline["summary"].get("tokens_per_second")
    ckpt_tps = checkpointed["summary"].get("tokens_per_second")
    base_runtime = baseline["summary"].get("train_runtime")
    ckpt_runtime = checkpointed["summary"].get("train_runtime")
    saves = checkpointed["saves"]
    per_save = (ckpt_runtime - base_runtime) / saves if saves and base_runtime and ckpt_runtime else None
    step_seconds = base_runtime / args.steps if base_runtime else None
    result = {
        "machine": harness.machine("cpu", None), "cpu_busy_before": busy,
        "base_model": args.base_model, "steps": args.steps, "every": args.every,
        "baseline": baseline, "checkpointed": checkpointed,
        "checkpoint_tokens_per_second_ratio": harness.ratio(ckpt_tps, base_tps),
        "seconds_per_save": per_save, "baseline_seconds_per_step": step_seconds,
        "default_interval_overhead": per_save / (50 * step_seconds) if per_save and step_seconds else None,
        "full_state_bytes": full_state_bytes, "adapter_bytes": adapter_bytes,
        "full_state_to_adapter_ratio": harness.ratio(full_state_bytes, adapter_bytes),
        "worker_death": worker_death, "server_death": server_death,
    }

    harness.print_heading(f"durable jobs: the demo LoRA job, {args.steps} steps, state every {args.every}",
                          result["machine"])
    harness.busy_warning([busy], "the timings")
    rows = [
        ("tokens/s, no full state", harness.fmt(base_tps)),
        (f"tokens/s, state every {args.every}", harness.fmt(ckpt_tps),
         harness.Note(f"ratio {harness.fmt(result['checkpoint_tokens_per_second_ratio'], '.3f')}")),
        ("seconds per save", harness.fmt(per_save, ".2f"),
         harness.Note(f"at the default interval (50 steps): {harness.fmt(result['default_interval_overhead'], '.1%')}"
                      " of the training time")),
        ("full state, MiB", harness.fmt(full_state_bytes / 2**20, ".1f"),
         harness.Note(f"{harness.fmt(result['full_state_to_adapter_ratio'], '.2f')}x the adapter "
                      f"({harness.fmt(adapter_bytes / 2**20, '.1f')} MiB)")),
        ("worker SIGKILL -> RUNNING, s", harness.fmt(worker_death["seconds_to_running"], ".2f")),
        ("worker SIGKILL -> training, s", harness.fmt(worker_death["seconds_to_first_step"], ".2f"),
         harness.Note(f"killed after step {worker_death['killed_at_step']}, resumed from step "
                      f"{worker_death['resumed_from_step']}")),
        ("server kill -9 -> listening, s", harness.fmt(server_death["seconds_to_listening"], ".2f")),
        ("server kill -9 -> next event, s", harness.fmt(server_death["seconds_to_next_event"], ".2f"),
         harness.Note(f"gapless {server_death['sequences_gapless']}, same worker "
                      f"{server_death['same_worker_readopted']}")),
    ]
    harness.table((34, 10), rows)
    harness.write_result(args.out, result)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
