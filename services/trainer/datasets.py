"""Uploaded datasets, stored content-addressed under the trainer's data directory.

    <root>/<dataset_id>/data.<jsonl|parquet|csv>
    <root>/<dataset_id>/meta.json

The id is derived from the bytes' sha256, so uploading the same file twice returns the same id and
nothing is stored twice. Uploads stream to a temporary file (bounded memory) and are renamed into
place only when complete and verified.
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import time
import uuid
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path

from services.common.errors import DataLoss, InvalidArgument, NotFound, ResourceExhausted, Violation
from services.trainer.data import FileFormat, file_format_from_name
from services.trainer.data.formats import DATASET_ID_PREFIX



@dataclass
class StoredDataset:
    id: str
    name: str
    file_format: FileFormat
    size_bytes: int
    sha256: str
    created_at: float
    path: Path


class DatasetRegistry:
    def __init__(self, root: Path, max_bytes: int = 20 << 30):
        self.root = Path(root)
        self.max_bytes = max_bytes
        (self.root / ".tmp").mkdir(parents=True, exist_ok=True)

    def upload(self, name: str, file_format: FileFormat | None, chunks: Iterable[bytes],
               expected_sha256: str = "") -> StoredDataset:
        if not name:
            raise InvalidArgument("header.name: empty", [Violation(0, "header.name", "empty",
                                                                   "send the file name, e.g. train.jsonl")])
        file_format = file_format or file_format_from_name(name)
        tmp_dir = self.root / ".tmp" / uuid.uuid4().hex
        tmp_dir.mkdir(parents=True)
        try:
            digest = hashlib.sha256()
            size = 0
            data_path = tmp_dir / f"data.{file_format.value}"
            with open(data_path, "wb") as out:
                for chunk in chunks:
                    size += len(chunk)
                    if size > self.max_bytes:
                        raise ResourceExhausted(f"dataset is larger than this server's limit of "
                                                f"{self.max_bytes} bytes")
                    digest.update(chunk)
                    out.write(chunk)
                out.flush()
                os.fsync(out.fileno())
            sha = digest.hexdigest()
            if expected_sha256 and expected_sha256.lower() != sha:
                raise DataLoss(f"upload corrupted: sha256 of the received bytes is {sha}, the header said "
                               f"{expected_sha256}; upload again")
            if size == 0:
                raise InvalidArgument("the uploaded file is empty",
                                      [Violation(0, "chunk", "no bytes received", "send the file's content")])
            dataset_id = f"{DATASET_ID_PREFIX}{sha[:20]}"
            final = self.root / dataset_id
            if (final / "meta.json").is_file():
                return self.get(dataset_id)
            meta = {"id": dataset_id, "name": name, "file_format": file_format.value, "size_bytes": size,
                    "sha256": sha, "created_at": time.time()}
            (tmp_dir / "meta.json").write_text(json.dumps(meta, ensure_ascii=False, indent=2))
            try:
                os.rename(tmp_dir, final)
            except OSError:  # a concurrent upload of the same bytes won
                pass
            return self.get(dataset_id)
        finally:
            shutil.rmtree(tmp_dir, ignore_errors=True)

    def get(self, dataset_id: str, field_name: str = "dataset_id") -> StoredDataset:
        safe = dataset_id.startswith(DATASET_ID_PREFIX) and dataset_id[len(DATASET_ID_PREFIX):].isalnum()
        meta_path = self.root / dataset_id / "meta.json"
        if not safe or not meta_path.is_file():
            raise NotFound(f"{field_name}: no dataset with id {dataset_id!r}; upload it first "
                           "(`lmforge datasets upload FILE`) and use the id it returns")
        meta = json.loads(meta_path.read_text())
        return StoredDataset(id=meta["id"], name=meta["name"], file_format=FileFormat(meta["file_format"]),
                             size_bytes=meta["size_bytes"], sha256=meta["sha256"], created_at=meta["created_at"],
                             path=self.root / dataset_id / f"data.{meta['file_format']}")

    def list(self) -> list[StoredDataset]:
        found = [self.get(p.name) for p in self.root.iterdir()
                 if p.name.startswith(DATASET_ID_PREFIX) and (p / "meta.json").is_file()]
        return sorted(found, key=lambda d: d.created_at)
