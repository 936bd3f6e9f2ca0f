"""`lmforge`: the command line of the trainer and inference services (installs without torch).

    lmforge datasets upload data/train.jsonl
    lmforge datasets validate data/train.jsonl --method sft        # every bad row, exit 1 if any
    lmforge train -f examples/jobs/sft_lora.yaml --dataset data/train.jsonl --max-steps 100 --follow
    lmforge metrics JOB_ID                                         # live progress line, exit 0/1
    lmforge jobs list --state running
    lmforge checkpoints --job JOB_ID                               # BEST mark, newest EVAL scores
    lmforge evaluate tiny-llama --dataset data/qa.jsonl --metric bleu --metric rouge --follow

    lmforge models                                                 # store entries, what is loaded, how
    lmforge models load smollm2-135m-instruct --quantization nf4
    lmforge chat smollm2-135m-instruct "Why is the sky blue?" --temperature 0 --max-new-tokens 128
    lmforge chat smollm2-135m-instruct --adapter ADAPTER_ID        # interactive on a terminal
    lmforge tokens smollm2-135m-instruct "Hello world"             # count, chars/token, pieces

Global options (before or after the subcommand): --address HOST:PORT of the trainer (default
$LMFORGE_TRAINER_ADDRESS or 127.0.0.1:50051), --inference-address HOST:PORT (default
$LMFORGE_INFERENCE_ADDRESS or 127.0.0.1:50052) and --json (one JSON object per line,
json_format.MessageToJson, instead of tables; for chat, one per GenerateResponse).

Exit codes: 0 success; 1 the job ended FAILED/CANCELLED, the dataset has bad rows or a generation ended
cancelled / past its deadline; 2 usage, local or gRPC errors (printed as `error: CODE: details` plus the
field violations of the status details); 130 interrupted. Also runnable as `python -m lmforge.cli`.
"""

from __future__ import annotations

import argparse
import math
import os
import sys
from collections.abc import Iterable, Sequence
from datetime import datetime, timezone
from pathlib import Path
from typing import Any, TextIO

import grpc
from google.protobuf import json_format

from lmforge.client import (
    DEFAULT_ADDRESS,
    DEFAULT_INFERENCE_ADDRESS,
    INFERENCE_ADDRESS_ENV,
    SAMPLING_FIELDS,
    TERMINAL_STATES,
    InferenceClient,
    TrainerClient,
    backend_name,
    checkpoint_kind_name,
    dataset_format_name,
    finish_reason_name,
    job_state_name,
    load_request_file,
    parse_dataset_format,
    parse_job_state,
    quantization_name,
    to_start_training_request,
)
from lmforge.v1 import common_pb2, inference_pb2, trainer_pb2

EXIT_OK, EXIT_FAILED, EXIT_ERROR = 0, 1, 2

METHODS = ("pretrain", "continued_pretrain", "sft", "reward", "dpo", "rft", "grpo", "ppo", "distill")
ADAPTERS = {"full": "ADAPTER_FULL", "lora": "ADAPTER_LORA", "qlora": "ADAPTER_QLORA"}


# ------------------------------------------------------------------------------------ pure formatting


def format_eta(seconds: float | None) -> str:
    """35 -> "0:35", 3725 -> "1:02:05"; None, negative or NaN -> "?"."""
    if seconds is None or not math.isfinite(seconds) or seconds < 0:
        return "?"
    total = int(round(seconds))
    hours, rest = divmod(total, 3600)
    minutes, secs = divmod(rest, 60)
    return f"{hours}:{minutes:02d}:{secs:02d}" if hours else f"{minutes}:{secs:02d}"


def format_progress_line(step: int, total_steps: int, values: dict[str, float], bar_width: int = 10) -> str:
    """`[#####.....] 42% step 21/50 loss 1.234 lr 1.9e-04 3,210 tok/s ETA 0:35` (bar_width=0: no bar).

    `values` is a MetricsEvent's map (TRL names: loss, learning_rate, tokens_per_second, progress,
    eta_seconds); parts whose value is missing are left out.
    """
    progress = values.get("progress")
    if progress is None and total_steps > 0:
        progress = step / total_steps
    parts: list[str] = []
    if progress is not None:
        progress = min(max(progress, 0.0), 1.0)
        if bar_width > 0:
            filled = min(bar_width, math.ceil(progress * bar_width - 1e-9))
            parts.append("[" + "#" * filled + "." * (bar_width - filled) + "]")
        parts.append(f"{int(progress * 100 + 1e-9)}%")
    parts.append(f"step {step}/{total_steps}" if total_steps > 0 else f"step {step}")
    if "loss" in values:
        parts.append(f"loss {values['loss']:.3f}")
    if "learning_rate" in values:
        parts.append(f"lr {values['learning_rate']:.1e}")
    if "tokens_per_second" in values:
        parts.append(f"{values['tokens_per_second']:,.0f} tok/s")
    if "eta_seconds" in values:
        parts.append(f"ETA {format_eta(values['eta_seconds'])}")
    return " ".join(parts)


def format_number(value: float) -> str:
    """Compact metric value: 1.234, 0.0002 -> 2.0e-04, 1234567 -> 1.23e+06."""
    if value != 0 and (abs(value) < 1e-3 or abs(value) >= 1e6):
        return f"{value:.2e}" if abs(value) >= 1e6 else f"{value:.1e}"
    if float(value).is_integer():
        return str(int(value))
    return f"{value:.4g}"


def format_metrics_line(event: trainer_pb2.TrainingEvent, total_steps: int = 0, bar_width: int = 0) -> str:
    """One line for a metrics event: the progress line for train metrics, `eval step N: k v ...` for eval."""
    metrics = event.metrics
    values = dict(metrics.values)
    total = metrics.total_steps or total_steps
    if metrics.phase == "eval" and values and set(values) <= {"progress", "eta_seconds"}:
        # an Evaluate job's progress (its results come in a last eval event with every metric)
        return "eval " + format_progress_line(event.step, total, values, bar_width=bar_width)
    if metrics.phase == "eval":
        shown = " ".join(f"{k} {format_number(v)}" for k, v in sorted(values.items()))
        return f"eval step {event.step}: {shown}".rstrip(": ")
    return format_progress_line(event.step, total, values, bar_width=bar_width)


def format_violation(v: common_pb2.FieldViolation) -> str:
    """`row 7  messages[1].role  <reason>  hint: <hint>` (`file` instead of `row N` for row 0)."""
    parts = [f"row {v.row}" if v.row else "file", v.field or "-", v.reason]
    if v.hint:
        parts.append(f"hint: {v.hint}")
    return "  ".join(parts)


def format_event_line(event: trainer_pb2.TrainingEvent, total_steps: int = 0) -> str:
    """A one-line, human description of any event (metrics without a bar)."""
    kind = event.WhichOneof("payload")
    if kind == "metrics":
        return format_metrics_line(event, total_steps)
    if kind == "state_change":
        sc = event.state_change
        line = f"state: {job_state_name(sc.state)}"
        return f"{line} ({sc.message})" if sc.message else line
    if kind == "checkpoint_saved":
        ckpt = event.checkpoint_saved.checkpoint
        extra = ", final" if ckpt.is_final else ""
        return f"checkpoint saved: {ckpt.id} (step {ckpt.step or event.step}, {checkpoint_kind_name(ckpt.kind)}{extra})"
    if kind == "log":
        return f"log [{event.log.level or 'INFO'}] {event.log.message}"
    if kind == "rollouts":
        return format_rollouts_summary(event)
    return f"event {event.sequence}"


