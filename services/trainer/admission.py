"""Admission: the domain checks of a new job that need the checkpoint store or the dataset registry.

    spec = convert.spec_from_request(request, gpu=gpu)        # every field checked (INVALID_ARGUMENT)
    spec = admission.admit(spec, store, datasets)             # ids exist, kinds fit, datasets resolved

Run once, at StartTraining / Evaluate, before the job exists; recipes do not repeat these checks. What is
checked comes from the method's definition (services/trainer/methods): the base model is a store entry of
an allowed kind and has a chat template when the method renders chats; every other entry the job reads
(teacher, reward models, tokenizer source) exists, is of its kind and has a tokenizer; the datasets are
uploaded (their stored file is resolved here, ids only ever come from clients). Raises NotFound for
unknown ids and FailedPrecondition for entries that exist but cannot serve.
"""

from __future__ import annotations

from services.common.errors import FailedPrecondition, InvalidArgument, Violation
from services.common.store import CheckpointStore, EntryKind, Manifest
from services.trainer import methods
from services.trainer.datasets import DatasetRegistry
from services.trainer.methods.definition import MethodDefinition, ModelReference
from services.trainer.spec import DatasetFile, TrainingSpec


def admit(spec: TrainingSpec, store: CheckpointStore, datasets: DatasetRegistry) -> TrainingSpec:
    """`spec` with its base model id canonical and its datasets resolved, once every store check passed."""
    definition = methods.get(spec.method)
    if spec.method == "evaluate":
        _admit_evaluation(spec, store)
    elif definition.needs_base_model:
        spec.base_model_id = trainable_base(store, spec.base_model_id, definition).id
    for reference in definition.references(spec.method_spec) if definition.references else []:
        _check_reference(store, reference)
    spec.dataset = _dataset_file(datasets, spec.dataset.dataset_id, "dataset_id")
    if spec.eval_dataset is not None:
        spec.eval_dataset = _dataset_file(datasets, spec.eval_dataset.dataset_id, "eval.eval_dataset_id")
    return spec


def trainable_base(store: CheckpointStore, base_model_id: str, definition: MethodDefinition) -> Manifest:
    """The store entry a `definition` job may train (also what DescribeDataset tokenizes with). Raises
    NotFound (base_model_id) or FailedPrecondition (an adapter, a reward model, no chat template)."""
    base = store.get(base_model_id, "base_model_id")
    if base.kind is EntryKind.ADAPTER:
        raise FailedPrecondition(f"base_model_id: {base.id!r} is a LoRA adapter, not a model; train on its base "
                                 f"{base.base_model_id!r}, or merge the adapter first")
    if base.kind not in definition.base_kinds:
        raise FailedPrecondition(f"base_model_id: {base.id!r} is a reward model (a scorer, not a language model); "
                                 f"{definition.name} needs a causal language model from the store")
    if definition.needs_chat_template and not base.has_chat_template:
        raise FailedPrecondition(f"base_model_id: {base.id!r} has no chat template; {definition.name} renders "
                                 "chats with it (use an instruct/chat model, or one whose tokenizer defines one)")
    return base


def _check_reference(store: CheckpointStore, reference: ModelReference) -> None:
    entry = store.get(reference.entry_id, reference.field)
    if entry.kind not in reference.kinds:
        hint = ("; train one with the reward method and name its checkpoint"
                if reference.kinds == (EntryKind.REWARD_MODEL,) else "")
        raise FailedPrecondition(f"{reference.field}: {entry.id!r} is a {entry.kind.value}, not "
                                 f"{reference.role}{hint}")
    if reference.needs_tokenizer and not entry.has_tokenizer:
        raise FailedPrecondition(f"{reference.field}: {entry.id!r} has no tokenizer of its own, so it cannot turn "
                                 "text into inputs; name an entry saved with its tokenizer")


def _admit_evaluation(spec: TrainingSpec, store: CheckpointStore) -> None:
    """Evaluate: model_id may name an adapter directly (then its base is scored with it)."""
    evaluation = spec.method_spec
    model = store.get(spec.base_model_id, "model_id")
    if model.kind is EntryKind.ADAPTER:
        if evaluation.adapter_id and evaluation.adapter_id != model.id:
            raise InvalidArgument("model_id: names an adapter and adapter_id names another one",
                                  [Violation(0, "model_id", "is an adapter", "pass the adapter's base model as model_id")])
        evaluation.adapter_id = model.id
        model = store.get(model.base_model_id, "model_id")
    if model.kind is EntryKind.REWARD_MODEL:
        raise FailedPrecondition(f"model_id: {model.id!r} is a reward model; Evaluate scores language models")
    spec.base_model_id = model.id
    if evaluation.adapter_id:
        adapter = store.get(evaluation.adapter_id, "adapter_id")
        if adapter.kind is not EntryKind.ADAPTER:
            raise FailedPrecondition(f"adapter_id: {adapter.id!r} is a {adapter.kind.value}, not an adapter; "
                                     "pass it as model_id instead")
        if adapter.base_model_id != model.id:
            raise FailedPrecondition(f"adapter_id: {adapter.id!r} was trained on {adapter.base_model_id!r}, not "
                                     f"{model.id!r}; pass model_id={adapter.base_model_id!r}")


def _dataset_file(datasets: DatasetRegistry, dataset_id: str, field: str) -> DatasetFile:
    stored = datasets.get(dataset_id, field)
    return DatasetFile(dataset_id=stored.id, path=str(stored.path), file_format=stored.file_format.value,
                       format="auto")
