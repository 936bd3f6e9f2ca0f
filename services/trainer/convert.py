"""Proto <-> domain conversion for the trainer, in one module (DESIGN.md §5.3).

`spec_from_request` also does every cheap check of a StartTrainingRequest (ids exist, numbers in range,
method implemented) and reports all violations at once, so a client fixes its request in one go.
"""

from __future__ import annotations

from lmforge.v1 import common_pb2, trainer_pb2
from services.common.convert import manifest_to_proto, timestamp
from services.common.errors import FailedPrecondition, InvalidArgument, Unimplemented, Violation
from services.common.store import CheckpointStore, EntryKind, Manifest
from services.trainer.data import DatasetFormat, FileFormat, ValidationResult
from services.trainer.datasets import DatasetRegistry, StoredDataset
from services.trainer.jobdb import ErrorInfo, Event, Job, JobState
from services.trainer.recipes import implemented_methods
from services.trainer.spec import (
    ALL_METHODS,
    AdapterConfig,
    DatasetFile,
    EvalConfig,
    Hyperparameters,
    SftConfig,
    TrainingSpec,
)

SCHEDULERS = ("linear", "cosine", "cosine_with_restarts", "polynomial", "constant", "constant_with_warmup",
              "inverse_sqrt", "reduce_lr_on_plateau", "cosine_with_min_lr", "warmup_stable_decay")
PRECISIONS = ("auto", "fp32", "bf16", "fp16")

_ADAPTER_TYPES = {
    common_pb2.ADAPTER_TYPE_UNSPECIFIED: "lora",
    common_pb2.ADAPTER_FULL: "full",
    common_pb2.ADAPTER_LORA: "lora",
    common_pb2.ADAPTER_QLORA: "qlora",
}
_JOB_STATES = {state: getattr(trainer_pb2, f"JOB_STATE_{state.value}") for state in JobState}
_DATASET_FORMATS = {fmt: getattr(trainer_pb2, f"DATASET_FORMAT_{fmt.name}") for fmt in DatasetFormat}
_FILE_FORMATS = {ff: getattr(trainer_pb2, f"FILE_FORMAT_{ff.name}") for ff in FileFormat}
# proto enum number -> domain value
_JOB_STATES_BY_NUMBER = {number: state for state, number in _JOB_STATES.items()}
_DATASET_FORMATS_BY_NUMBER = {number: fmt for fmt, number in _DATASET_FORMATS.items()}
_FILE_FORMATS_BY_NUMBER = {number: ff for ff, number in _FILE_FORMATS.items()}


class _Checks:
    """Collects request violations; `raise_if_any` reports them all in one INVALID_ARGUMENT."""

    def __init__(self) -> None:
        self.violations: list[Violation] = []

    def require(self, ok: bool, field: str, reason: str, hint: str = "") -> None:
        if not ok:
            self.violations.append(Violation(0, field, reason, hint))

    def in_range(self, value: float, field: str, low: float, high: float, *, low_open: bool = False) -> None:
        ok = (value > low if low_open else value >= low) and value <= high
        bracket = "(" if low_open else "["
        self.require(ok, field, f"{value} is out of range", f"use a value in {bracket}{low}, {high}]")

    def raise_if_any(self) -> None:
        if self.violations:
            fields = ", ".join(v.field for v in self.violations)
            raise InvalidArgument(f"invalid StartTrainingRequest ({fields})", self.violations)


def method_name(request: trainer_pb2.StartTrainingRequest) -> str:
    return request.WhichOneof("method") or ""


def _adapter(proto: common_pb2.AdapterSpec, checks: _Checks) -> AdapterConfig:
    adapter = AdapterConfig(type=_ADAPTER_TYPES.get(proto.type, "lora"))
    checks.require(proto.type in _ADAPTER_TYPES, "adapter.type", f"unknown adapter type {proto.type}",
                   "use ADAPTER_FULL, ADAPTER_LORA or ADAPTER_QLORA")
    if proto.rank:
        adapter.rank = proto.rank
    checks.in_range(adapter.rank, "adapter.rank", 1, 1024)
    adapter.alpha = proto.alpha if proto.HasField("alpha") else 2.0 * adapter.rank
    checks.in_range(adapter.alpha, "adapter.alpha", 0, 1e6, low_open=True)
    if proto.HasField("dropout"):
        adapter.dropout = proto.dropout
    checks.require(0 <= adapter.dropout < 1, "adapter.dropout", f"{adapter.dropout} is out of range",
                   "use a value in [0, 1)")
    adapter.target_modules = list(proto.target_modules)
    quant = proto.quantization
    if adapter.type == "qlora":
        quant_types = {common_pb2.QUANTIZATION_TYPE_UNSPECIFIED: "nf4", common_pb2.QUANTIZATION_NF4: "nf4",
                       common_pb2.QUANTIZATION_FP4: "fp4"}
        checks.require(quant.type in quant_types, "adapter.quantization.type",
                       "QLoRA quantizes the base to 4 bits", "use QUANTIZATION_NF4 (default) or QUANTIZATION_FP4")
        adapter.quant_type = quant_types.get(quant.type, "nf4")
        adapter.double_quant = quant.double_quant or quant.type == common_pb2.QUANTIZATION_TYPE_UNSPECIFIED
    elif quant.type not in (common_pb2.QUANTIZATION_TYPE_UNSPECIFIED, common_pb2.QUANTIZATION_NONE):
        checks.require(False, "adapter.quantization.type", "a quantized base can only be trained with QLoRA",
                       "set adapter.type to ADAPTER_QLORA, or leave quantization unset")
    adapter.compute_dtype = quant.compute_dtype
    checks.require(adapter.compute_dtype in ("", "bfloat16", "float16", "float32"),
                   "adapter.quantization.compute_dtype", f"unknown dtype {adapter.compute_dtype!r}",
                   "use bfloat16, float16 or float32")
    return adapter


