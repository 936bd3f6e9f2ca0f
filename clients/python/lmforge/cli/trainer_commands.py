"""The trainer service's commands: train, jobs, metrics, checkpoints, evaluate and datasets. Each takes a
TrainerClient and the parsed arguments and returns the exit code (lmforge.cli.console.EXIT_*)."""

from __future__ import annotations

import argparse
import sys
from collections.abc import Iterable
from pathlib import Path
from typing import TextIO

from lmforge.cli.console import EXIT_ERROR, EXIT_FAILED, EXIT_OK, EventPrinter, print_table
from lmforge.cli.format import (
    CHECKPOINT_HEADERS,
    DATASET_HEADERS,
    JOB_HEADERS,
    checkpoint_rows,
    dataset_row,
    dataset_stats_lines,
    evaluation_rows,
    find_evaluation,
    format_bytes,
    job_detail_rows,
    job_outcome_lines,
    job_row,
    to_json,
    validation_report_lines,
)
from lmforge.cli.train_request import apply_train_overrides, get_field, placeholders, set_path
from lmforge.client import (
    TERMINAL_STATES,
    TrainerClient,
    job_state_name,
    load_request_file,
    parse_dataset_format,
    parse_job_state,
    to_start_training_request,
)
from lmforge.v1 import trainer_pb2


def print_json_lines(messages: Iterable) -> None:
    for m in messages:
        print(to_json(m))


def resolve_dataset(client: TrainerClient, ref: str) -> str:
    """A dataset id from an id or an existing local file (uploaded first; the note goes to stderr)."""
    if ref and Path(ref).is_file():
        ds = client.upload_dataset(ref)
        print(f"uploaded {ref} as dataset {ds.id} ({format_bytes(ds.size_bytes)})", file=sys.stderr)
        return ds.id
    return ref


def follow_job(client: TrainerClient, job_id: str, *, after: int = 0, follow: bool = True,
               json_mode: bool = False, out: TextIO | None = None, samples: bool = False) -> int:
    """Print the job's events, then its outcome. 0 if SUCCEEDED (or still running without follow), else 1.
    `samples`: print RL rollout samples in full (prompt, completions, rewards) instead of a summary line."""
    out = out or sys.stdout
    printer = EventPrinter(out, tty=out.isatty(), json_mode=json_mode, samples=samples)
    try:
        for event in client.stream_metrics(job_id, after_sequence=after, follow=follow):
            printer.handle(event)
    finally:
        printer.finish()
    job = client.get_job(job_id)
    if json_mode:
        out.write(to_json(job) + "\n")
    else:
        out.write("\n".join(job_outcome_lines(job)) + "\n")
    out.flush()
    if job.state in TERMINAL_STATES and job.state != trainer_pb2.JOB_STATE_SUCCEEDED:
        return EXIT_FAILED
    return EXIT_OK


def _placeholder_error(request: dict) -> str | None:
    """Why the request cannot be sent as it is (no dataset, a "<...>" placeholder left), or None."""
    dataset = get_field(request, "dataset_id", "")
    if not isinstance(dataset, str) or not dataset or dataset.startswith("<"):
        return "no dataset: pass --dataset ID-or-local-path (or set dataset_id in the file)"
    for key in ("base_model_id", "display_name"):
        value = get_field(request, key, "")
        if isinstance(value, str) and value.startswith("<"):
            return f"{key} is still the placeholder {value!r}; set it with a flag"
    for path, value in placeholders(request):
        if path != "dataset_id":
            return f"{path} is still the placeholder {value!r}; set it in the file or with a flag"
    return None


def cmd_train(client: TrainerClient, args: argparse.Namespace) -> int:
    base = load_request_file(args.file) if args.file else {}
    request = apply_train_overrides(base, args)
    problem = _placeholder_error(request)
    if problem:
        print(f"error: {problem}", file=sys.stderr)
        return EXIT_ERROR
    set_path(request, ("dataset_id",), resolve_dataset(client, get_field(request, "dataset_id")))
    job = client.start_training(to_start_training_request(request))
    print(to_json(job) if args.json else job.id, flush=True)
    if not args.follow:
        return EXIT_OK
    return follow_job(client, job.id, json_mode=args.json)