def _one_line(text: str, max_chars: int) -> str:
    """Text on one line (newlines shown as ⏎), cut to max_chars with an ellipsis."""
    flat = text.replace("\r\n", "\n").replace("\n", "⏎").replace("\t", " ")
    return flat if len(flat) <= max_chars else flat[:max(max_chars - 1, 0)] + "…"


def format_rollouts_summary(event: trainer_pb2.TrainingEvent) -> str:
    """`rollouts step 10: 2 prompt(s) x 4 completions, mean reward 0.62 (--samples shows them)`."""
    rollouts = event.rollouts
    completions = [c for sample in rollouts.samples for c in sample.completions]
    where = f"round {rollouts.round} step {event.step}" if rollouts.round else f"step {event.step}"
    sizes = sorted({len(sample.completions) for sample in rollouts.samples})
    group = f"{sizes[0]}" if len(sizes) == 1 else "/".join(map(str, sizes))
    mean = sum(c.reward for c in completions) / len(completions) if completions else 0.0
    return (f"rollouts {where}: {len(rollouts.samples)} prompt(s) x {group} completions, mean reward "
            f"{format_number(mean)} (--samples shows them)")


def format_rollouts_lines(event: trainer_pb2.TrainingEvent, max_chars: int = 120) -> list[str]:
    """A rollout samples event in full: each prompt, then each completion of its group with its total
    reward and each reward function's score (texts on one line each, cut to `max_chars`)."""
    rollouts = event.rollouts
    where = f"round {rollouts.round} step {event.step}" if rollouts.round else f"step {event.step}"
    lines = [f"rollouts {where}:"]
    for sample in rollouts.samples:
        lines.append(f"  prompt: {_one_line(sample.prompt, max_chars)}")
        for i, completion in enumerate(sample.completions, 1):
            scores = ", ".join(f"{name} {format_number(value)}" for name, value in sorted(completion.rewards.items()))
            lines.append(f"    [{i}] reward {format_number(completion.reward)}" + (f" ({scores})" if scores else ""))
            lines.append(f"        {_one_line(completion.text, max_chars) if completion.text else '(empty)'}")
    return lines


def format_table(headers: Sequence[str], rows: Iterable[Sequence[Any]]) -> str:
    """Left-aligned columns separated by two spaces, header first; no trailing spaces."""
    cells = [[str(h) for h in headers]] + [["" if c is None else str(c) for c in row] for row in rows]
    widths = [max(len(r[i]) for r in cells) for i in range(len(headers))]
    return "\n".join("  ".join(c.ljust(w) for c, w in zip(r, widths)).rstrip() for r in cells)


def format_bytes(n: int) -> str:
    """1536 -> "1.5 KiB"."""
    size = float(n)
    for unit in ("B", "KiB", "MiB", "GiB", "TiB"):
        if size < 1024 or unit == "TiB":
            return f"{int(size)} B" if unit == "B" else f"{size:.1f} {unit}"
        size /= 1024
    return f"{n} B"  # unreachable


def format_timestamp(ts) -> str:
    """A google.protobuf.Timestamp as `YYYY-MM-DD HH:MM:SS` UTC; "-" when unset."""
    if not ts.seconds and not ts.nanos:
        return "-"
    return datetime.fromtimestamp(ts.seconds, tz=timezone.utc).strftime("%Y-%m-%d %H:%M:%S")


def to_json(message) -> str:
    """One-line JSON of a message, field names as in the proto (the same names request files use)."""
    return json_format.MessageToJson(message, indent=None, preserving_proto_field_name=True)


def status_detail_lines(blob: bytes) -> list[str]:
    """The field violations carried by a `grpc-status-details-bin` trailer (a google.rpc.Status).

    Understands google.rpc.BadRequest, PreconditionFailure, ErrorInfo and lmforge.v1.ErrorDetail; needs
    googleapis-common-protos, and returns [] without it (the status details string is printed anyway).
    """
    try:
        from google.rpc import error_details_pb2, status_pb2
    except ImportError:
        return []
    try:
        status = status_pb2.Status.FromString(blob)
    except Exception:  # a malformed trailer must not hide the error itself
        return []
    lines: list[str] = []
    for detail in status.details:
        if detail.Is(error_details_pb2.BadRequest.DESCRIPTOR):
            bad = error_details_pb2.BadRequest()
            detail.Unpack(bad)
            lines += [f"  {fv.field}: {fv.description}" for fv in bad.field_violations]
        elif detail.Is(error_details_pb2.PreconditionFailure.DESCRIPTOR):
            pf = error_details_pb2.PreconditionFailure()
            detail.Unpack(pf)
            lines += [f"  {v.subject or v.type}: {v.description}" for v in pf.violations]
        elif detail.Is(common_pb2.ErrorDetail.DESCRIPTOR):
            ed = common_pb2.ErrorDetail()
            detail.Unpack(ed)
            lines += ["  " + format_violation(v) for v in ed.violations]
        elif detail.Is(error_details_pb2.ErrorInfo.DESCRIPTOR):
            info = error_details_pb2.ErrorInfo()
            detail.Unpack(info)
            if info.reason:
                lines.append(f"  reason: {info.reason}")
    return lines


def format_rpc_error(err: grpc.RpcError) -> list[str]:
    """`error: CODE: details` then one line per field violation found in the trailing metadata."""
    code = err.code() if callable(getattr(err, "code", None)) else None
    name = code.name if code is not None else "UNKNOWN"
    details = err.details() if callable(getattr(err, "details", None)) else str(err)
    lines = [f"error: {name}: {details}" if details else f"error: {name}"]
    trailers = err.trailing_metadata() if callable(getattr(err, "trailing_metadata", None)) else None
    for key, value in trailers or ():
        if key == "grpc-status-details-bin" and isinstance(value, bytes):
            lines += status_detail_lines(value)
    return lines


def job_outcome_lines(job: trainer_pb2.Job) -> list[str]:
    """`final state: X`, then `result checkpoint: ID` on success or the error and its violations."""
    lines = [f"final state: {job_state_name(job.state)}"]
    if job.state == trainer_pb2.JOB_STATE_SUCCEEDED:
        if job.result_checkpoint_id:
            lines.append(f"result checkpoint: {job.result_checkpoint_id}")
    elif job.HasField("error") and (job.error.message or job.error.code):
        lines.append(f"error: {job.error.code or 'UNKNOWN'}: {job.error.message}")
        lines += ["  " + format_violation(v) for v in job.error.violations]
        if job.error.log_tail:
            lines.append("log tail:")
            lines += ["  " + line for line in job.error.log_tail.rstrip().splitlines()]
    return lines


# (metric name, short label) of the compact EVAL summary, in order; other metrics are left out of it.
EVAL_SUMMARY_KEYS = (("perplexity", "ppl"), ("exact_match", "em"), ("accuracy", "acc"), ("f1", "f1"),
                     ("macro_f1", "macro_f1"), ("bleu", "bleu"), ("rougeL", "rougeL"))
# Order of the full result table; metrics not named here follow, sorted.
EVAL_METRIC_ORDER = ("perplexity", "exact_match", "accuracy", "f1", "macro_f1", "bleu", "rouge1", "rouge2", "rougeL")
# Values of an evaluate job's progress events that are not results.
EVAL_PROGRESS_KEYS = ("progress", "eta_seconds", "samples")


def format_evaluation_summary(metrics: dict[str, float]) -> str:
    """`ppl 12.3 em 0.50 f1 0.62 bleu 31.2 rougeL 0.45`: perplexity and BLEU with one decimal, the 0-1
    scores with two; "-" when none of EVAL_SUMMARY_KEYS is present."""
    parts = []
    for name, label in EVAL_SUMMARY_KEYS:
        if name in metrics:
            value = metrics[name]
            parts.append(f"{label} {value:.1f}" if name in ("perplexity", "bleu") else f"{label} {value:.2f}")
    return " ".join(parts) or "-"


