"""DescribeDataset: the request's checks and lookups around `data.stats.describe_file` (the token calculator).

    stats = describe_dataset(store, datasets, dataset_id="ds-...", base_model_id="smollm2-135m-instruct",
                             method="sft", max_seq_length=1024, epochs=3)

Checks every field first (INVALID_ARGUMENT naming each, with the fix), then resolves the ids (NOT_FOUND
naming the field) and the base the method would train (FAILED_PRECONDITION as at StartTraining: an adapter,
a reward model, no chat template for a chat method, no fast tokenizer). Messages name ids, never paths.
Imports no torch or transformers (the servicer imports it).
"""

from __future__ import annotations

from services.common.errors import InvalidArgument
from services.common.store import CheckpointStore
from services.trainer import admission, methods
from services.trainer.data.stats import ChatTokenizer, DatasetStats, describe_file
from services.trainer.datasets import DatasetRegistry
from services.trainer.methods.definition import RequestChecks

DEFAULT_METHOD = "sft"
MAX_EPOCHS = 1000


def describe_dataset(store: CheckpointStore, datasets: DatasetRegistry, *, dataset_id: str, base_model_id: str,
                     method: str, max_seq_length: int, epochs: int) -> DatasetStats:
    """The token statistics of a stored dataset for `method` on `base_model_id` (see data/stats.py).
    `method` "" means sft and `epochs` 0 means 1."""
    method = method or DEFAULT_METHOD
    epochs = epochs or 1
    checks = RequestChecks("DescribeDatasetRequest")
    checks.require(bool(dataset_id), "dataset_id", "is empty",
                   "upload the file first (`lmforge datasets upload FILE`) and pass the id it returns")
    checks.require(bool(base_model_id), "base_model_id", "is empty",
                   "name the store model whose tokenizer the job would use (`lmforge checkpoints`)")
    checks.require(method in methods.names(), "method", f"unknown training method {method!r}",
                   f"use one of {', '.join(methods.names())}")
    checks.require(max_seq_length > 0, "max_seq_length", f"{max_seq_length} is not a positive length",
                   "pass the max_seq_length the job would train with, e.g. 1024")
    checks.in_range(epochs, "epochs", 1, MAX_EPOCHS)
    if checks.violations:  # the message carries each fix too, for clients that show only the message
        raise InvalidArgument("invalid DescribeDatasetRequest: " + "; ".join(
            f"{v.field}: {v.reason} ({v.hint})" for v in checks.violations), checks.violations)

    definition = methods.get(method)
    stored = datasets.get(dataset_id)
    base = admission.trainable_base(store, base_model_id, definition)
    tokenizer = ChatTokenizer.from_model_dir(store.path_of(base.id, "base_model_id"), base.id)
    formats = tuple(methods.formats_for(method))
    if method == "dpo":  # unpaired (KTO) rows are dpo rows too, with dpo.loss KTO
        formats += tuple(f for f in methods.get("dpo").formats(methods.get("dpo").spec_class(loss="kto"))
                         if f not in formats)
    return describe_file(stored.path, stored.file_format, formats, tokenizer, max_seq_length, epochs, method=method)
