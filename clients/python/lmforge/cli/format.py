"""Pure formatting of the CLI: messages in, strings out (no I/O, no terminal codes; tables and the live
progress bar are drawn by lmforge.cli.console). Both services: events, jobs, checkpoints, evaluations, errors,
generation stats, models and tokens."""

from __future__ import annotations

import math
from collections.abc import Iterable
from datetime import datetime, timezone

import grpc
from google.protobuf import json_format

from lmforge.client import (
    backend_name,
    checkpoint_kind_name,
    dataset_format_name,
    finish_reason_name,
    job_state_name,
    quantization_name,
)
from lmforge.v1 import common_pb2, inference_pb2, trainer_pb2

# ----------------------------------------------------------------------------------------- numbers, time


def format_eta(seconds: float | None) -> str:
    """35 -> "0:35", 3725 -> "1:02:05"; None, negative or NaN -> "?"."""
    if seconds is None or not math.isfinite(seconds) or seconds < 0:
        return "?"
    total = int(round(seconds))
    hours, rest = divmod(total, 3600)
    minutes, secs = divmod(rest, 60)
    return f"{hours}:{minutes:02d}:{secs:02d}" if hours else f"{minutes}:{secs:02d}"


def format_number(value: float) -> str:
    """Compact metric value: 1.234, 0.0002 -> 2.0e-04, 1234567 -> 1.23e+06."""
    if value != 0 and (abs(value) < 1e-3 or abs(value) >= 1e6):
        return f"{value:.2e}" if abs(value) >= 1e6 else f"{value:.1e}"
    if float(value).is_integer():
        return str(int(value))
    return f"{value:.4g}"


def format_bytes(n: int) -> str:
    """1536 -> "1.5 KiB"."""
    size = float(n)
    for unit in ("B", "KiB", "MiB", "GiB", "TiB"):
        if size < 1024 or unit == "TiB":
            return f"{int(size)} B" if unit == "B" else f"{size:.1f} {unit}"
        size /= 1024
    return f"{n} B"  # unreachable


def format_mib(n: int) -> str:
    """Bytes as whole MiB with thousands separators: 257949696 -> "246"."""
    return f"{n / (1 << 20):,.0f}"


def format_duration_ms(ms: float) -> str:
    """85.2 -> "85 ms", 1234 -> "1.23 s"."""
    return f"{ms:.0f} ms" if ms < 1000 else f"{ms / 1000:.2f} s"


def format_timestamp(ts) -> str:
    """A google.protobuf.Timestamp as `YYYY-MM-DD HH:MM:SS` UTC; "-" when unset."""
    if not ts.seconds and not ts.nanos:
        return "-"
    return datetime.fromtimestamp(ts.seconds, tz=timezone.utc).strftime("%Y-%m-%d %H:%M:%S")


def to_json(message) -> str:
    """One-line JSON of a message, field names as in the proto (the same names request files use)."""
    return json_format.MessageToJson(message, indent=None, preserving_proto_field_name=True)


def one_line(text: str, max_chars: int) -> str:
    """Text on one line (newlines shown as ⏎), cut to max_chars with an ellipsis."""
    flat = text.replace("\r\n", "\n").replace("\n", "⏎").replace("\t", " ")
    return flat if len(flat) <= max_chars else flat[:max(max_chars - 1, 0)] + "…"


# ------------------------------------------------------------------------------------ training events


def progress_fraction(step: int, total_steps: int, values: dict[str, float]) -> float | None:
    """The job's progress in [0, 1]: the event's `progress` value, else step / total_steps; None if unknown."""
    progress = values.get("progress")
    if progress is None and total_steps > 0:
        progress = step / total_steps
    return None if progress is None else min(max(progress, 0.0), 1.0)


