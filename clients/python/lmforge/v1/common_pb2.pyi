import datetime

from google.protobuf import timestamp_pb2 as _timestamp_pb2
from google.protobuf.internal import containers as _containers
from google.protobuf.internal import enum_type_wrapper as _enum_type_wrapper
from google.protobuf import descriptor as _descriptor
from google.protobuf import message as _message
from collections.abc import Iterable as _Iterable, Mapping as _Mapping
from typing import ClassVar as _ClassVar, Optional as _Optional, Union as _Union

DESCRIPTOR: _descriptor.FileDescriptor

class CheckpointKind(int, metaclass=_enum_type_wrapper.EnumTypeWrapper):
    __slots__ = ()
    CHECKPOINT_KIND_UNSPECIFIED: _ClassVar[CheckpointKind]
    BASE_MODEL: _ClassVar[CheckpointKind]
    FULL_CHECKPOINT: _ClassVar[CheckpointKind]
    ADAPTER: _ClassVar[CheckpointKind]
    REWARD_MODEL: _ClassVar[CheckpointKind]

class QuantizationType(int, metaclass=_enum_type_wrapper.EnumTypeWrapper):
    __slots__ = ()
    QUANTIZATION_TYPE_UNSPECIFIED: _ClassVar[QuantizationType]
    QUANTIZATION_NONE: _ClassVar[QuantizationType]
    QUANTIZATION_INT8: _ClassVar[QuantizationType]
    QUANTIZATION_NF4: _ClassVar[QuantizationType]
    QUANTIZATION_FP4: _ClassVar[QuantizationType]

class AdapterType(int, metaclass=_enum_type_wrapper.EnumTypeWrapper):
    __slots__ = ()
    ADAPTER_TYPE_UNSPECIFIED: _ClassVar[AdapterType]
    ADAPTER_FULL: _ClassVar[AdapterType]
    ADAPTER_LORA: _ClassVar[AdapterType]
    ADAPTER_QLORA: _ClassVar[AdapterType]
CHECKPOINT_KIND_UNSPECIFIED: CheckpointKind
BASE_MODEL: CheckpointKind
FULL_CHECKPOINT: CheckpointKind
ADAPTER: CheckpointKind
REWARD_MODEL: CheckpointKind
QUANTIZATION_TYPE_UNSPECIFIED: QuantizationType
QUANTIZATION_NONE: QuantizationType
QUANTIZATION_INT8: QuantizationType
QUANTIZATION_NF4: QuantizationType
QUANTIZATION_FP4: QuantizationType
ADAPTER_TYPE_UNSPECIFIED: AdapterType
ADAPTER_FULL: AdapterType
ADAPTER_LORA: AdapterType
ADAPTER_QLORA: AdapterType

class Checkpoint(_message.Message):
    __slots__ = ("id", "kind", "base_model_id", "method", "job_id", "step", "metrics", "dtype", "has_tokenizer", "created_at", "architecture", "is_final", "size_bytes", "labels", "is_best", "evaluations")
    class MetricsEntry(_message.Message):
        __slots__ = ("key", "value")
        KEY_FIELD_NUMBER: _ClassVar[int]
        VALUE_FIELD_NUMBER: _ClassVar[int]
        key: str
        value: float
        def __init__(self, key: _Optional[str] = ..., value: _Optional[float] = ...) -> None: ...
    class LabelsEntry(_message.Message):
        __slots__ = ("key", "value")
        KEY_FIELD_NUMBER: _ClassVar[int]
        VALUE_FIELD_NUMBER: _ClassVar[int]
        key: str
        value: str
        def __init__(self, key: _Optional[str] = ..., value: _Optional[str] = ...) -> None: ...
    ID_FIELD_NUMBER: _ClassVar[int]
    KIND_FIELD_NUMBER: _ClassVar[int]
    BASE_MODEL_ID_FIELD_NUMBER: _ClassVar[int]
    METHOD_FIELD_NUMBER: _ClassVar[int]
    JOB_ID_FIELD_NUMBER: _ClassVar[int]
    STEP_FIELD_NUMBER: _ClassVar[int]
    METRICS_FIELD_NUMBER: _ClassVar[int]
    DTYPE_FIELD_NUMBER: _ClassVar[int]
    HAS_TOKENIZER_FIELD_NUMBER: _ClassVar[int]
    CREATED_AT_FIELD_NUMBER: _ClassVar[int]
    ARCHITECTURE_FIELD_NUMBER: _ClassVar[int]
    IS_FINAL_FIELD_NUMBER: _ClassVar[int]
    SIZE_BYTES_FIELD_NUMBER: _ClassVar[int]
    LABELS_FIELD_NUMBER: _ClassVar[int]
    IS_BEST_FIELD_NUMBER: _ClassVar[int]
    EVALUATIONS_FIELD_NUMBER: _ClassVar[int]
    id: str
    kind: CheckpointKind
    base_model_id: str
    method: str
    job_id: str
    step: int
    metrics: _containers.ScalarMap[str, float]
    dtype: str
    has_tokenizer: bool
    created_at: _timestamp_pb2.Timestamp
    architecture: str
    is_final: bool
    size_bytes: int
    labels: _containers.ScalarMap[str, str]
    is_best: bool
    evaluations: _containers.RepeatedCompositeFieldContainer[EvaluationResult]
    def __init__(self, id: _Optional[str] = ..., kind: _Optional[_Union[CheckpointKind, str]] = ..., base_model_id: _Optional[str] = ..., method: _Optional[str] = ..., job_id: _Optional[str] = ..., step: _Optional[int] = ..., metrics: _Optional[_Mapping[str, float]] = ..., dtype: _Optional[str] = ..., has_tokenizer: _Optional[bool] = ..., created_at: _Optional[_Union[datetime.datetime, _timestamp_pb2.Timestamp, _Mapping]] = ..., architecture: _Optional[str] = ..., is_final: _Optional[bool] = ..., size_bytes: _Optional[int] = ..., labels: _Optional[_Mapping[str, str]] = ..., is_best: _Optional[bool] = ..., evaluations: _Optional[_Iterable[_Union[EvaluationResult, _Mapping]]] = ...) -> None: ...

