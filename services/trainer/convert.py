"""Proto <-> domain conversion for the trainer, in one module (DESIGN.md §5.3). Translation only.

`spec_from_request` turns a StartTrainingRequest into a `TrainingSpec`: the fields every method shares
here, the method's own message through its definition (`services.trainer.methods`). Every field is
checked on the way and all violations come back at once as INVALID_ARGUMENT, so a client fixes its
request in one go. Whatever needs the checkpoint store or the dataset registry (ids exist, kinds fit,
chat template present) is admission's (services/trainer/admission.py), which runs right after.
"""

from __future__ import annotations

from lmforge.v1 import common_pb2, trainer_pb2
from services.common.convert import manifest_to_proto, timestamp
from services.common.errors import InvalidArgument, Violation
from services.common.store import Manifest
from services.trainer import methods
from services.trainer.data import DatasetFormat, FileFormat, ValidationResult
from services.trainer.data.stats import DatasetStats
from services.trainer.datasets import StoredDataset
from services.trainer.jobdb import ErrorInfo, Event, Job, JobState
from services.trainer.methods.definition import RequestChecks, enum_choice, optional
from services.trainer.spec import AdapterSpec, DatasetFile, EvalSpec, Hyperparameters, TrainingSpec

SCHEDULERS = ("linear", "cosine", "cosine_with_restarts", "polynomial", "constant", "constant_with_warmup",
              "inverse_sqrt", "reduce_lr_on_plateau", "cosine_with_min_lr", "warmup_stable_decay")
PRECISIONS = ("auto", "fp32", "bf16", "fp16")
# Full-state checkpoint interval when the request's checkpoints.every_steps is 0 (only the final entry).
DEFAULT_STATE_EVERY_STEPS = 50

_JOB_STATES = {state: getattr(trainer_pb2, f"JOB_STATE_{state.value}") for state in JobState}
_DATASET_FORMATS = {fmt: getattr(trainer_pb2, f"DATASET_FORMAT_{fmt.name}") for fmt in DatasetFormat}
_FILE_FORMATS = {ff: getattr(trainer_pb2, f"FILE_FORMAT_{ff.name}") for ff in FileFormat}
# proto enum number -> domain value
_JOB_STATES_BY_NUMBER = {number: state for state, number in _JOB_STATES.items()}
_DATASET_FORMATS_BY_NUMBER = {number: fmt for fmt, number in _DATASET_FORMATS.items()}
_FILE_FORMATS_BY_NUMBER = {number: ff for ff, number in _FILE_FORMATS.items()}


def method_names() -> list[str]:
    """The training methods in the order of the proto's `oneof method`."""
    return [f.name for f in trainer_pb2.StartTrainingRequest.DESCRIPTOR.oneofs_by_name["method"].fields]


def method_name(request: trainer_pb2.StartTrainingRequest) -> str:
    return request.WhichOneof("method") or ""


def _adapter(proto: common_pb2.AdapterSpec, checks: RequestChecks, default: str) -> AdapterSpec:
    adapter = AdapterSpec(type=enum_choice(proto, "type", checks, "adapter.type", default))
    if proto.rank:
        adapter.rank = proto.rank
    checks.in_range(adapter.rank, "adapter.rank", 1, 1024)
    adapter.alpha = optional(proto, "alpha", 2.0 * adapter.rank)
    checks.in_range(adapter.alpha, "adapter.alpha", 0, 1e6, low_open=True)
    adapter.dropout = optional(proto, "dropout", adapter.dropout)
    checks.require(0 <= adapter.dropout < 1, "adapter.dropout", f"{adapter.dropout} is out of range",
                   "use a value in [0, 1)")
    adapter.target_modules = list(proto.target_modules)
    quant = proto.quantization
    quant_type = enum_choice(quant, "type", checks, "adapter.quantization.type", "")
    if adapter.type == "qlora":
        checks.require(quant_type in ("", "nf4", "fp4"), "adapter.quantization.type",
                       "QLoRA quantizes the base to 4 bits", "use QUANTIZATION_NF4 (default) or QUANTIZATION_FP4")
        adapter.quant_type = quant_type if quant_type in ("nf4", "fp4") else "nf4"
        adapter.double_quant = quant.double_quant or not quant_type
    elif quant_type not in ("", "none"):
        checks.require(False, "adapter.quantization.type", "a quantized base can only be trained with QLoRA",
                       "set adapter.type to ADAPTER_QLORA, or leave quantization unset")
    adapter.compute_dtype = quant.compute_dtype
    checks.require(adapter.compute_dtype in ("", "bfloat16", "float16", "float32"),
                   "adapter.quantization.compute_dtype", f"unknown dtype {adapter.compute_dtype!r}",
                   "use bfloat16, float16 or float32")
    return adapter


