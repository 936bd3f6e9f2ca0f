"""Proto conversions of the shared contracts (common.proto), used by both services."""

from __future__ import annotations

from google.protobuf.timestamp_pb2 import Timestamp

from lmforge.v1 import common_pb2
from services.common.store import EntryKind, Manifest

_ENTRY_KINDS = {EntryKind.BASE_MODEL: common_pb2.BASE_MODEL, EntryKind.FULL_CHECKPOINT: common_pb2.FULL_CHECKPOINT,
                EntryKind.ADAPTER: common_pb2.ADAPTER, EntryKind.REWARD_MODEL: common_pb2.REWARD_MODEL}
_ENTRY_KINDS_BY_NUMBER = {number: kind for kind, number in _ENTRY_KINDS.items()}


def timestamp(seconds: float) -> Timestamp | None:
    """A Timestamp from Unix seconds; None (field unset) for 0."""
    if not seconds:
        return None
    stamp = Timestamp()
    stamp.FromNanoseconds(int(seconds * 1e9))
    return stamp


def manifest_to_proto(manifest: Manifest) -> common_pb2.Checkpoint:
    return common_pb2.Checkpoint(
        id=manifest.id, kind=_ENTRY_KINDS[manifest.kind], base_model_id=manifest.base_model_id,
        method=manifest.method, job_id=manifest.job_id, step=manifest.step,
        metrics={k: float(v) for k, v in manifest.metrics.items()}, dtype=manifest.dtype,
        has_tokenizer=manifest.has_tokenizer, created_at=timestamp(manifest.created_at),
        architecture=manifest.architecture, is_final=manifest.is_final, size_bytes=manifest.size_bytes,
        labels=manifest.labels, is_best=manifest.is_best,
        evaluations=[common_pb2.EvaluationResult(
            job_id=e.get("job_id", ""), dataset_id=e.get("dataset_id", ""),
            metrics={k: float(v) for k, v in e.get("metrics", {}).items()}, samples=int(e.get("samples", 0)),
            created_at=timestamp(e.get("created_at", 0.0))) for e in manifest.evaluations])


def entry_kind_from_proto(value: int) -> EntryKind | None:
    """None for CHECKPOINT_KIND_UNSPECIFIED (no filter)."""
    return _ENTRY_KINDS_BY_NUMBER.get(value)