CHECKPOINT_HEADERS = ("ID", "KIND", "BASE MODEL", "METHOD", "JOB", "STEP", "FINAL", "BEST", "SIZE", "CREATED",
                      "EVAL")


def checkpoint_rows(ckpts: Iterable[common_pb2.Checkpoint]) -> list[list]:
    """One row per checkpoint (CHECKPOINT_HEADERS); EVAL summarises its newest evaluation."""
    rows = []
    for c in ckpts:
        summary = format_evaluation_summary(dict(c.evaluations[-1].metrics)) if c.evaluations else "-"
        rows.append([c.id, checkpoint_kind_name(c.kind), c.base_model_id or "-", c.method or "-", c.job_id or "-",
                     c.step, "yes" if c.is_final else "", "yes" if c.is_best else "", format_bytes(c.size_bytes),
                     format_timestamp(c.created_at), summary])
    return rows


def evaluation_rows(metrics: dict[str, float]) -> list[tuple[str, str]]:
    """(metric, value) rows in EVAL_METRIC_ORDER, then any other metric by name."""
    known = [m for m in EVAL_METRIC_ORDER if m in metrics]
    others = sorted(m for m in metrics if m not in EVAL_METRIC_ORDER)
    return [(m, format_number(metrics[m])) for m in known + others]


def find_evaluation(ckpts: Iterable[common_pb2.Checkpoint], job: trainer_pb2.Job) -> tuple[dict[str, float], int]:
    """(metrics, rows scored) of an evaluate job: from the evaluated entry's manifest, or else from the
    job's latest metrics (rows scored then 0 unless reported)."""
    for c in ckpts:
        if c.id != job.result_checkpoint_id:
            continue
        for result in reversed(c.evaluations):
            if result.job_id == job.id:
                return dict(result.metrics), result.samples
    latest = dict(job.latest_metrics)
    samples = int(latest.get("samples", 0))
    return {k: v for k, v in latest.items() if k not in EVAL_PROGRESS_KEYS}, samples


# ---------------------------------------------------------------------------- train request building


def _camel(name: str) -> str:
    head, *rest = name.split("_")
    return head + "".join(p[:1].upper() + p[1:] for p in rest)


def _get(d: dict, key: str, default=None):
    if key in d:
        return d[key]
    return d.get(_camel(key), default)


def _set_path(d: dict, path: Sequence[str], value: Any) -> None:
    """d[path] = value using proto names; a camelCase spelling of the same field is replaced."""
    for key in path[:-1]:
        if _camel(key) in d and key not in d:
            d[key] = d.pop(_camel(key))
        child = d.get(key)
        if not isinstance(child, dict):
            child = d[key] = {}
        d = child
    leaf = path[-1]
    if _camel(leaf) != leaf:
        d.pop(_camel(leaf), None)
    d[leaf] = value


# flag dest -> field path in StartTrainingRequest
TRAIN_FLAG_FIELDS: dict[str, tuple[str, ...]] = {
    "base_model": ("base_model_id",),
    "dataset": ("dataset_id",),
    "name": ("display_name",),
    "rank": ("adapter", "rank"),
    "alpha": ("adapter", "alpha"),
    "epochs": ("hyperparameters", "num_epochs"),
    "max_steps": ("hyperparameters", "max_steps"),
    "lr": ("hyperparameters", "learning_rate"),
    "batch_size": ("hyperparameters", "batch_size"),
    "grad_accum": ("hyperparameters", "gradient_accumulation_steps"),
    "max_seq_length": ("hyperparameters", "max_seq_length"),
    "packing": ("hyperparameters", "packing"),
    "seed": ("hyperparameters", "seed"),
    "save_every": ("checkpoints", "every_steps"),
    "eval_split": ("eval", "split_ratio"),
    "eval_every": ("eval", "every_steps"),
    "metric_for_best": ("eval", "metric_for_best"),
    "early_stopping_patience": ("eval", "early_stopping_patience"),
}
PREFERENCE_LOSSES = ("sigmoid", "ipo", "hinge", "orpo", "simpo", "kto")
# Methods whose spec has a VocabularyExpansion (--new-token).
VOCABULARY_METHODS = ("sft", "continued_pretrain")


def apply_train_overrides(request: dict, args: argparse.Namespace) -> dict:
    """A copy of a request dict (from a YAML/JSON file, proto field names) with the train flags applied.

    Flags win over file values; flags left unset keep them. With neither a method in the file nor
    --method, the method is sft.
    """
    import copy

    out = copy.deepcopy(request)
    for dest, path in TRAIN_FLAG_FIELDS.items():
        value = getattr(args, dest, None)
        if value is not None:
            _set_path(out, path, value)
    if getattr(args, "adapter", None):
        _set_path(out, ("adapter", "type"), ADAPTERS[args.adapter])
    for label in getattr(args, "label", None) or []:
        key, _, value = label.partition("=")
        _set_path(out, ("labels", key), value)

    present = [m for m in METHODS if m in out or _camel(m) in out]
    method = getattr(args, "method", None)
    if method:
        method = method.replace("-", "_")
        body = _get(out, method, None)
        for m in METHODS:
            out.pop(m, None)
            out.pop(_camel(m), None)
        out[method] = body if isinstance(body, dict) else {}
    elif not present:
        out["sft"] = {}
    _apply_method_flags(out, args)
    return out


def _apply_method_flags(request: dict, args: argparse.Namespace) -> None:
    """--beta / --loss (dpo) and --new-token (sft, continued_pretrain) go into the chosen method's body;
    on another method they are an error (ValueError), not silently dropped."""
    method = next((m for m in METHODS if m in request or _camel(m) in request), "sft")
    body = _get(request, method, None)
    if not isinstance(body, dict):
        body = {}
    request.pop(_camel(method), None)
    request[method] = body
    beta, loss, tokens = (getattr(args, "beta", None), getattr(args, "loss", None),
                          getattr(args, "new_token", None))
    reward_model = getattr(args, "reward_model", None)
    if reward_model and method != "ppo":
        raise ValueError(f"--reward-model applies to the ppo method (RLOO), not {method}")
    if reward_model:
        body["reward_model_id"] = reward_model
    teacher = getattr(args, "teacher", None)
    if teacher and method != "distill":
        raise ValueError(f"--teacher applies to the distill method, not {method}")
    if teacher:
        body["teacher_model_id"] = teacher
    if (beta is not None or loss) and method != "dpo":
        raise ValueError(f"--beta and --loss apply to the dpo method, not {method}")
    if tokens and method not in VOCABULARY_METHODS:
        raise ValueError(f"--new-token applies to {' and '.join(VOCABULARY_METHODS)}, not {method}")
    if beta is not None:
        body["beta"] = beta
    if loss:
        body["loss"] = f"PREFERENCE_LOSS_{loss.upper()}"
    if tokens:
        _set_path(body, ("vocabulary", "new_tokens"), list(tokens))


def build_train_request(request: dict, args: argparse.Namespace) -> trainer_pb2.StartTrainingRequest:
    """File dict + flags -> StartTrainingRequest (json_format.ParseError on unknown fields/bad values)."""
    return to_start_training_request(apply_train_overrides(request, args))


# ------------------------------------------------------------------------------------- event printing


