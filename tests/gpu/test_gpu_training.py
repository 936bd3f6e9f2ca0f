"""Training on CUDA (skipped without a GPU): jobs land on a cuda slot, train with bf16 mixed precision where
the GPU has bf16 (fp32 where it has not), QLoRA runs its 4-bit base on the GPU, and every job changes the
weights it trains.

    .venv/bin/python -m pytest tests/gpu -q
"""

from __future__ import annotations

import pytest

torch = pytest.importorskip("torch")
pytestmark = [pytest.mark.gpu,
              pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU (none visible)")]

from tests.helpers import all_events, run_job, sft_request  # noqa: E402


@pytest.mark.parametrize("adapter", ["ADAPTER_LORA", "ADAPTER_QLORA", "ADAPTER_FULL"])
def test_jobs_train_on_the_gpu(trainer_client, trainer_server, tiny_model_id, demo_dataset_id, adapter, tmp_path):
    from services.trainer import methods
    from services.trainer.training.adapters import resolve_precision
    from services.trainer.training.common import training_arguments

    job = run_job(trainer_client, sft_request(tiny_model_id, demo_dataset_id, adapter=adapter, max_steps=3,
                                              learning_rate=1e-3))
    assert job.device.startswith("cuda:")
    logs = [e.log.message for e in all_events(trainer_client, job.id) if e.WhichOneof("payload") == "log"]
    assert any(m.endswith("on cuda") for m in logs), logs

    # Precision "auto": what the worker resolved from this job's own spec on its CUDA device.
    spec = methods.load_spec((trainer_server.home / "jobs" / job.id / "spec.json").read_text(encoding="utf-8"))
    assert spec.hyperparameters.precision == "auto"
    bf16 = torch.cuda.is_bf16_supported()
    precision = resolve_precision(spec.hyperparameters, spec.adapter, "cuda")
    assert (precision.bf16, precision.fp16) == (bf16, False)
    arguments = training_arguments(spec, str(tmp_path), "cuda", False)
    assert (arguments["bf16"], arguments["fp16"], arguments["use_cpu"]) == (bf16, False, False)
    if adapter == "ADAPTER_QLORA":
        assert any("quantization: nf4 4-bit" in m for m in logs), logs
        assert precision.compute_dtype == ("bfloat16" if bf16 else "float32")

    assert_weights_changed(trainer_server.store_root, tiny_model_id, job.result_checkpoint_id, adapter)


def assert_weights_changed(store_root, base_model_id: str, checkpoint_id: str, adapter: str) -> None:
    """LoRA B matrices start at zero, so non-zero ones changed the model; full training changes most tensors."""
    from safetensors.torch import load_file

    if adapter == "ADAPTER_FULL":
        base = load_file(store_root / "models" / base_model_id / "model.safetensors")
        trained = load_file(store_root / "models" / checkpoint_id / "model.safetensors")
        assert base.keys() == trained.keys()
        changed = [name for name in base if not base[name].equal(trained[name])]
        assert len(changed) > len(base) // 2, f"only {changed} changed"
    else:
        weights = load_file(store_root / "adapters" / checkpoint_id / "adapter_model.safetensors")
        lora_b = [t for name, t in weights.items() if "lora_B" in name]
        assert lora_b and all(t.abs().sum() > 0 for t in lora_b)