def format_progress_line(step: int, total_steps: int, values: dict[str, float]) -> str:
    """`42% step 21/50 loss 1.234 lr 1.9e-04 3,210 tok/s ETA 0:35` (on a terminal, console draws a bar before it).

    `values` is a MetricsEvent's map (TRL names: loss, learning_rate, tokens_per_second, progress,
    eta_seconds); parts whose value is missing are left out.
    """
    progress = progress_fraction(step, total_steps, values)
    parts: list[str] = []
    if progress is not None:
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


def format_metrics_line(event: trainer_pb2.TrainingEvent, total_steps: int = 0) -> str:
    """One line for a metrics event: the progress line for train metrics, `eval step N: k v ...` for eval."""
    metrics = event.metrics
    values = dict(metrics.values)
    total = metrics.total_steps or total_steps
    if metrics.phase == "eval" and values and set(values) <= {"progress", "eta_seconds"}:
        # an Evaluate job's progress (its results come in a last eval event with every metric)
        return "eval " + format_progress_line(event.step, total, values)
    if metrics.phase == "eval":
        shown = " ".join(f"{k} {format_number(v)}" for k, v in sorted(values.items()))
        return f"eval step {event.step}: {shown}".rstrip(": ")
    return format_progress_line(event.step, total, values)


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
    if kind == "resumed":
        resumed = event.resumed
        where = f"from step {resumed.from_step}" if resumed.from_step else "from the start"
        return f"resumed: attempt {resumed.attempt} {where} ({resumed.reason}); later steps are run again"
    return f"event {event.sequence}"


def _rollouts_where(event: trainer_pb2.TrainingEvent) -> str:
    rollouts = event.rollouts
    return f"round {rollouts.round} step {event.step}" if rollouts.round else f"step {event.step}"


def format_rollouts_summary(event: trainer_pb2.TrainingEvent) -> str:
    """`rollouts step 10: 2 prompt(s) x 4 completions, mean reward 0.62 (--samples shows them)`."""
    rollouts = event.rollouts
    completions = [c for sample in rollouts.samples for c in sample.completions]
    sizes = sorted({len(sample.completions) for sample in rollouts.samples})
    group = f"{sizes[0]}" if len(sizes) == 1 else "/".join(map(str, sizes))
    mean = sum(c.reward for c in completions) / len(completions) if completions else 0.0
    return (f"rollouts {_rollouts_where(event)}: {len(rollouts.samples)} prompt(s) x {group} completions, mean "
            f"reward {format_number(mean)} (--samples shows them)")


def format_rollouts_lines(event: trainer_pb2.TrainingEvent, max_chars: int = 120) -> list[str]:
    """A rollout samples event in full: each prompt, then each completion of its group with its total
    reward and each reward function's score (texts on one line each, cut to `max_chars`)."""
    lines = [f"rollouts {_rollouts_where(event)}:"]
    for sample in event.rollouts.samples:
        lines.append(f"  prompt: {one_line(sample.prompt, max_chars)}")
        for i, completion in enumerate(sample.completions, 1):
            scores = ", ".join(f"{name} {format_number(value)}" for name, value in sorted(completion.rewards.items()))
            lines.append(f"    [{i}] reward {format_number(completion.reward)}" + (f" ({scores})" if scores else ""))
            lines.append(f"        {one_line(completion.text, max_chars) if completion.text else '(empty)'}")
    return lines


# ---------------------------------------------------------------------------------------------- errors


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


# ------------------------------------------------------------------------------------ jobs and datasets

JOB_HEADERS = ("ID", "NAME", "STATE", "METHOD", "STEP", "LOSS", "CREATED", "RESULT")


def job_row(job: trainer_pb2.Job) -> list[str]:
    """One row of `lmforge jobs list` (JOB_HEADERS)."""
    step = f"{job.current_step}/{job.total_steps}" if job.total_steps else str(job.current_step)
    loss = job.latest_metrics.get("loss")
    return [job.id, job.display_name or "-", job_state_name(job.state), job.method or "-", step,
            "-" if loss is None else f"{loss:.3f}", format_timestamp(job.created_at), job.result_checkpoint_id or "-"]