class EventPrinter:
    """Prints a job's events: a live progress line redrawn with \\r on a TTY, one line per event otherwise
    (and one JSON object per event in --json mode). State changes, checkpoints and logs get own lines."""

    def __init__(self, out: TextIO, *, tty: bool, json_mode: bool, total_steps: int = 0, samples: bool = False):
        self.out = out
        self.tty = tty and not json_mode
        self.json_mode = json_mode
        self.total_steps = total_steps
        self.samples = samples  # print rollout samples in full (else one summary line per event)
        self._progress = ""  # the progress line currently drawn (TTY only)

    def _clear(self) -> None:
        if self._progress:
            self.out.write("\r" + " " * len(self._progress) + "\r")

    def line(self, text: str) -> None:
        self._clear()
        self.out.write(text + "\n")
        if self._progress:
            self.out.write(self._progress)
        self.out.flush()

    def handle(self, event: trainer_pb2.TrainingEvent) -> None:
        if self.json_mode:
            self.out.write(to_json(event) + "\n")
            self.out.flush()
            return
        kind = event.WhichOneof("payload")
        if kind == "metrics" and event.metrics.total_steps:
            self.total_steps = event.metrics.total_steps
        if kind == "metrics" and self.tty and event.metrics.phase != "eval":
            text = format_metrics_line(event, self.total_steps, bar_width=10)
            self.out.write("\r" + text.ljust(len(self._progress)))
            self._progress = text
            self.out.flush()
            return
        if kind == "rollouts" and self.samples:
            self.line("\n".join(format_rollouts_lines(event)))
            return
        self.line(format_event_line(event, self.total_steps))

    def finish(self) -> None:
        if self._progress:
            self.out.write("\n")
            self._progress = ""
            self.out.flush()


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


# ------------------------------------------------------------------------- inference: pure formatting


def sampling_kwargs(args: argparse.Namespace) -> dict[str, Any]:
    """The sampling flags that were given (not None), named as SamplingParams fields, for generate()."""
    out: dict[str, Any] = {}
    for name in SAMPLING_FIELDS:
        value = getattr(args, name, None)
        if value is not None and not (name == "stop" and not value):
            out[name] = list(value) if name == "stop" else value
    return out


def dim(text: str, enabled: bool) -> str:
    """`text` in the terminal's faint style when enabled (stderr is a TTY and $NO_COLOR is unset)."""
    return f"\x1b[2m{text}\x1b[0m" if enabled and text else text


def format_duration_ms(ms: float) -> str:
    """85.2 -> "85 ms", 1234 -> "1.23 s"."""
    return f"{ms:.0f} ms" if ms < 1000 else f"{ms / 1000:.2f} s"


def format_generation_stats(finished: inference_pb2.GenerationFinished | None) -> str:
    """`[finish: eos · 42 tokens · 12.3 tok/s · ttft 85 ms]`; zero rates and times are left out."""
    if finished is None:
        return "[finish: - · stream ended without a final message]"
    tokens = finished.usage.completion_tokens
    parts = [f"finish: {finish_reason_name(finished.finish_reason)}", f"{tokens} token{'' if tokens == 1 else 's'}"]
    if finished.timings.tokens_per_second > 0:
        parts.append(f"{finished.timings.tokens_per_second:.1f} tok/s")
    if finished.timings.time_to_first_token_ms > 0:
        parts.append(f"ttft {format_duration_ms(finished.timings.time_to_first_token_ms)}")
    return "[" + " · ".join(parts) + "]"


class ChoiceCollector:
    """Gathers a Generate stream per choice index: the deltas' text and the final GenerationFinished."""

    def __init__(self) -> None:
        self.parts: dict[int, list[str]] = {}
        self.finished: dict[int, inference_pb2.GenerationFinished] = {}

    def add(self, response: inference_pb2.GenerateResponse) -> None:
        self.parts.setdefault(response.index, []).append(response.text_delta)
        if response.HasField("finished"):
            self.finished[response.index] = response.finished

    def indices(self) -> list[int]:
        return sorted(set(self.parts) | set(self.finished))

    def text(self, index: int) -> str:
        """The final message's text when it came (it is authoritative), else the concatenated deltas."""
        finished = self.finished.get(index)
        if finished is not None and finished.text:
            return finished.text
        return "".join(self.parts.get(index, []))


def format_choices(collector: ChoiceCollector) -> str:
    """Every choice under a `--- choice i ---` header, in index order."""
    blocks = [f"--- choice {i} ---\n{collector.text(i)}" for i in collector.indices()]
    return "\n".join(blocks)


def chat_messages(history: Sequence[tuple[str, str]], system: str | None = None) -> list[dict[str, str]]:
    """A ChatInput-ready list: the system prompt (if any), then the (role, content) turns."""
    messages = [{"role": "system", "content": system}] if system else []
    return messages + [{"role": role, "content": content} for role, content in history]


def format_mib(n: int) -> str:
    """Bytes as whole MiB with thousands separators: 257949696 -> "246"."""
    return f"{n / (1 << 20):,.0f}"


def format_loaded_model(m: inference_pb2.LoadedModel) -> str:
    """`loaded ID: transformers, nf4, bfloat16 on cuda:0, 246 MiB, context 8192, 3.2 s`."""
    parts = [backend_name(m.backend), quantization_name(m.quantization)]
    if m.dtype or m.device:
        parts.append(" on ".join(p for p in (m.dtype, m.device) if p))
    parts.append(f"{format_mib(m.memory_bytes)} MiB")
    if m.context_length:
        parts.append(f"context {m.context_length}")
    if m.load_seconds:
        parts.append(f"{m.load_seconds:.1f} s")
    if m.adapters:
        parts.append("adapters " + ",".join(a.adapter_id for a in m.adapters))
    return f"loaded {m.model_id}: " + ", ".join(parts)


MODELS_HEADERS = ("ID", "KIND", "BASE MODEL", "LOADED", "BACKEND", "QUANT", "MEMORY MiB", "ADAPTERS")


def model_rows(response: inference_pb2.ListModelsResponse) -> list[list[str]]:
    """One row per store entry (MODELS_HEADERS), then loaded models that are not store entries.

    Adapters show `yes` when loaded on their base model, `on MODEL` when loaded on another one.
    """
    loaded = {m.model_id: m for m in response.loaded}
    adapter_hosts: dict[str, list[str]] = {}
    for m in response.loaded:
        for a in m.adapters:
            adapter_hosts.setdefault(a.adapter_id, []).append(m.model_id)

    def loaded_cells(m: inference_pb2.LoadedModel) -> list[str]:
        adapters = ",".join(a.adapter_id for a in m.adapters) or "-"
        return ["yes", backend_name(m.backend), quantization_name(m.quantization), format_mib(m.memory_bytes),
                adapters]

    rows: list[list[str]] = []
    seen: set[str] = set()
    for c in response.available:
        seen.add(c.id)
        head = [c.id, checkpoint_kind_name(c.kind), c.base_model_id or "-"]
        if c.kind == common_pb2.ADAPTER:
            hosts = adapter_hosts.get(c.id, [])
            if not hosts:
                state = "no"
            elif hosts == [c.base_model_id] or not c.base_model_id:
                state = "yes"
            else:
                state = "on " + ",".join(hosts)
            rows.append(head + [state, "-", "-", "-", "-"])
        elif c.id in loaded:
            rows.append(head + loaded_cells(loaded[c.id]))
        else:
            rows.append(head + ["no", "-", "-", "-", "-"])
    for model_id, m in loaded.items():
        if model_id not in seen:
            rows.append([model_id, "-", "-"] + loaded_cells(m))
    return rows


_PIECE_ESCAPES = {"\\": "\\\\", "'": "\\'", "\n": "\\n", "\t": "\\t", "\r": "\\r"}