def _hyperparameters(proto: trainer_pb2.Hyperparameters, adapter: AdapterSpec, gpu: bool,
                     checks: RequestChecks) -> Hyperparameters:
    hyper = Hyperparameters(learning_rate=2e-4 if adapter.is_peft else 2e-5)
    for name in ("num_epochs", "learning_rate", "seed", "weight_decay", "max_grad_norm"):
        setattr(hyper, name, optional(proto, name, getattr(hyper, name)))
    for name in ("max_steps", "warmup_steps", "batch_size", "gradient_accumulation_steps", "max_seq_length",
                 "logging_steps", "lr_scheduler", "precision"):
        value = getattr(proto, name)
        if value:
            setattr(hyper, name, value)
    hyper.warmup_ratio = proto.warmup_ratio
    hyper.packing = proto.packing
    hyper.gradient_checkpointing = proto.gradient_checkpointing
    field = "hyperparameters."
    checks.in_range(hyper.num_epochs, field + "num_epochs", 0, 10_000, low_open=True)
    checks.in_range(hyper.max_steps, field + "max_steps", 0, 10_000_000)
    checks.in_range(hyper.learning_rate, field + "learning_rate", 0, 1, low_open=True)
    checks.require(hyper.lr_scheduler in SCHEDULERS, field + "lr_scheduler", f"unknown scheduler {hyper.lr_scheduler!r}",
                   f"use one of {', '.join(SCHEDULERS)}")
    checks.in_range(hyper.warmup_ratio, field + "warmup_ratio", 0, 0.99)
    checks.in_range(hyper.warmup_steps, field + "warmup_steps", 0, 10_000_000)
    checks.in_range(hyper.batch_size, field + "batch_size", 1, 4096)
    checks.in_range(hyper.gradient_accumulation_steps, field + "gradient_accumulation_steps", 1, 4096)
    checks.in_range(hyper.max_seq_length, field + "max_seq_length", 8, 1_048_576)
    checks.in_range(hyper.weight_decay, field + "weight_decay", 0, 10)
    checks.in_range(hyper.max_grad_norm, field + "max_grad_norm", 0, 1e6)
    checks.in_range(hyper.logging_steps, field + "logging_steps", 1, 1_000_000)
    checks.require(hyper.precision in PRECISIONS, field + "precision", f"unknown precision {hyper.precision!r}",
                   f"use one of {', '.join(PRECISIONS)}")
    checks.require(gpu or hyper.precision != "fp16", field + "precision", "fp16 is not supported on CPU",
                   "use bf16 or fp32 (or auto)")
    return hyper


def _eval_spec(proto: trainer_pb2.EvalSpec, checks: RequestChecks) -> EvalSpec:
    metric = proto.metric_for_best or "eval_loss"
    if not metric.startswith("eval_"):
        metric = f"eval_{metric}"
    lower_is_better = "loss" in metric or "perplexity" in metric
    evaluation = EvalSpec(
        split_ratio=proto.split_ratio, eval_dataset_id=proto.eval_dataset_id, every_steps=proto.every_steps,
        metric_for_best=metric, greater_is_better=optional(proto, "greater_is_better", not lower_is_better),
        early_stopping_patience=proto.early_stopping_patience, early_stopping_threshold=proto.early_stopping_threshold)
    checks.in_range(evaluation.split_ratio, "eval.split_ratio", 0, 0.5)
    checks.in_range(evaluation.every_steps, "eval.every_steps", 0, 10_000_000)
    checks.in_range(evaluation.early_stopping_patience, "eval.early_stopping_patience", 0, 1_000_000)
    checks.in_range(evaluation.early_stopping_threshold, "eval.early_stopping_threshold", 0, 1e9)
    if evaluation.early_stopping_patience:
        checks.require(evaluation.has_data, "eval.early_stopping_patience", "early stopping needs evaluation data",
                       "set eval.split_ratio or eval.eval_dataset_id")
        checks.require(evaluation.every_steps > 0, "eval.every_steps", "early stopping needs periodic evaluation",
                       "set eval.every_steps to evaluate every N steps")
    return evaluation


def _unresolved(dataset_id: str) -> DatasetFile:
    """A dataset reference before admission resolves it (path, file format) from the registry."""
    return DatasetFile(dataset_id=dataset_id, path="", file_format="", format=DatasetFormat.AUTO.value)


