"""The checkpoint store: atomic publication, crash safety, id safety, manifests old and new."""

from __future__ import annotations

import json
import multiprocessing
import os

import pytest

from services.common import store as store_module
from services.common.errors import AlreadyExists, InvalidArgument, NotFound
from services.common.store import CheckpointStore, EntryKind, Manifest


def _write(store: CheckpointStore, entry_id: str, kind=EntryKind.ADAPTER, **fields) -> Manifest:
    with store.write_entry(Manifest(id=entry_id, kind=kind, **fields)) as out:
        (out / "weights.bin").write_bytes(b"\x00" * 128)
    return store.get(entry_id)


def test_entries_are_published_whole_with_their_manifest(tmp_path):
    store = CheckpointStore(tmp_path)
    manifest = _write(store, "job-1-final", base_model_id="base", step=7, metrics={"loss": 1.5}, is_final=True)
    assert manifest.size_bytes == 128 and manifest.created_at > 0
    assert store.path_of("job-1-final") == tmp_path / "adapters" / "job-1-final"
    assert [m.id for m in store.list(kind=EntryKind.ADAPTER, base_model_id="base")] == ["job-1-final"]
    assert store.list(kind=EntryKind.BASE_MODEL) == []
    assert not any((tmp_path / ".tmp").iterdir())


def test_a_failed_write_publishes_nothing(tmp_path):
    store = CheckpointStore(tmp_path)
    with pytest.raises(RuntimeError):
        with store.write_entry(Manifest(id="half", kind=EntryKind.FULL_CHECKPOINT)) as out:
            (out / "part-1.bin").write_bytes(b"1")
            raise RuntimeError("disk full")
    assert not store.exists("half") and store.list() == []
    assert not any((tmp_path / ".tmp").iterdir())


def _crash_mid_write(root: str) -> None:
    store = CheckpointStore(root)
    with store.write_entry(Manifest(id="crashed", kind=EntryKind.ADAPTER)) as out:
        (out / "adapter_model.safetensors").write_bytes(b"partial")
        os._exit(1)  # the process dies mid-save, as under kill -9


def test_a_process_killed_mid_write_leaves_no_visible_entry(tmp_path, monkeypatch):
    child = multiprocessing.get_context("fork").Process(target=_crash_mid_write, args=(str(tmp_path),))
    child.start()
    child.join()
    store = CheckpointStore(tmp_path)
    assert not store.exists("crashed") and store.list() == []
    with pytest.raises(NotFound):
        store.get("crashed")
    # Leftovers of crashed writers are swept when a store opens (after they are old enough).
    monkeypatch.setattr(store_module, "STALE_TMP_SECONDS", -1)
    CheckpointStore(tmp_path)
    assert not any((tmp_path / ".tmp").iterdir())


def test_entries_are_immutable(tmp_path):
    store = CheckpointStore(tmp_path)
    _write(store, "same")
    with pytest.raises(AlreadyExists):
        _write(store, "same", kind=EntryKind.FULL_CHECKPOINT)


@pytest.mark.parametrize("bad", ["", "../etc", "a/b", "UPPER", "-leading", ".hidden", "x" * 129, "spa ce"])
def test_ids_cannot_escape_the_store(tmp_path, bad):
    store = CheckpointStore(tmp_path)
    with pytest.raises(InvalidArgument):
        store.path_of(bad)
    with pytest.raises(InvalidArgument):
        _write(store, bad)


def test_old_and_newer_manifests_stay_readable(tmp_path):
    store = CheckpointStore(tmp_path)
    old = tmp_path / "models" / "old-model"
    old.mkdir()
    (old / "manifest.json").write_text(json.dumps({"id": "old-model", "kind": "base_model"}))
    assert store.get("old-model").step == 0
    newer = tmp_path / "adapters" / "newer"
    newer.mkdir()
    (newer / "manifest.json").write_text(json.dumps(
        {"id": "newer", "kind": "adapter", "manifest_version": 9, "future_field": {"x": 1}}))
    manifest = store.get("newer")
    assert manifest.extra == {"future_field": {"x": 1}}
    assert json.loads(manifest.to_json())["future_field"] == {"x": 1}, "unknown keys survive a rewrite"
    store.update_metrics("newer", {"eval_loss": 0.5})
    assert store.get("newer").metrics == {"eval_loss": 0.5} and store.get("newer").extra == manifest.extra