def quote_piece(piece: str) -> str:
    """A token piece in single quotes with \\n, \\t, \\r, \\\\, \\' and other control characters escaped;
    everything else (spaces, non-ASCII, U+FFFD of a split character) shown as is."""
    out = []
    for ch in piece:
        if ch in _PIECE_ESCAPES:
            out.append(_PIECE_ESCAPES[ch])
        elif ord(ch) < 32 or ord(ch) == 127:
            out.append(f"\\x{ord(ch):02x}")
        else:
            out.append(ch)
    return "'" + "".join(out) + "'"


def format_token_summary(response: inference_pb2.TokenizeResponse) -> str:
    """`12 tokens · 3.42 chars/token · context 8192` (context left out when unknown)."""
    parts = [f"{response.count} token{'' if response.count == 1 else 's'}",
             f"{response.chars_per_token:.2f} chars/token"]
    if response.context_length:
        parts.append(f"context {response.context_length}")
    return " · ".join(parts)


def token_lines(response: inference_pb2.TokenizeResponse, compact: bool = False) -> list[str]:
    """The summary, then `id  'piece'` per token (ids right-aligned), or all pieces on one line if compact."""
    lines = [format_token_summary(response)]
    pieces = list(response.pieces) + [""] * max(0, len(response.token_ids) - len(response.pieces))
    if compact:
        if response.token_ids:
            lines.append(" ".join(quote_piece(p) for p in pieces))
        return lines
    width = max((len(str(t)) for t in response.token_ids), default=1)
    lines += [f"{t:>{width}}  {quote_piece(p)}" for t, p in zip(response.token_ids, pieces)]
    return lines


# ------------------------------------------------------------------------------------------- commands


def _print_json_lines(messages: Iterable) -> None:
    for m in messages:
        print(to_json(m))


def _job_row(job: trainer_pb2.Job) -> list:
    step = f"{job.current_step}/{job.total_steps}" if job.total_steps else str(job.current_step)
    loss = job.latest_metrics.get("loss")
    return [job.id, job.display_name or "-", job_state_name(job.state), job.method or "-", step,
            "-" if loss is None else f"{loss:.3f}", format_timestamp(job.created_at),
            job.result_checkpoint_id or "-"]


def _resolve_dataset(client: TrainerClient, ref: str) -> str:
    """A dataset id from an id or an existing local file (uploaded first; the note goes to stderr)."""
    if ref and Path(ref).is_file():
        ds = client.upload_dataset(ref)
        print(f"uploaded {ref} as dataset {ds.id} ({format_bytes(ds.size_bytes)})", file=sys.stderr)
        return ds.id
    return ref


def _placeholders(value, path: str = ""):
    """(dotted path, value) of every "<...>" placeholder string left in a request dict (e.g. a job file's
    `ppo.reward_model_id: "<reward model id>"`)."""
    if isinstance(value, dict):
        for key, item in value.items():
            yield from _placeholders(item, f"{path}.{key}" if path else str(key))
    elif isinstance(value, list):
        for i, item in enumerate(value):
            yield from _placeholders(item, f"{path}[{i}]")
    elif isinstance(value, str) and value.startswith("<") and value.endswith(">"):
        yield path, value


def cmd_train(client: TrainerClient, args: argparse.Namespace) -> int:
    base = load_request_file(args.file) if args.file else {}
    request = apply_train_overrides(base, args)
    dataset = _get(request, "dataset_id", "")
    if not isinstance(dataset, str) or not dataset or dataset.startswith("<"):
        print("error: no dataset: pass --dataset ID-or-local-path (or set dataset_id in the file)", file=sys.stderr)
        return EXIT_ERROR
    for key in ("base_model_id", "display_name"):
        value = _get(request, key, "")
        if isinstance(value, str) and value.startswith("<"):
            print(f"error: {key} is still the placeholder {value!r}; set it with a flag", file=sys.stderr)
            return EXIT_ERROR
    for path, value in _placeholders(request):
        if path != "dataset_id":
            print(f"error: {path} is still the placeholder {value!r}; set it in the file or with a flag",
                  file=sys.stderr)
            return EXIT_ERROR
    _set_path(request, ("dataset_id",), _resolve_dataset(client, dataset))
    job = client.start_training(to_start_training_request(request))
    if args.json:
        print(to_json(job), flush=True)
    else:
        print(job.id, flush=True)
    if not args.follow:
        return EXIT_OK
    return follow_job(client, job.id, json_mode=args.json)


def cmd_jobs(client: TrainerClient, args: argparse.Namespace) -> int:
    if args.jobs_cmd == "list":
        states = [s for arg in (args.state or []) for s in arg.split(",") if s]
        jobs = client.list_jobs(states=[parse_job_state(s) for s in states])
        if args.json:
            _print_json_lines(jobs)
        else:
            print(format_table(["ID", "NAME", "STATE", "METHOD", "STEP", "LOSS", "CREATED", "RESULT"],
                               (_job_row(j) for j in jobs)))
        return EXIT_OK
    if args.jobs_cmd == "get":
        job = client.get_job(args.job_id)
        if args.json:
            print(to_json(job))
            return EXIT_OK
        rows = [("id", job.id), ("name", job.display_name or "-"), ("state", job_state_name(job.state)),
                ("method", job.method or "-")]
        if job.HasField("evaluation"):
            ev = job.evaluation
            rows += [("model", ev.model_id or "-"), ("adapter", ev.adapter_id or "-"),
                     ("dataset", ev.dataset_id or "-"), ("metrics", ",".join(ev.metrics) or "default")]
        else:
            rows += [("base model", job.request.base_model_id or "-"), ("dataset", job.request.dataset_id or "-")]
        rows += [
            ("device", job.device or "-"),
            ("step", f"{job.current_step}/{job.total_steps}"), ("created", format_timestamp(job.created_at)),
            ("started", format_timestamp(job.started_at)), ("finished", format_timestamp(job.finished_at)),
            ("last sequence", job.last_sequence),
        ]
        rows += [(f"metric {k}", format_number(v)) for k, v in sorted(job.latest_metrics.items())]
        rows += [("checkpoint", c) for c in job.checkpoint_ids]
        if job.result_checkpoint_id:
            rows.append(("result checkpoint", job.result_checkpoint_id))
        print(format_table(["FIELD", "VALUE"], rows))
        if job.HasField("error") and (job.error.message or job.error.code):
            print("\n".join(job_outcome_lines(job)[1:]))
        return EXIT_OK
    if args.jobs_cmd == "cancel":
        job = client.cancel_job(args.job_id)
        print(to_json(job) if args.json else f"{job.id}: {job_state_name(job.state)}")
        return EXIT_OK
    raise AssertionError(args.jobs_cmd)


def cmd_metrics(client: TrainerClient, args: argparse.Namespace) -> int:
    return follow_job(client, args.job_id, after=args.after, follow=args.follow, json_mode=args.json,
                      samples=getattr(args, "samples", False))


def cmd_checkpoints(client: TrainerClient, args: argparse.Namespace) -> int:
    ckpts = client.list_checkpoints(job_id=args.job or "", kind=args.kind or 0, base_model_id=args.base_model or "")
    if args.json:
        _print_json_lines(ckpts)
        return EXIT_OK
    print(format_table(CHECKPOINT_HEADERS, checkpoint_rows(ckpts)))
    return EXIT_OK


def cmd_evaluate(client: TrainerClient, args: argparse.Namespace) -> int:
    dataset_id = _resolve_dataset(client, args.dataset)
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
            print(format_table(["METRIC", "VALUE"], evaluation_rows(metrics_found)))
    return code


