"""`lmforge train`'s request: a YAML/JSON job file (proto field names, or their camelCase JSON spelling) with the
train flags applied on top, as a StartTrainingRequest. Which flag goes with which method is read from the proto
(lmforge.cli.choices)."""

from __future__ import annotations

import argparse
import copy
from collections.abc import Iterator, Sequence
from typing import Any

from lmforge.cli.choices import (
    ADAPTER_TYPES,
    METHODS,
    PREFERENCE_LOSSES,
    PREFERENCE_METHODS,
    REWARD_MODEL_METHODS,
    TEACHER_METHODS,
    VOCABULARY_METHODS,
    one_of,
)
from lmforge.client import to_start_training_request
from lmforge.v1 import trainer_pb2


def camel(name: str) -> str:
    """base_model_id -> baseModelId (the JSON name of a proto field)."""
    head, *rest = name.split("_")
    return head + "".join(p[:1].upper() + p[1:] for p in rest)


def get_field(d: dict, key: str, default=None):
    """d[key] by its proto name or its camelCase spelling."""
    if key in d:
        return d[key]
    return d.get(camel(key), default)


def set_path(d: dict, path: Sequence[str], value: Any) -> None:
    """d[path] = value using proto names; a camelCase spelling of the same field is replaced."""
    for key in path[:-1]:
        if camel(key) in d and key not in d:
            d[key] = d.pop(camel(key))
        child = d.get(key)
        if not isinstance(child, dict):
            child = d[key] = {}
        d = child
    leaf = path[-1]
    if camel(leaf) != leaf:
        d.pop(camel(leaf), None)
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


def _present_methods(request: dict) -> list[str]:
    return [m for m in METHODS if m in request or camel(m) in request]


def apply_train_overrides(request: dict, args: argparse.Namespace) -> dict:
    """A copy of a request dict (from a YAML/JSON file, proto field names) with the train flags applied.

    Flags win over file values; flags left unset keep them. With neither a method in the file nor
    --method, the method is sft.
    """
    out = copy.deepcopy(request)
    for dest, path in TRAIN_FLAG_FIELDS.items():
        value = getattr(args, dest, None)
        if value is not None:
            set_path(out, path, value)
    if getattr(args, "adapter", None):
        set_path(out, ("adapter", "type"), ADAPTER_TYPES[args.adapter])
    for label in getattr(args, "label", None) or []:
        key, _, value = label.partition("=")
        set_path(out, ("labels", key), value)

    method = getattr(args, "method", None)
    if method:
        method = method.replace("-", "_")
        body = get_field(out, method, None)
        for m in METHODS:
            out.pop(m, None)
            out.pop(camel(m), None)
        out[method] = body if isinstance(body, dict) else {}
    elif not _present_methods(out):
        out["sft"] = {}
    _apply_method_flags(out, args)
    return out


def _check_method(flag: str, given: bool, method: str, methods: tuple[str, ...]) -> None:
    if given and method not in methods:
        verb = "apply" if " and " in flag else "applies"
        raise ValueError(f"{flag} {verb} to the {one_of(methods)} method, not {method}")


def _apply_method_flags(request: dict, args: argparse.Namespace) -> None:
    """--beta / --loss, --new-token, --reward-model and --teacher go into the chosen method's body; on a method
    without that field they are an error (ValueError), not silently dropped."""
    method = next(iter(_present_methods(request)), "sft")
    body = get_field(request, method, None)
    if not isinstance(body, dict):
        body = {}
    request.pop(camel(method), None)
    request[method] = body
    beta, loss, tokens = (getattr(args, "beta", None), getattr(args, "loss", None),
                          getattr(args, "new_token", None))
    reward_model, teacher = getattr(args, "reward_model", None), getattr(args, "teacher", None)
    _check_method("--reward-model", bool(reward_model), method, REWARD_MODEL_METHODS)
    _check_method("--teacher", bool(teacher), method, TEACHER_METHODS)
    _check_method("--beta and --loss", beta is not None or bool(loss), method, PREFERENCE_METHODS)
    _check_method("--new-token", bool(tokens), method, VOCABULARY_METHODS)
    if reward_model:
        body["reward_model_id"] = reward_model
    if teacher:
        body["teacher_model_id"] = teacher
    if beta is not None:
        body["beta"] = beta
    if loss:
        body["loss"] = PREFERENCE_LOSSES[loss]
    if tokens:
        set_path(body, ("vocabulary", "new_tokens"), list(tokens))


def build_train_request(request: dict, args: argparse.Namespace) -> trainer_pb2.StartTrainingRequest:
    """File dict + flags -> StartTrainingRequest (json_format.ParseError on unknown fields/bad values)."""
    return to_start_training_request(apply_train_overrides(request, args))


def placeholders(value, path: str = "") -> Iterator[tuple[str, str]]:
    """(dotted path, value) of every "<...>" placeholder string left in a request dict (e.g. a job file's
    `ppo.reward_model_id: "<reward model id>"`)."""
    if isinstance(value, dict):
        for key, item in value.items():
            yield from placeholders(item, f"{path}.{key}" if path else str(key))
    elif isinstance(value, list):
        for i, item in enumerate(value):
            yield from placeholders(item, f"{path}[{i}]")
    elif isinstance(value, str) and value.startswith("<") and value.endswith(">"):
        yield path, value
