"""Typed job specs: the schema of a job (DESIGN.md §5.3), shared by every training method.

A job's spec is a `TrainingSpec`: what every method has (base model, datasets, adapter, hyperparameters,
evaluation and checkpoint policy) plus `method_spec`, the method's own dataclass (`SftSpec`, `DpoSpec`,
...), which lives in the method's module under `services/trainer/methods/`. The domain classes are named
after their proto messages (`AdapterSpec`, `EvalSpec`, `Hyperparameters`, ...); `services.trainer.convert`
builds them from a request, and the worker receives the same dataclasses as JSON, so recipes never see
protobuf.

This module imports nothing from the trainer: methods, convert, admission, the job manager and the
recipes all import it.
"""

from __future__ import annotations

import dataclasses
import json
import types
import typing
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any


@dataclass
class AdapterSpec:
    """full / lora / qlora, resolved into peft + bitsandbytes objects in training/adapters.py only."""

    type: str = "lora"  # "full" | "lora" | "qlora"
    rank: int = 16
    alpha: float = 32.0
    dropout: float = 0.05
    target_modules: list[str] = field(default_factory=list)  # empty: every linear layer
    quant_type: str = "nf4"  # qlora: "nf4" | "fp4"
    double_quant: bool = True
    compute_dtype: str = ""  # "" = bfloat16 on GPUs with bf16, else float32

    @property
    def is_peft(self) -> bool:
        return self.type in ("lora", "qlora")


@dataclass
class Hyperparameters:
    num_epochs: float = 1.0
    max_steps: int = 0  # 0: derived from num_epochs
    learning_rate: float = 2e-4
    lr_scheduler: str = "linear"
    warmup_ratio: float = 0.0
    warmup_steps: int = 0
    batch_size: int = 4
    gradient_accumulation_steps: int = 1
    max_seq_length: int = 1024
    packing: bool = False
    seed: int = 42
    weight_decay: float = 0.0
    max_grad_norm: float = 1.0
    precision: str = "auto"  # auto | fp32 | bf16 | fp16
    logging_steps: int = 1
    gradient_checkpointing: bool = False


@dataclass
class EvalSpec:
    split_ratio: float = 0.0
    eval_dataset_id: str = ""
    every_steps: int = 0
    metric_for_best: str = "eval_loss"
    greater_is_better: bool = False
    early_stopping_patience: int = 0  # 0: never stop early
    early_stopping_threshold: float = 0.0

    @property
    def has_data(self) -> bool:
        """Whether the job evaluates at all (a held-out share or an eval dataset)."""
        return self.split_ratio > 0 or bool(self.eval_dataset_id)


@dataclass
class DatasetFile:
    """A stored dataset as the worker reads it (paths are resolved on the server, never sent by clients)."""

    dataset_id: str
    path: str
    file_format: str  # jsonl | parquet | csv
    format: str  # detected row format, e.g. "messages"


@dataclass
class TrainingSpec:
    """Everything a worker needs to run one job. `method_spec` is the method's dataclass."""

    job_id: str
    method: str
    base_model_id: str
    dataset: DatasetFile
    method_spec: Any
    adapter: AdapterSpec = field(default_factory=AdapterSpec)
    hyperparameters: Hyperparameters = field(default_factory=Hyperparameters)
    eval: EvalSpec = field(default_factory=EvalSpec)
    eval_dataset: DatasetFile | None = None
    save_every_steps: int = 0
    store_root: str = ""
    # Full-state checkpoints (what resuming needs) every N optimizer steps, the newest `keep_last` kept.
    state_every_steps: int = 50
    keep_last: int = 2
    keep_state_after_success: bool = False
    # Automatic restarts after a worker death; None = the server's default.
    max_restarts: int | None = None

    def to_json(self) -> str:
        return json.dumps(asdict(self), ensure_ascii=False, indent=2)

    @classmethod
    def from_json(cls, text: str, method_spec_class: type) -> TrainingSpec:
        """The spec from `to_json` output; `method_spec_class` is the method's dataclass
        (`services.trainer.methods.get(method).spec_class`)."""
        data = json.loads(text)
        method_spec = from_dict(method_spec_class, data.pop("method_spec"))
        return dataclasses.replace(from_dict(cls, {**data, "method_spec": None}), method_spec=method_spec)

    def write(self, path: Path) -> None:
        path.write_text(self.to_json(), encoding="utf-8")


def from_dict(cls: type, data: Any) -> Any:
    """Rebuild dataclass `cls` (nested dataclasses, lists of them and optionals included) from `asdict`
    output, using the field type hints. Keys the class does not know are ignored."""
    hints = typing.get_type_hints(cls)
    kwargs = {}
    for f in dataclasses.fields(cls):
        if f.name in data:
            kwargs[f.name] = _from_value(hints[f.name], data[f.name])
    return cls(**kwargs)


def _from_value(hint: Any, value: Any) -> Any:
    if value is None:
        return None
    origin = typing.get_origin(hint)
    if origin in (typing.Union, types.UnionType):
        options = [a for a in typing.get_args(hint) if a is not type(None)]
        return _from_value(options[0], value) if len(options) == 1 else value
    if origin is list:
        (item,) = typing.get_args(hint)
        return [_from_value(item, v) for v in value]
    if dataclasses.is_dataclass(hint) and isinstance(value, dict):
        return from_dict(hint, value)
    return value