def validation_report_lines(report: trainer_pb2.ValidationReport) -> list[str]:
    """Every violation (`row 7  messages[1].role  reason  hint: ...`), then the counts and the verdict."""
    lines = [format_violation(v) for v in report.violations]
    if report.truncated:
        lines.append(f"... more violations not listed (showing {len(report.violations)})")
    lines.append(f"format {dataset_format_name(report.format)}: {report.total_rows} rows, "
                 f"{report.valid_rows} valid, {report.bad_rows} bad")
    lines.append("ok" if report.ok else "not ok")
    return lines


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
            _print_json_lines(datasets)
        else:
            fmt = lambda f: trainer_pb2.FileFormat.Name(f).removeprefix("FILE_FORMAT_").lower()  # noqa: E731
            print(format_table(["ID", "NAME", "FORMAT", "SIZE", "SHA256", "CREATED"],
                               [[d.id, d.name, fmt(d.file_format), format_bytes(d.size_bytes), d.sha256[:12],
                                 format_timestamp(d.created_at)] for d in datasets]))
        return EXIT_OK
    if args.datasets_cmd == "validate":
        dataset_id = _resolve_dataset(client, args.dataset)
        report = client.validate_dataset(dataset_id, method=args.method, format=parse_dataset_format(args.format),
                                         max_violations=args.max_violations)
        if args.json:
            print(to_json(report))
        else:
            print("\n".join(validation_report_lines(report)))
        return EXIT_OK if report.ok else EXIT_FAILED
    raise AssertionError(args.datasets_cmd)


# -------------------------------------------------------------------------------- inference commands


def _color(stream: TextIO) -> bool:
    return bool(getattr(stream, "isatty", lambda: False)()) and not os.environ.get("NO_COLOR")


def ensure_loaded(client: InferenceClient, args: argparse.Namespace, err: TextIO) -> None:
    """LoadModel with the --quantization/--backend flags; an already loaded model is fine (a note)."""
    try:
        loaded = client.load_model(args.model_id, quantization=args.quantization or "none",
                                   backend=args.backend or "transformers")
    except grpc.RpcError as e:
        if e.code() != grpc.StatusCode.ALREADY_EXISTS:
            raise
        err.write(dim(f"{args.model_id} is already loaded ({e.details()})", _color(err)) + "\n")
    else:
        err.write(dim(format_loaded_model(loaded), _color(err)) + "\n")
    err.flush()


def run_generation(client: InferenceClient, args: argparse.Namespace, *, messages=None, text=None,
                   out: TextIO, err: TextIO) -> ChoiceCollector:
    """One Generate call, printed: choice 0's deltas as they arrive (n = 1), every choice under a header at
    the end (n > 1), JSON lines with --json; stats lines on stderr. The call is cancelled if this raises
    (Ctrl-C: KeyboardInterrupt), which stops the server's generation."""
    n = args.n or 1
    live = not args.json and n == 1
    collector = ChoiceCollector()
    call = client.generate(args.model_id, messages=messages, text=text, adapter_id=args.adapter or "",
                           **sampling_kwargs(args))
    try:
        for response in call:
            collector.add(response)
            if args.json:
                out.write(to_json(response) + "\n")
                out.flush()
            elif live and response.index == 0 and response.text_delta:
                out.write(response.text_delta)
                out.flush()
    finally:
        call.cancel()  # no-op when the stream is done
    if args.json:
        return collector
    color = _color(err)
    if live:
        out.write("\n")
        out.flush()
        err.write(dim(format_generation_stats(collector.finished.get(0)), color) + "\n")
    else:
        for i in collector.indices():
            out.write(f"--- choice {i} ---\n{collector.text(i)}\n")
            out.flush()
            err.write(dim(format_generation_stats(collector.finished.get(i)), color) + "\n")
            err.flush()
    err.flush()
    return collector


def _generation_ok(collector: ChoiceCollector) -> bool:
    bad = (inference_pb2.FINISH_REASON_CANCELLED, inference_pb2.FINISH_REASON_DEADLINE)
    return bool(collector.finished) and all(f.finish_reason not in bad for f in collector.finished.values())


def chat_repl(client: InferenceClient, args: argparse.Namespace, *, out: TextIO, err: TextIO,
              read_line=input) -> int:
    """The interactive loop: keeps the conversation; /reset, /exit (or Ctrl-D); Ctrl-C stops a reply."""
    try:
        import readline  # noqa: F401  (line editing and history for input(), where available)
    except ImportError:
        pass
    color = _color(err)
    mode = "raw text, no history" if args.raw else "/reset starts over"
    err.write(dim(f"{args.model_id}: {mode}; /exit or Ctrl-D quits; Ctrl-C stops a reply", color) + "\n")
    history: list[tuple[str, str]] = []
    while True:
        try:
            line = read_line(">>> ")
        except EOFError:
            err.write("\n")
            return EXIT_OK
        except KeyboardInterrupt:
            err.write("\n" + dim("(/exit or Ctrl-D quits)", color) + "\n")
            continue
        command = line.strip()
        if not command:
            continue
        if command in ("/exit", "/quit"):
            return EXIT_OK
        if command == "/reset":
            history.clear()
            err.write(dim("conversation cleared", color) + "\n")
            continue
        if command.startswith("/") and " " not in command:
            err.write(dim(f"unknown command {command}; /reset, /exit", color) + "\n")
            continue
        try:
            if args.raw:
                run_generation(client, args, text=line, out=out, err=err)
                continue
            history.append(("user", line))
            collector = run_generation(client, args, messages=chat_messages(history, args.system), out=out, err=err)
        except KeyboardInterrupt:
            out.write("\n")
            out.flush()
            err.write(dim("[cancelled; this turn is not kept]", color) + "\n")
            if history and history[-1][0] == "user" and not args.raw:
                history.pop()
            continue
        except grpc.RpcError as e:
            out.flush()
            err.write("\n".join(format_rpc_error(e)) + "\n")
            if history and history[-1][0] == "user" and not args.raw:
                history.pop()
            continue
        history.append(("assistant", collector.text(0)))


def cmd_chat(client: InferenceClient, args: argparse.Namespace) -> int:
    if args.raw and args.system:
        raise ValueError("--system needs a chat; leave out --raw (or put the system text in the prompt)")
    if args.load or args.quantization or args.backend:
        ensure_loaded(client, args, sys.stderr)
    prompt = args.prompt
    if prompt is None:
        if sys.stdin.isatty():
            return chat_repl(client, args, out=sys.stdout, err=sys.stderr)
        prompt = sys.stdin.read()
        if not args.raw:
            prompt = prompt.rstrip("\n")
    if not prompt.strip():
        raise ValueError("empty prompt: pass PROMPT, pipe it on stdin, or run on a terminal for a chat")
    if args.raw:
        collector = run_generation(client, args, text=prompt, out=sys.stdout, err=sys.stderr)
    else:
        collector = run_generation(client, args, messages=chat_messages([("user", prompt)], args.system),
                                   out=sys.stdout, err=sys.stderr)
    return EXIT_OK if _generation_ok(collector) else EXIT_FAILED