def spec_from_request(request: trainer_pb2.StartTrainingRequest, *, gpu: bool) -> TrainingSpec:
    """The job's spec from a StartTrainingRequest, every field checked (InvalidArgument with all of them).

    Datasets are not resolved yet: `admission.admit` does that, with the store checks."""
    method = method_name(request)
    if not method:
        raise InvalidArgument("method: not set", [Violation(0, "method", "no training method chosen",
                                                            f"set exactly one of {', '.join(method_names())}")])
    definition = methods.get(method)
    checks = RequestChecks()
    adapter = _adapter(request.adapter, checks, definition.default_adapter)
    hyper = _hyperparameters(request.hyperparameters, adapter, gpu, checks)
    evaluation = _eval_spec(request.eval, checks)
    policy = request.checkpoints
    checks.in_range(policy.every_steps, "checkpoints.every_steps", 0, 10_000_000)
    checks.in_range(policy.keep_last, "checkpoints.keep_last", 0, 1000)
    if policy.HasField("max_restarts"):
        checks.in_range(policy.max_restarts, "checkpoints.max_restarts", 0, 100)
    if definition.needs_base_model:
        checks.require(bool(request.base_model_id), "base_model_id", "empty",
                       "name a model from the checkpoint store (`lmforge checkpoints`)")
    checks.require(bool(request.dataset_id), "dataset_id", "empty",
                   "upload the data (`lmforge datasets upload FILE`) and pass the id it returns")
    spec = TrainingSpec(
        job_id="", method=method, base_model_id=request.base_model_id, dataset=_unresolved(request.dataset_id),
        eval_dataset=_unresolved(evaluation.eval_dataset_id) if evaluation.eval_dataset_id else None,
        method_spec=definition.from_proto(getattr(request, method), checks), adapter=adapter,
        hyperparameters=hyper, eval=evaluation, save_every_steps=policy.every_steps,
        state_every_steps=policy.every_steps or DEFAULT_STATE_EVERY_STEPS, keep_last=policy.keep_last or 2,
        keep_state_after_success=policy.keep_after_success,
        max_restarts=policy.max_restarts if policy.HasField("max_restarts") else None)
    if definition.check is not None:
        definition.check(spec, checks)
    checks.raise_if_any()
    return spec


def evaluate_spec_from_request(request: trainer_pb2.EvaluateRequest) -> TrainingSpec:
    """An Evaluate job's spec (method "evaluate"), every field checked; admission resolves the model
    (model_id may name an adapter) and the dataset. Raises InvalidArgument."""
    checks = RequestChecks("EvaluateRequest")
    checks.require(bool(request.model_id), "model_id", "empty", "name a model or adapter from the checkpoint store")
    checks.require(bool(request.dataset_id), "dataset_id", "empty", "upload the data and pass the id it returns")
    definition = methods.get("evaluate")
    spec = TrainingSpec(job_id="", method="evaluate", base_model_id=request.model_id,
                        dataset=_unresolved(request.dataset_id), method_spec=definition.from_proto(request, checks),
                        adapter=AdapterSpec(type="full"))
    checks.raise_if_any()
    return spec


# ---- domain -> proto ---------------------------------------------------------------------------------

def error_to_proto(error: ErrorInfo | None) -> common_pb2.ErrorDetail | None:
    if error is None:
        return None
    return common_pb2.ErrorDetail(
        code=error.code, message=error.message, log_tail=error.log_tail,
        violations=[common_pb2.FieldViolation(**v) for v in error.violations])


def job_state_to_proto(state: JobState) -> int:
    return _JOB_STATES[state]


def job_state_from_proto(value: int) -> JobState:
    if value not in _JOB_STATES_BY_NUMBER:
        raise InvalidArgument(f"states: unknown job state {value}")
    return _JOB_STATES_BY_NUMBER[value]


def job_to_proto(job: Job) -> trainer_pb2.Job:
    request = evaluation = None
    if job.method == "evaluate":
        evaluation = trainer_pb2.EvaluateRequest.FromString(job.request_blob)
    else:
        request = trainer_pb2.StartTrainingRequest.FromString(job.request_blob)
    return trainer_pb2.Job(
        id=job.id, display_name=job.display_name, state=job_state_to_proto(job.state), method=job.method,
        request=request, evaluation=evaluation, created_at=timestamp(job.created_at), started_at=timestamp(job.started_at),
        finished_at=timestamp(job.finished_at), current_step=job.current_step, total_steps=job.total_steps,
        latest_metrics=job.latest_metrics, checkpoint_ids=job.checkpoint_ids,
        result_checkpoint_id=job.result_checkpoint_id, error=error_to_proto(job.error), device=job.device,
        last_sequence=job.last_sequence, attempt=job.attempt, restarts=job.restarts)