class EvaluationResult(_message.Message):
    __slots__ = ("job_id", "dataset_id", "metrics", "samples", "created_at")
    class MetricsEntry(_message.Message):
        __slots__ = ("key", "value")
        KEY_FIELD_NUMBER: _ClassVar[int]
        VALUE_FIELD_NUMBER: _ClassVar[int]
        key: str
        value: float
        def __init__(self, key: _Optional[str] = ..., value: _Optional[float] = ...) -> None: ...
    JOB_ID_FIELD_NUMBER: _ClassVar[int]
    DATASET_ID_FIELD_NUMBER: _ClassVar[int]
    METRICS_FIELD_NUMBER: _ClassVar[int]
    SAMPLES_FIELD_NUMBER: _ClassVar[int]
    CREATED_AT_FIELD_NUMBER: _ClassVar[int]
    job_id: str
    dataset_id: str
    metrics: _containers.ScalarMap[str, float]
    samples: int
    created_at: _timestamp_pb2.Timestamp
    def __init__(self, job_id: _Optional[str] = ..., dataset_id: _Optional[str] = ..., metrics: _Optional[_Mapping[str, float]] = ..., samples: _Optional[int] = ..., created_at: _Optional[_Union[datetime.datetime, _timestamp_pb2.Timestamp, _Mapping]] = ...) -> None: ...

class QuantizationSpec(_message.Message):
    __slots__ = ("type", "double_quant", "compute_dtype")
    TYPE_FIELD_NUMBER: _ClassVar[int]
    DOUBLE_QUANT_FIELD_NUMBER: _ClassVar[int]
    COMPUTE_DTYPE_FIELD_NUMBER: _ClassVar[int]
    type: QuantizationType
    double_quant: bool
    compute_dtype: str
    def __init__(self, type: _Optional[_Union[QuantizationType, str]] = ..., double_quant: _Optional[bool] = ..., compute_dtype: _Optional[str] = ...) -> None: ...

class AdapterSpec(_message.Message):
    __slots__ = ("type", "rank", "alpha", "dropout", "target_modules", "quantization")
    TYPE_FIELD_NUMBER: _ClassVar[int]
    RANK_FIELD_NUMBER: _ClassVar[int]
    ALPHA_FIELD_NUMBER: _ClassVar[int]
    DROPOUT_FIELD_NUMBER: _ClassVar[int]
    TARGET_MODULES_FIELD_NUMBER: _ClassVar[int]
    QUANTIZATION_FIELD_NUMBER: _ClassVar[int]
    type: AdapterType
    rank: int
    alpha: float
    dropout: float
    target_modules: _containers.RepeatedScalarFieldContainer[str]
    quantization: QuantizationSpec
    def __init__(self, type: _Optional[_Union[AdapterType, str]] = ..., rank: _Optional[int] = ..., alpha: _Optional[float] = ..., dropout: _Optional[float] = ..., target_modules: _Optional[_Iterable[str]] = ..., quantization: _Optional[_Union[QuantizationSpec, _Mapping]] = ...) -> None: ...

class FieldViolation(_message.Message):
    __slots__ = ("row", "field", "reason", "hint")
    ROW_FIELD_NUMBER: _ClassVar[int]
    FIELD_FIELD_NUMBER: _ClassVar[int]
    REASON_FIELD_NUMBER: _ClassVar[int]
    HINT_FIELD_NUMBER: _ClassVar[int]
    row: int
    field: str
    reason: str
    hint: str
    def __init__(self, row: _Optional[int] = ..., field: _Optional[str] = ..., reason: _Optional[str] = ..., hint: _Optional[str] = ...) -> None: ...

class ErrorDetail(_message.Message):
    __slots__ = ("code", "message", "violations", "log_tail")
    CODE_FIELD_NUMBER: _ClassVar[int]
    MESSAGE_FIELD_NUMBER: _ClassVar[int]
    VIOLATIONS_FIELD_NUMBER: _ClassVar[int]
    LOG_TAIL_FIELD_NUMBER: _ClassVar[int]
    code: str
    message: str
    violations: _containers.RepeatedCompositeFieldContainer[FieldViolation]
    log_tail: str
    def __init__(self, code: _Optional[str] = ..., message: _Optional[str] = ..., violations: _Optional[_Iterable[_Union[FieldViolation, _Mapping]]] = ..., log_tail: _Optional[str] = ...) -> None: ...