def cmd_models(client: InferenceClient, args: argparse.Namespace) -> int:
    action = args.models_cmd or "list"
    if action == "list":
        response = client.list_models()
        print(to_json(response) if args.json else format_table(MODELS_HEADERS, model_rows(response)))
        return EXIT_OK
    if action == "load":
        loaded = client.load_model(args.model_id, quantization=args.quantization, dtype=args.dtype,
                                   backend=args.backend, double_quant=args.double_quant,
                                   compute_dtype=args.compute_dtype or "")
        print(to_json(loaded) if args.json else format_loaded_model(loaded))
        return EXIT_OK
    if action == "unload":
        client.unload_model(args.model_id)
        print("{}" if args.json else f"unloaded {args.model_id}")
        return EXIT_OK
    if action == "load-adapter":
        adapter = client.load_adapter(args.adapter_id, model_id=args.model or "")
        print(to_json(adapter) if args.json else f"loaded adapter {adapter.adapter_id} on {adapter.base_model_id}")
        return EXIT_OK
    if action == "unload-adapter":
        client.unload_adapter(args.adapter_id, model_id=args.model or "")
        print("{}" if args.json else f"unloaded adapter {args.adapter_id}")
        return EXIT_OK
    raise AssertionError(action)


def cmd_tokens(client: InferenceClient, args: argparse.Namespace) -> int:
    text = args.text if args.text is not None else sys.stdin.read()
    if args.chat:
        response = client.tokenize(args.model_id, messages=chat_messages([("user", text)], args.system))
    else:
        if args.system:
            raise ValueError("--system needs --chat")
        response = client.tokenize(args.model_id, text=text)
    print(to_json(response) if args.json else "\n".join(token_lines(response, compact=args.compact)))
    return EXIT_OK


# --------------------------------------------------------------------------------------------- parser


