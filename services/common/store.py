"""The checkpoint store shared by the trainer and the inference service.

Layout under the store root (DESIGN.md §1):

    models/<id>/     full weights + tokenizer + manifest.json  (BASE_MODEL, FULL_CHECKPOINT, REWARD_MODEL)
    adapters/<id>/   LoRA weights + manifest.json               (ADAPTER; manifest names its base model)
    .tmp/<random>/   entries being written; renamed into place when complete

Clients only ever see ids; paths are resolved here and ids are checked against a strict pattern, so an
id can never walk out of the store. Writes go to a temporary directory and are renamed into place in
one `os.rename`, so a crash mid-save never leaves a half checkpoint visible; leftovers in `.tmp` are
swept when a store is opened. An entry's files are immutable once written; only its manifest grows
(evaluation results, the best-checkpoint mark), replaced atomically.

This module imports neither torch nor grpc: the servicers list checkpoints through it, and recipes
write weights into the directory that `write_entry` hands them.
"""

from __future__ import annotations

import json
import os
import re
import shutil
import time
import uuid
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import asdict, dataclass, field, fields
from enum import Enum
from pathlib import Path

from services.common.errors import AlreadyExists, InvalidArgument, NotFound, Violation

MANIFEST = "manifest.json"
MANIFEST_VERSION = 1
ID_PATTERN = re.compile(r"^[a-z0-9][a-z0-9._-]{0,127}$")
# Temporary entries older than this are from a crashed writer and are removed when a store opens.
STALE_TMP_SECONDS = 6 * 3600


class EntryKind(str, Enum):
    BASE_MODEL = "base_model"
    FULL_CHECKPOINT = "full_checkpoint"
    ADAPTER = "adapter"
    # A sequence-classification model with one score output (a `reward` job); RL methods score with it.
    REWARD_MODEL = "reward_model"

    @property
    def folder(self) -> str:
        return "adapters" if self is EntryKind.ADAPTER else "models"


@dataclass
class Manifest:
    """What the store knows about an entry. Unknown keys in old or newer files are kept in `extra`."""

    id: str
    kind: EntryKind
    base_model_id: str = ""
    method: str = ""
    job_id: str = ""
    step: int = 0
    metrics: dict[str, float] = field(default_factory=dict)
    dtype: str = ""
    has_tokenizer: bool = False
    # Whether its tokenizer defines a chat template (None in manifests written before this was recorded:
    # `CheckpointStore.get` then reads it from the files).
    has_chat_template: bool | None = None
    architecture: str = ""
    is_final: bool = False
    created_at: float = 0.0
    size_bytes: int = 0
    labels: dict[str, str] = field(default_factory=dict)
    # Best checkpoint of its job by the eval metric in labels["best_metric"].
    is_best: bool = False
    # Evaluate job results, oldest first: {"job_id", "dataset_id", "metrics": {name: value}, "samples",
    # "created_at"}.
    evaluations: list[dict] = field(default_factory=list)
    manifest_version: int = MANIFEST_VERSION
    extra: dict = field(default_factory=dict)

    def to_json(self) -> str:
        data = asdict(self)
        data["kind"] = self.kind.value
        extra = data.pop("extra")
        return json.dumps({**extra, **data}, indent=2, ensure_ascii=False, sort_keys=True)

    @classmethod
    def from_json(cls, text: str) -> Manifest:
        return cls.from_json_dict(json.loads(text))

    @classmethod
    def from_json_dict(cls, data: dict) -> Manifest:
        known = {f.name for f in fields(cls)} - {"extra"}
        kwargs = {k: v for k, v in data.items() if k in known}
        kwargs["kind"] = EntryKind(kwargs["kind"])
        kwargs["extra"] = {**data.get("extra", {}), **{k: v for k, v in data.items() if k not in known | {"extra"}}}
        return cls(**kwargs)


def check_id(entry_id: str, field_name: str = "id") -> str:
    if not isinstance(entry_id, str) or not ID_PATTERN.match(entry_id):
        raise InvalidArgument(
            f"{field_name}: {entry_id!r} is not a valid store id",
            [Violation(0, field_name, f"{entry_id!r} is not a valid store id",
                       "ids are 1-128 characters of a-z, 0-9, '.', '_', '-', starting with a letter or digit")],
        )
    return entry_id


def _dir_size(path: Path) -> int:
    return sum(p.stat().st_size for p in path.rglob("*") if p.is_file())