def cmd_jobs(client: TrainerClient, args: argparse.Namespace) -> int:
    if args.jobs_cmd == "list":
        states = [s for arg in (args.state or []) for s in arg.split(",") if s]
        jobs = client.list_jobs(states=[parse_job_state(s) for s in states])
        if args.json:
            print_json_lines(jobs)
        else:
            print_table(JOB_HEADERS, [job_row(j) for j in jobs])
        return EXIT_OK
    if args.jobs_cmd == "get":
        job = client.get_job(args.job_id)
        if args.json:
            print(to_json(job))
            return EXIT_OK
        print_table(["FIELD", "VALUE"], job_detail_rows(job))
        if job.HasField("error") and (job.error.message or job.error.code):
            print("\n".join(job_outcome_lines(job)[1:]))
        return EXIT_OK
    if args.jobs_cmd in ("cancel", "pause", "resume"):
        call = {"cancel": client.cancel_job, "pause": client.pause_job, "resume": client.resume_job}[args.jobs_cmd]
        job = call(args.job_id)
        attempt = f" (attempt {job.attempt})" if job.attempt > 1 else ""
        print(to_json(job) if args.json else f"{job.id}: {job_state_name(job.state)}{attempt}")
        return EXIT_OK
    raise AssertionError(args.jobs_cmd)


def cmd_metrics(client: TrainerClient, args: argparse.Namespace) -> int:
    return follow_job(client, args.job_id, after=args.after, follow=args.follow, json_mode=args.json,
                      samples=getattr(args, "samples", False))


def cmd_checkpoints(client: TrainerClient, args: argparse.Namespace) -> int:
    ckpts = client.list_checkpoints(job_id=args.job or "", kind=args.kind or 0, base_model_id=args.base_model or "")
    if args.json:
        print_json_lines(ckpts)
    else:
        print_table(CHECKPOINT_HEADERS, checkpoint_rows(ckpts))
    return EXIT_OK


def cmd_evaluate(client: TrainerClient, args: argparse.Namespace) -> int:
    dataset_id = resolve_dataset(client, args.dataset)
    metrics = [m.strip() for arg in (args.metric or []) for m in arg.split(",") if m.strip()]
    job = client.evaluate(args.model_id, dataset_id, adapter_id=args.adapter or "", metrics=metrics,
                          max_new_tokens=args.max_new_tokens or 0, max_samples=args.max_samples or 0,
                          batch_size=args.batch_size or 0, format=parse_dataset_format(args.format),
                          display_name=args.name or "")
    print(to_json(job) if args.json else job.id, flush=True)
    if not args.follow:
        return EXIT_OK
    code = follow_job(client, job.id, json_mode=args.json)
    if code == EXIT_OK and not args.json:
        job = client.get_job(job.id)
        if job.state == trainer_pb2.JOB_STATE_SUCCEEDED:
            metrics_found, samples = find_evaluation(client.list_checkpoints(), job)
            target = job.result_checkpoint_id or args.model_id
            print(f"\nevaluation of {target} on {dataset_id}" + (f" ({samples} rows)" if samples else "") + ":")
            print_table(["METRIC", "VALUE"], evaluation_rows(metrics_found))
    return code


def cmd_datasets(client: TrainerClient, args: argparse.Namespace) -> int:
    if args.datasets_cmd == "upload":
        ds = client.upload_dataset(args.path, name=args.name)
        if args.json:
            print(to_json(ds))
        else:
            print(ds.id)
            print(f"uploaded {ds.name} ({format_bytes(ds.size_bytes)}, sha256 {ds.sha256[:12]})", file=sys.stderr)
        return EXIT_OK
    if args.datasets_cmd == "list":
        datasets = client.list_datasets()
        if args.json:
            print_json_lines(datasets)
        else:
            print_table(DATASET_HEADERS, [dataset_row(d) for d in datasets])
        return EXIT_OK
    if args.datasets_cmd == "validate":
        dataset_id = resolve_dataset(client, args.dataset)
        report = client.validate_dataset(dataset_id, method=args.method, format=parse_dataset_format(args.format),
                                         max_violations=args.max_violations)
        if args.json:
            print(to_json(report))
        else:
            print("\n".join(validation_report_lines(report)))
        return EXIT_OK if report.ok else EXIT_FAILED
    if args.datasets_cmd == "stats":
        dataset_id = resolve_dataset(client, args.dataset)
        # The server streams the whole file: allow it more than the default deadline of one call.
        stats = client.describe_dataset(dataset_id, args.base_model, args.max_seq_length, method=args.method,
                                        epochs=args.epochs, timeout=max(client.timeout or 0, 600))
        print(to_json(stats) if args.json else "\n".join(dataset_stats_lines(stats)))
        return EXIT_OK
    raise AssertionError(args.datasets_cmd)