def build_parser() -> argparse.ArgumentParser:
    # Global options work before or after the subcommand: the subparsers' copies default to SUPPRESS so
    # they only override what the main parser set when given.
    common = argparse.ArgumentParser(add_help=False)
    common.add_argument("--address", default=argparse.SUPPRESS,
                        help="trainer HOST:PORT (default $LMFORGE_TRAINER_ADDRESS or %s)" % DEFAULT_ADDRESS)
    common.add_argument("--inference-address", default=argparse.SUPPRESS,
                        help="inference HOST:PORT (default $%s or %s)" % (INFERENCE_ADDRESS_ENV,
                                                                          DEFAULT_INFERENCE_ADDRESS))
    common.add_argument("--json", action="store_true", default=argparse.SUPPRESS,
                        help="print JSON (one object per line) instead of tables")

    parser = argparse.ArgumentParser(prog="lmforge",
                                     description="Client of the lmforge trainer and inference services.")
    parser.add_argument("--address", default=os.environ.get("LMFORGE_TRAINER_ADDRESS") or DEFAULT_ADDRESS,
                        help="trainer HOST:PORT (default $LMFORGE_TRAINER_ADDRESS or %s)" % DEFAULT_ADDRESS)
    parser.add_argument("--inference-address",
                        default=os.environ.get(INFERENCE_ADDRESS_ENV) or DEFAULT_INFERENCE_ADDRESS,
                        help="inference HOST:PORT (default $%s or %s)" % (INFERENCE_ADDRESS_ENV,
                                                                          DEFAULT_INFERENCE_ADDRESS))
    parser.add_argument("--json", action="store_true", default=False,
                        help="print JSON (one object per line) instead of tables")
    parser.add_argument("--timeout", type=float, default=None,
                        help="deadline of each unary call, seconds (default 30 trainer, 60 inference)")
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")

    train = sub.add_parser("train", parents=[common], help="start a training job",
                           description="Start a job from a YAML/JSON request file and/or flags (flags win).")
    train.add_argument("-f", "--file", help="StartTrainingRequest as YAML or JSON (proto field names)")
    train.add_argument("--base-model", help="store id of the model to train")
    train.add_argument("--dataset", help="dataset id, or a local file to upload first")
    train.add_argument("--method", choices=[*METHODS, "continued-pretrain"], help="training method (default sft)")
    train.add_argument("--adapter", choices=sorted(ADAPTERS), help="which weights to train")
    train.add_argument("--rank", type=int, help="LoRA rank")
    train.add_argument("--alpha", type=float, help="LoRA alpha")
    train.add_argument("--epochs", type=float, help="passes over the data (ignored with --max-steps)")
    train.add_argument("--max-steps", type=int, help="optimizer steps")
    train.add_argument("--lr", type=float, help="peak learning rate")
    train.add_argument("--batch-size", type=int, help="per-device micro-batch")
    train.add_argument("--grad-accum", type=int, help="gradient accumulation steps")
    train.add_argument("--max-seq-length", type=int, help="tokens per example")
    train.add_argument("--packing", action=argparse.BooleanOptionalAction, default=None,
                       help="pack short examples into each sequence")
    train.add_argument("--seed", type=int)
    train.add_argument("--save-every", type=int, help="save a checkpoint every N steps")
    train.add_argument("--eval-split", type=float, help="fraction of rows held out for evaluation")
    train.add_argument("--eval-every", type=int, help="evaluate every N steps (default: only at the end)")
    train.add_argument("--metric-for-best", help="eval metric that marks the best checkpoint (default eval_loss)")
    train.add_argument("--early-stopping-patience", type=int,
                       help="stop after N evaluations without improvement of --metric-for-best")
    train.add_argument("--beta", type=float, help="dpo: strength of the pull towards the reference (default 0.1)")
    train.add_argument("--loss", choices=PREFERENCE_LOSSES, help="dpo: the loss of the DPO family (default sigmoid)")
    train.add_argument("--new-token", action="append", metavar="TERM",
                       help="sft / continued-pretrain: add TERM to the vocabulary as one token (repeatable)")
    train.add_argument("--reward-model", metavar="ID",
                       help="ppo (RLOO): store id of the REWARD_MODEL that scores rollouts")
    train.add_argument("--teacher", metavar="ID", help="distill: store id of the teacher model")
    train.add_argument("--name", help="display name")
    train.add_argument("--label", action="append", metavar="KEY=VALUE", help="job label (repeatable)")
    train.add_argument("--follow", action="store_true", help="then follow the metrics like `lmforge metrics`")
    train.set_defaults(func=cmd_train)

    jobs = sub.add_parser("jobs", parents=[common], help="list, show or cancel jobs")
    jobs_sub = jobs.add_subparsers(dest="jobs_cmd", required=True, metavar="ACTION")
    jl = jobs_sub.add_parser("list", parents=[common], help="jobs, newest first")
    jl.add_argument("--state", action="append", help="only jobs in this state (repeatable or comma-separated)")
    jg = jobs_sub.add_parser("get", parents=[common], help="one job in detail")
    jg.add_argument("job_id")
    jc = jobs_sub.add_parser("cancel", parents=[common], help="stop a job")
    jc.add_argument("job_id")
    jobs.set_defaults(func=cmd_jobs)

    metrics = sub.add_parser("metrics", parents=[common], help="follow a job's events until it ends")
    metrics.add_argument("job_id")
    metrics.add_argument("--after", type=int, default=0, help="only events with a sequence above N")
    metrics.add_argument("--no-follow", dest="follow", action="store_false", help="print what exists and stop")
    metrics.add_argument("--samples", action="store_true",
                         help="RL jobs: print rollout samples in full (prompt, each completion, its rewards)")
    metrics.set_defaults(func=cmd_metrics)

    ckpt = sub.add_parser("checkpoints", parents=[common], help="list checkpoints in the store")
    ckpt.add_argument("--job", help="only this job's")
    ckpt.add_argument("--kind", choices=["base", "full", "adapter"])
    ckpt.add_argument("--base-model", help="only those trained from this model")
    ckpt.set_defaults(func=cmd_checkpoints)

    ev = sub.add_parser(
        "evaluate", parents=[common], help="score a model or adapter on a dataset (an Evaluate job)",
        description="Text rows give perplexity; prompt/answer rows are answered greedily and compared with "
                    "their reference. Results land in the entry's manifest (`lmforge checkpoints`).")
    ev.add_argument("model_id", metavar="MODEL", help="store id of the model (or of an adapter) to score")
    ev.add_argument("--dataset", required=True, help="dataset id, or a local file to upload first")
    ev.add_argument("--adapter", help="store id of a LoRA adapter trained on MODEL")
    ev.add_argument("--metric", action="append", metavar="NAME",
                    help="perplexity, exact_match, accuracy, f1, macro_f1, bleu or rouge (repeatable or "
                         "comma-separated; default: perplexity for text, exact_match,f1,bleu,rouge for answers)")
    ev.add_argument("--max-new-tokens", type=int, help="greedy generation budget per answer [128]")
    ev.add_argument("--max-samples", type=int, help="score only the first N rows [all]")
    ev.add_argument("--batch-size", type=int, help="rows per batch [8]")
    ev.add_argument("--format", default="auto",
                    help="messages, alpaca, sharegpt, prompt_completion, text or auto")
    ev.add_argument("--name", help="display name")
    ev.add_argument("--follow", action="store_true",
                    help="follow the job like `lmforge metrics`, then print the results")
    ev.set_defaults(func=cmd_evaluate)

    ds = sub.add_parser("datasets", parents=[common], help="upload, list and validate datasets")
    ds_sub = ds.add_subparsers(dest="datasets_cmd", required=True, metavar="ACTION")
    du = ds_sub.add_parser("upload", parents=[common], help="upload a JSONL/JSON/Parquet/CSV file")
    du.add_argument("path")
    du.add_argument("--name", help="stored name (default: the file name)")
    ds_sub.add_parser("list", parents=[common], help="stored datasets")
    dv = ds_sub.add_parser("validate", parents=[common], help="check every row; exit 1 if any is bad")
    dv.add_argument("dataset", metavar="ID-or-PATH", help="dataset id, or a local file to upload first")
    dv.add_argument("--method", default="sft")
    dv.add_argument("--format", default="auto",
                    help="messages, alpaca, sharegpt, prompt_completion, text, preference or auto")
    dv.add_argument("--max-violations", type=int, default=1000)
    ds.set_defaults(func=cmd_datasets)

    # -- inference service
    quant_choices = ["none", "int8", "nf4", "fp4"]
    backend_choices = ["transformers", "vllm"]
    chat = sub.add_parser(
        "chat", parents=[common], help="generate with a loaded model (one-shot, piped or interactive)",
        description="With PROMPT: stream one reply. Without, on a terminal: an interactive chat (/reset, /exit, "
                    "Ctrl-D quits, Ctrl-C stops a reply). Without, piped: stdin is the prompt. Stats go to stderr.")
    chat.add_argument("model_id", metavar="MODEL_ID")
    chat.add_argument("prompt", nargs="?", metavar="PROMPT")
    chat.add_argument("--adapter", help="store id of a LoRA adapter trained on MODEL_ID")
    chat.add_argument("--system", help="system prompt")
    chat.add_argument("--raw", action="store_true", help="send the prompt as raw text, not as a chat")
    sampling = chat.add_argument_group("sampling (unset: server defaults)")
    sampling.add_argument("--temperature", type=float, help="0 = greedy [1.0]")
    sampling.add_argument("--top-p", type=float, help="nucleus sampling (0, 1] [1.0]")
    sampling.add_argument("--top-k", type=int, help="0 = off [0]")
    sampling.add_argument("--min-p", type=float, help="[0, 1] [0]")
    sampling.add_argument("--repetition-penalty", type=float, help="1 = off [1.0]")
    sampling.add_argument("--presence-penalty", type=float, help="[-2, 2] [0]")
    sampling.add_argument("--frequency-penalty", type=float, help="[-2, 2] [0]")
    sampling.add_argument("--seed", type=int, help="same seed + same request = same output")
    sampling.add_argument("--max-new-tokens", type=int, help="[256]")
    sampling.add_argument("--stop", action="append", metavar="S", help="stop sequence (repeatable)")
    sampling.add_argument("--n", type=int, help="number of choices, printed under headers when > 1 [1]")
    loading = chat.add_argument_group("loading")
    loading.add_argument("--load", action="store_true",
                         help="LoadModel first (a model already loaded is fine); implied by the two below")
    loading.add_argument("--quantization", choices=quant_choices, help="with --load [none]")
    loading.add_argument("--backend", choices=backend_choices, help="with --load [transformers]")
    chat.set_defaults(func=cmd_chat, service="inference")

    models = sub.add_parser("models", parents=[common], help="store entries and loaded models; load/unload",
                            description="Without an action: a table of every store entry and what is loaded.")
    models_sub = models.add_subparsers(dest="models_cmd", metavar="ACTION")
    models_sub.add_parser("list", parents=[common], help="the table (the default)")
    ml = models_sub.add_parser("load", parents=[common], help="load a base model or full checkpoint")
    ml.add_argument("model_id", metavar="ID")
    ml.add_argument("--quantization", choices=quant_choices, default="none")
    ml.add_argument("--backend", choices=backend_choices, default="transformers")
    ml.add_argument("--dtype", default="auto", help="auto, float32, bfloat16 or float16")
    ml.add_argument("--double-quant", action="store_true", help="4-bit only: quantize the constants too")
    ml.add_argument("--compute-dtype", help="4-bit only: bfloat16, float16 or float32 (default auto)")
    mu = models_sub.add_parser("unload", parents=[common], help="free a loaded model")
    mu.add_argument("model_id", metavar="ID")
    mla = models_sub.add_parser("load-adapter", parents=[common], help="serve a store adapter on its base model")
    mla.add_argument("adapter_id", metavar="ADAPTER_ID")
    mla.add_argument("--model", help="loaded model to attach it to (default: the adapter's base model)")
    mua = models_sub.add_parser("unload-adapter", parents=[common], help="stop serving an adapter")
    mua.add_argument("adapter_id", metavar="ADAPTER_ID")
    mua.add_argument("--model", help="the model it is loaded on (default: all)")
    models.set_defaults(func=cmd_models, service="inference", models_cmd=None)

    tokens = sub.add_parser("tokens", parents=[common], help="count and show the tokens of a text",
                            description="Token count, chars/token and one `id  'piece'` line per token.")
    tokens.add_argument("model_id", metavar="MODEL_ID")
    tokens.add_argument("text", nargs="?", metavar="TEXT", help="default: read stdin")
    tokens.add_argument("--chat", action="store_true",
                        help="tokenize TEXT as a user message rendered with the chat template")
    tokens.add_argument("--system", help="with --chat: a system prompt before it")
    tokens.add_argument("--compact", action="store_true", help="all pieces on one line")
    tokens.set_defaults(func=cmd_tokens, service="inference")
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    import yaml

    parser = build_parser()
    args = parser.parse_args(argv)
    try:
        if getattr(args, "service", "trainer") == "inference":
            client = InferenceClient(args.inference_address, timeout=args.timeout or 60.0)
        else:
            client = TrainerClient(args.address, timeout=args.timeout or 30.0)
        with client:
            return args.func(client, args)
    except grpc.RpcError as err:
        sys.stdout.flush()
        print("\n".join(format_rpc_error(err)), file=sys.stderr)
        return EXIT_ERROR
    except (OSError, ValueError, json_format.ParseError, yaml.YAMLError) as err:  # bad file, bad enum name, bad field
        sys.stdout.flush()
        print(f"error: {err}", file=sys.stderr)
        return EXIT_ERROR
    except KeyboardInterrupt:
        print(file=sys.stderr)
        return 130


if __name__ == "__main__":
    sys.exit(main())