def event_to_proto(event: Event) -> trainer_pb2.TrainingEvent:
    proto = trainer_pb2.TrainingEvent(sequence=event.sequence, job_id=event.job_id, time=timestamp(event.time),
                                      step=event.step, attempt=event.attempt)
    data = event.data
    if event.kind == "metrics":
        proto.metrics.CopyFrom(trainer_pb2.MetricsEvent(phase=data.get("phase", "train"), values=data["values"],
                                                        total_steps=int(data.get("total_steps", 0))))
    elif event.kind == "state":
        error = data.get("error")
        proto.state_change.CopyFrom(trainer_pb2.StateChangeEvent(
            state=job_state_to_proto(JobState(data["state"])), message=data.get("message", ""),
            error=error_to_proto(ErrorInfo(**error)) if error else None))
    elif event.kind == "checkpoint":
        proto.checkpoint_saved.checkpoint.CopyFrom(manifest_to_proto(Manifest.from_json_dict(data)))
    elif event.kind == "resumed":
        proto.resumed.CopyFrom(trainer_pb2.ResumedEvent(attempt=int(data["attempt"]), from_step=int(data["from_step"]),
                                                        reason=data.get("reason", "")))
    elif event.kind == "rollouts":
        proto.rollouts.CopyFrom(trainer_pb2.RolloutSamplesEvent(round=int(data.get("round", 0)), samples=[
            trainer_pb2.RolloutSample(prompt=sample["prompt"], completions=[
                trainer_pb2.RolloutCompletion(text=c["text"], reward=float(c["reward"]),
                                              rewards={k: float(v) for k, v in c.get("rewards", {}).items()})
                for c in sample["completions"]]) for sample in data.get("samples", [])]))
    else:
        proto.log.CopyFrom(trainer_pb2.LogEvent(level=data.get("level", "info"), message=data.get("message", "")))
    return proto


def dataset_to_proto(dataset: StoredDataset) -> trainer_pb2.Dataset:
    return trainer_pb2.Dataset(id=dataset.id, name=dataset.name, file_format=_FILE_FORMATS[dataset.file_format],
                               size_bytes=dataset.size_bytes, sha256=dataset.sha256,
                               created_at=timestamp(dataset.created_at))


def file_format_from_proto(value: int) -> FileFormat | None:
    """None for FILE_FORMAT_UNSPECIFIED (take it from the file name)."""
    return _FILE_FORMATS_BY_NUMBER.get(value)


def dataset_format_from_proto(value: int) -> DatasetFormat:
    if value not in _DATASET_FORMATS_BY_NUMBER:
        raise InvalidArgument(f"format: unknown dataset format {value}")
    return _DATASET_FORMATS_BY_NUMBER[value]


def validation_to_proto(result: ValidationResult) -> trainer_pb2.ValidationReport:
    return trainer_pb2.ValidationReport(
        ok=result.ok, format=_DATASET_FORMATS[result.format], total_rows=result.total_rows,
        valid_rows=result.valid_rows, bad_rows=result.bad_rows, truncated=result.truncated,
        violations=[common_pb2.FieldViolation(**v.to_dict()) for v in result.violations])


def dataset_stats_to_proto(stats: DatasetStats, *, dataset_id: str, base_model_id: str,
                           method: str) -> trainer_pb2.DatasetStats:
    """DescribeDataset's answer (the request's ids and method echoed, as the job would use them)."""
    languages = [trainer_pb2.LanguageTokenStats(
        language=s.language, texts=s.texts, characters=s.characters, words=s.words, tokens=s.tokens,
        characters_per_token=s.chars_per_token, tokens_per_word=s.tokens_per_word)
        for s in stats.languages.values() if s.texts]
    return trainer_pb2.DatasetStats(
        dataset_id=dataset_id, base_model_id=base_model_id, method=method, format=_DATASET_FORMATS[stats.format],
        rows=stats.rows, invalid_rows=stats.invalid_rows, sequences=stats.sequences,
        total_tokens=stats.total_tokens, trained_tokens=stats.trained_tokens, max_seq_length=stats.max_seq_length,
        truncated_sequences=stats.truncated_sequences, truncated_tokens=stats.truncated_tokens,
        trained_tokens_after_truncation=stats.trained_tokens_after_truncation,
        dropped_sequences=stats.dropped_sequences, duplicate_rows=stats.duplicate_rows,
        p50_tokens=stats.percentiles[50], p90_tokens=stats.percentiles[90], p99_tokens=stats.percentiles[99],
        max_tokens=stats.max_tokens, mean_tokens=stats.mean_tokens, histogram_edges=stats.histogram_edges,
        histogram_counts=stats.histogram_counts, languages=languages, epochs=stats.epochs,
        estimated_trained_tokens=stats.estimated_trained_tokens, packed=stats.packed, notes=stats.notes,
        seconds=stats.seconds, rows_per_second=stats.rows_per_second)
