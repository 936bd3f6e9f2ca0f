"""The CLI's choice lists, read from the proto descriptors instead of written out here: a training method or an
enum value added to the contract shows up in `lmforge train --method`, `--loss`, `--adapter`, ... at once."""

from __future__ import annotations

from lmforge.client import checkpoint_kind_name
from lmforge.v1 import common_pb2, inference_pb2, trainer_pb2


def enum_names(enum_type, prefix: str = "") -> dict[str, str]:
    """{short name: full name} of an enum's values, UNSPECIFIED left out: the short name is the full one with
    `prefix` stripped, lower-case (PreferenceLoss: {"sigmoid": "PREFERENCE_LOSS_SIGMOID", ...})."""
    return {v.name.removeprefix(prefix).lower(): v.name for v in enum_type.DESCRIPTOR.values
            if not v.name.endswith("UNSPECIFIED")}


_METHOD_FIELDS = trainer_pb2.StartTrainingRequest.DESCRIPTOR.oneofs_by_name["method"].fields
# The training methods: the fields of StartTrainingRequest's `method` oneof, in proto order.
METHODS: tuple[str, ...] = tuple(f.name for f in _METHOD_FIELDS)
# What --method accepts: each method, and continued-pretrain for continued_pretrain.
METHOD_CHOICES: tuple[str, ...] = METHODS + tuple(m.replace("_", "-") for m in METHODS if "_" in m)


def methods_with_field(name: str, type_name: str | None = None) -> tuple[str, ...]:
    """The methods whose spec message has a field `name` (whose message or enum type is `type_name`, if given)."""
    found = []
    for method in _METHOD_FIELDS:
        field = method.message_type.fields_by_name.get(name)
        if field is None:
            continue
        field_type = field.message_type or field.enum_type
        if type_name is None or (field_type is not None and field_type.name == type_name):
            found.append(method.name)
    return tuple(found)


ADAPTER_TYPES = enum_names(common_pb2.AdapterType, "ADAPTER_")  # full, lora, qlora
PREFERENCE_LOSSES = enum_names(trainer_pb2.PreferenceLoss, "PREFERENCE_LOSS_")  # sigmoid, ipo, ..., kto
QUANTIZATIONS = enum_names(common_pb2.QuantizationType, "QUANTIZATION_")  # none, int8, nf4, fp4
BACKENDS = enum_names(inference_pb2.Backend, "BACKEND_")  # transformers, vllm
JOB_STATES = enum_names(trainer_pb2.JobState, "JOB_STATE_")  # validating, ..., cancelled
DATASET_FORMATS = enum_names(trainer_pb2.DatasetFormat, "DATASET_FORMAT_")  # auto, messages, ...
# --kind of `lmforge checkpoints`: the short names the client parses (base, full, adapter), else the enum name.
CHECKPOINT_KINDS: tuple[str, ...] = tuple(
    checkpoint_kind_name(v.number) if checkpoint_kind_name(v.number) != "-" else v.name.lower()
    for v in common_pb2.CheckpointKind.DESCRIPTOR.values if not v.name.endswith("UNSPECIFIED"))

# Methods a train flag applies to: those whose spec has the field the flag sets.
VOCABULARY_METHODS = methods_with_field("vocabulary", "VocabularyExpansion")  # --new-token
PREFERENCE_METHODS = methods_with_field("loss", "PreferenceLoss")  # --loss and --beta
REWARD_MODEL_METHODS = methods_with_field("reward_model_id")  # --reward-model
TEACHER_METHODS = methods_with_field("teacher_model_id")  # --teacher


def one_of(names) -> str:
    """"a, b or c" for help texts."""
    names = list(names)
    return names[0] if len(names) == 1 else ", ".join(names[:-1]) + " or " + names[-1]