class CheckpointStore:
    """A directory of models and adapters addressed by id. Safe for several processes at once."""

    def __init__(self, root: str | os.PathLike):
        self.root = Path(root).resolve()
        for sub in ("models", "adapters", ".tmp"):
            (self.root / sub).mkdir(parents=True, exist_ok=True)
        self._sweep_stale_tmp()

    def _sweep_stale_tmp(self) -> None:
        cutoff = time.time() - STALE_TMP_SECONDS
        for tmp in (self.root / ".tmp").iterdir():
            try:
                if tmp.stat().st_mtime < cutoff:
                    shutil.rmtree(tmp, ignore_errors=True)
            except FileNotFoundError:
                pass

    def path_of(self, entry_id: str, field_name: str = "id") -> Path:
        """Directory of an existing entry (for loaders running on the server side)."""
        check_id(entry_id, field_name)
        for folder in ("models", "adapters"):
            path = self.root / folder / entry_id
            if (path / MANIFEST).is_file():
                return path
        raise NotFound(f"{field_name}: no model or adapter with id {entry_id!r} in the checkpoint store "
                       "(list them with `lmforge checkpoints`)")

    def exists(self, entry_id: str) -> bool:
        try:
            self.path_of(entry_id)
        except (NotFound, InvalidArgument):
            return False
        return True

    def get(self, entry_id: str, field_name: str = "id") -> Manifest:
        path = self.path_of(entry_id, field_name)
        manifest = Manifest.from_json((path / MANIFEST).read_text())
        if manifest.has_chat_template is None:
            manifest.has_chat_template = has_chat_template(path)
        return manifest

    @staticmethod
    def job_checkpoint_id(job_id: str, step: int, *, is_final: bool) -> str:
        """The id of a checkpoint a job saves: `JOB-final` for its result, `JOB-step-N` before."""
        return f"{job_id}-final" if is_final else f"{job_id}-step-{step}"

    def list(self, *, kind: EntryKind | None = None, job_id: str = "", base_model_id: str = "") -> list[Manifest]:
        """Entries matching every given filter, oldest first."""
        found = []
        for folder in ("models", "adapters"):
            for entry in (self.root / folder).iterdir():
                manifest_path = entry / MANIFEST
                if not manifest_path.is_file():
                    continue
                manifest = Manifest.from_json(manifest_path.read_text())
                if kind and manifest.kind != kind:
                    continue
                if job_id and manifest.job_id != job_id:
                    continue
                if base_model_id and manifest.base_model_id != base_model_id:
                    continue
                found.append(manifest)
        return sorted(found, key=lambda m: (m.created_at, m.id))

    @contextmanager
    def write_entry(self, manifest: Manifest) -> Iterator[Path]:
        """Yield an empty directory to write the entry's files into; publish it atomically on success.

        The manifest is written last and the directory renamed into place, so readers see either nothing
        or the whole entry. Raises AlreadyExists if the id is taken (entries are immutable). If the body
        raises, nothing is published.
        """
        check_id(manifest.id)
        final = self.root / manifest.kind.folder / manifest.id
        if self.exists(manifest.id):
            raise AlreadyExists(f"the checkpoint store already has an entry {manifest.id!r}")
        tmp = self.root / ".tmp" / f"{manifest.id}.{uuid.uuid4().hex[:8]}"
        tmp.mkdir(parents=True)
        try:
            yield tmp
            manifest.created_at = manifest.created_at or time.time()
            manifest.size_bytes = _dir_size(tmp)
            manifest.has_tokenizer = manifest.has_tokenizer or (tmp / "tokenizer_config.json").is_file()
            manifest.has_chat_template = has_chat_template(tmp)
            (tmp / MANIFEST).write_text(manifest.to_json())
            _fsync_tree(tmp)
            try:
                os.rename(tmp, final)
            except OSError as exc:  # another writer won the race for this id
                raise AlreadyExists(f"the checkpoint store already has an entry {manifest.id!r}") from exc
            _fsync_dir(final.parent)
        finally:
            if tmp.exists():
                shutil.rmtree(tmp, ignore_errors=True)

    def update_metrics(self, entry_id: str, metrics: dict[str, float]) -> Manifest:
        """Merge metrics into an entry's manifest."""
        return self._update_manifest(entry_id, lambda m: m.metrics.update(metrics))

    def mark_best(self, entry_id: str, metric: str, value: float) -> Manifest:
        """Mark the entry as its job's best checkpoint by `metric` (recorded in labels)."""
        def change(manifest: Manifest) -> None:
            manifest.is_best = True
            manifest.labels["best_metric"] = metric
            manifest.labels["best_value"] = f"{value:.6g}"
        return self._update_manifest(entry_id, change)

    def add_evaluation(self, entry_id: str, *, job_id: str, dataset_id: str, metrics: dict[str, float],
                       samples: int) -> Manifest:
        """Append one Evaluate job's results to the entry's manifest."""
        result = {"job_id": job_id, "dataset_id": dataset_id, "metrics": {k: float(v) for k, v in metrics.items()},
                  "samples": samples, "created_at": time.time()}
        return self._update_manifest(entry_id, lambda m: m.evaluations.append(result))

    def _update_manifest(self, entry_id: str, change) -> Manifest:
        """Apply `change(manifest)` and replace manifest.json atomically (weights are never touched).

        A lock file serialises concurrent updaters (an Evaluate job and a training job may both touch
        one entry), so neither update is lost."""
        import fcntl

        path = self.path_of(entry_id)
        with open(path / f".{MANIFEST}.lock", "w") as lock:
            fcntl.flock(lock, fcntl.LOCK_EX)
            manifest = Manifest.from_json((path / MANIFEST).read_text())
            change(manifest)
            tmp = path / f".{MANIFEST}.{uuid.uuid4().hex[:8]}"
            tmp.write_text(manifest.to_json())
            os.replace(tmp, path / MANIFEST)
        return manifest


def has_chat_template(model_dir: Path) -> bool:
    """Whether the tokenizer saved in `model_dir` defines a chat template (its own file, as transformers
    writes it now, or the `chat_template` key of tokenizer_config.json, as it did before)."""
    if (model_dir / "chat_template.jinja").is_file() or (model_dir / "chat_template.json").is_file():
        return True
    config = model_dir / "tokenizer_config.json"
    try:
        return bool(config.is_file() and json.loads(config.read_text(encoding="utf-8")).get("chat_template"))
    except (OSError, ValueError):
        return False


def _fsync_tree(root: Path) -> None:
    for path in root.rglob("*"):
        if path.is_file():
            with open(path, "rb") as handle:
                os.fsync(handle.fileno())
    _fsync_dir(root)


def _fsync_dir(path: Path) -> None:
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)