def job_detail_rows(job: trainer_pb2.Job) -> list[tuple[str, object]]:
    """(field, value) rows of `lmforge jobs get`: the evaluated model/adapter/dataset for an evaluate job."""
    rows: list[tuple[str, object]] = [("id", job.id), ("name", job.display_name or "-"),
                                      ("state", job_state_name(job.state)), ("method", job.method or "-")]
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
    return rows


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


DATASET_HEADERS = ("ID", "NAME", "FORMAT", "SIZE", "SHA256", "CREATED")


def dataset_row(d: trainer_pb2.Dataset) -> list[str]:
    """One row of `lmforge datasets list` (DATASET_HEADERS)."""
    file_format = trainer_pb2.FileFormat.Name(d.file_format).removeprefix("FILE_FORMAT_").lower()
    return [d.id, d.name, file_format, format_bytes(d.size_bytes), d.sha256[:12], format_timestamp(d.created_at)]


def validation_report_lines(report: trainer_pb2.ValidationReport) -> list[str]:
    """Every violation (`row 7  messages[1].role  reason  hint: ...`), then the counts and the verdict."""
    lines = [format_violation(v) for v in report.violations]
    if report.truncated:
        lines.append(f"... more violations not listed (showing {len(report.violations)})")
    lines.append(f"format {dataset_format_name(report.format)}: {report.total_rows} rows, "
                 f"{report.valid_rows} valid, {report.bad_rows} bad")
    lines.append("ok" if report.ok else "not ok")
    return lines


def dataset_stats_lines(stats: trainer_pb2.DatasetStats, bar_width: int = 30) -> list[str]:
    """DescribeDataset's answer as a short report: counts, lengths, truncation, epochs, the per-language
    ratios, a length histogram (one bar per bucket) and the server's notes."""
    truncated = (f"nothing (text is packed into blocks of {stats.max_seq_length})" if stats.packed else
                 f"{stats.truncated_sequences:,} sequences over {stats.max_seq_length}, {stats.truncated_tokens:,} "
                 f"tokens lost; {stats.trained_tokens_after_truncation:,} trained tokens kept")
    lines = [
        f"dataset {stats.dataset_id} ({dataset_format_name(stats.format)}) for {stats.method} on {stats.base_model_id}",
        f"rows        {stats.rows:,} ({stats.invalid_rows:,} invalid, {stats.duplicate_rows:,} duplicates)",
        f"sequences   {stats.sequences:,}",
        f"tokens      {stats.total_tokens:,} total, {stats.trained_tokens:,} trained",
        f"length      p50 {stats.p50_tokens:,}  p90 {stats.p90_tokens:,}  p99 {stats.p99_tokens:,}  "
        f"max {stats.max_tokens:,}  mean {stats.mean_tokens:.1f}",
        f"truncated   {truncated}",
        f"epochs      {stats.epochs} -> {stats.estimated_trained_tokens:,} trained tokens",
    ]
    for lang in stats.languages:
        unit = "Han character" if lang.language == "zh" else "word"
        lines.append(f"{lang.language:<11} {lang.texts:,} texts: {lang.characters_per_token:.2f} characters/token, "
                     f"{lang.tokens_per_word:.2f} tokens/{unit}")
    counts = list(stats.histogram_counts)
    if counts:
        lines.append("histogram   tokens per sequence")
        top = max(counts) or 1
        edges = list(stats.histogram_edges)
        for low, high, count in zip(edges, edges[1:], counts):
            bar = "#" * round(bar_width * count / top)
            lines.append(f"  ({low:>6}, {high:>6}]  {bar:<{bar_width}} {count:,}")
    lines.extend(f"note: {note}" for note in stats.notes)
    lines.append(f"{stats.rows_per_second:,.0f} rows/s ({stats.seconds:.2f} s on the server)")
    return lines


# ------------------------------------------------------------------------- checkpoints and evaluations

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


# ----------------------------------------------------------------------------------- inference service


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