def _hyperparameters(proto: trainer_pb2.Hyperparameters, adapter: AdapterConfig, gpu: bool,
                     checks: _Checks) -> Hyperparameters:
    hyper = Hyperparameters(learning_rate=2e-4 if adapter.is_peft else 2e-5)
    for name in ("num_epochs", "learning_rate", "seed", "weight_decay", "max_grad_norm"):
        if proto.HasField(name):
            setattr(hyper, name, getattr(proto, name))
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


def _dataset_file(datasets: DatasetRegistry, dataset_id: str, field: str) -> DatasetFile:
    stored = datasets.get(dataset_id, field)
    return DatasetFile(dataset_id=stored.id, path=str(stored.path), file_format=stored.file_format.value,
                       format=DatasetFormat.AUTO.value)


def spec_from_request(request: trainer_pb2.StartTrainingRequest, store: CheckpointStore,
                      datasets: DatasetRegistry, *, gpu: bool) -> TrainingSpec:
    """Check a request and build the job's spec. Raises InvalidArgument / NotFound / Unimplemented."""
    method = method_name(request)
    if not method:
        raise InvalidArgument("method: not set", [Violation(0, "method", "no training method chosen",
                                                            f"set exactly one of {', '.join(ALL_METHODS)}")])
    if method not in implemented_methods():
        raise Unimplemented(f"method {method!r} is not implemented by this trainer yet; implemented: "
                            f"{', '.join(implemented_methods())}")
    checks = _Checks()
    adapter = _adapter(request.adapter, checks)
    hyper = _hyperparameters(request.hyperparameters, adapter, gpu, checks)
    evaluation = EvalConfig(split_ratio=request.eval.split_ratio, eval_dataset_id=request.eval.eval_dataset_id,
                            every_steps=request.eval.every_steps)
    checks.in_range(evaluation.split_ratio, "eval.split_ratio", 0, 0.5)
    checks.in_range(evaluation.every_steps, "eval.every_steps", 0, 10_000_000)
    checks.in_range(request.checkpoints.every_steps, "checkpoints.every_steps", 0, 10_000_000)
    checks.require(bool(request.base_model_id), "base_model_id", "empty",
                   "name a model from the checkpoint store (`lmforge checkpoints`)")
    checks.require(bool(request.dataset_id), "dataset_id", "empty",
                   "upload the data (`lmforge datasets upload FILE`) and pass the id it returns")
    sft = request.sft
    method_config = SftConfig(
        format=dataset_format_from_proto(sft.format).value,
        train_on_prompt=sft.train_on_prompt, default_system_prompt=sft.default_system_prompt)
    checks.raise_if_any()

    base = store.get(request.base_model_id, "base_model_id")
    if base.kind is EntryKind.ADAPTER:
        raise FailedPrecondition(f"base_model_id: {base.id!r} is a LoRA adapter, not a model; train on its base "
                                 f"{base.base_model_id!r}, or merge the adapter first")
    return TrainingSpec(
        job_id="", method=method, base_model_id=base.id,
        dataset=_dataset_file(datasets, request.dataset_id, "dataset_id"),
        eval_dataset=_dataset_file(datasets, evaluation.eval_dataset_id, "eval.eval_dataset_id")
        if evaluation.eval_dataset_id else None,
        method_config=method_config, adapter=adapter, hyperparameters=hyper, eval=evaluation,
        save_every_steps=request.checkpoints.every_steps,
    )


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
    request = trainer_pb2.StartTrainingRequest()
    request.ParseFromString(job.request_blob)
    return trainer_pb2.Job(
        id=job.id, display_name=job.display_name, state=job_state_to_proto(job.state), method=job.method,
        request=request, created_at=timestamp(job.created_at), started_at=timestamp(job.started_at),
        finished_at=timestamp(job.finished_at), current_step=job.current_step, total_steps=job.total_steps,
        latest_metrics=job.latest_metrics, checkpoint_ids=job.checkpoint_ids,
        result_checkpoint_id=job.result_checkpoint_id, error=error_to_proto(job.error), device=job.device,
        last_sequence=job.last_sequence)


def event_to_proto(event: Event) -> trainer_pb2.TrainingEvent:
    proto = trainer_pb2.TrainingEvent(sequence=event.sequence, job_id=event.job_id, time=timestamp(event.time),
                                      step=event.step)
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
