"""Training on CUDA (skipped without a GPU): jobs land on a cuda slot, use bf16 where the GPU has it,
and QLoRA runs its 4-bit base on the GPU."""

from __future__ import annotations

import pytest

torch = pytest.importorskip("torch")
pytestmark = [pytest.mark.gpu,
              pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU (none visible)")]

from lmforge.v1 import trainer_pb2  # noqa: E402
from tests.helpers import sft_request  # noqa: E402


@pytest.mark.parametrize("adapter", ["ADAPTER_LORA", "ADAPTER_QLORA", "ADAPTER_FULL"])
def test_jobs_train_on_the_gpu(trainer_client, tiny_model_id, demo_dataset_id, adapter):
    job = trainer_client.start_training(sft_request(tiny_model_id, demo_dataset_id, adapter=adapter, max_steps=3))
    final = trainer_client.wait(job.id)
    assert final.state == trainer_pb2.JOB_STATE_SUCCEEDED, final.error
    assert final.device.startswith("cuda:")
    messages = [e.log.message for e in trainer_client.stream_metrics(job.id, follow=False)
                if e.WhichOneof("payload") == "log"]
    assert any(m.endswith("on cuda") for m in messages), messages
