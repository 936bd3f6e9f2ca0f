"""The transformers backend on CPU with tiny random models: exact greedy decoding, seeded sampling,
continuous batching in shared forward passes, cancellation, errors, LoRA adapters and INT8/NF4 loading.

    .venv/bin/python -m pytest tests/integration/test_transformers_backend.py -q -p no:cacheprovider
"""

from __future__ import annotations

import threading
import time
from pathlib import Path

import pytest

torch = pytest.importorskip("torch")

from services.common.errors import InvalidArgument, NotFound  # noqa: E402
from services.common.model_import import create_tiny_model  # noqa: E402
from services.common.store import CheckpointStore  # noqa: E402
from services.engine.backends.base import GenerationRequest, LoadOptions, QuantizationConfig  # noqa: E402
from services.engine.backends.transformers_backend import TransformersBackend, _Slot  # noqa: E402
from services.engine.sampling import SamplingConfig  # noqa: E402

CORPUS = [Path(__file__).resolve().parents[2] / "examples" / "data" / "sft_demo.jsonl"]
QUESTIONS = ["Hello, how are you?", "Write a short poem about the sea.", "What is 2 + 2?", "把这句话翻译成英文：你好，世界。"]


@pytest.fixture(scope="module")
def store(tmp_path_factory):
    store = CheckpointStore(tmp_path_factory.mktemp("store"))
    create_tiny_model(store, "tiny", corpus_files=CORPUS)
    return store


@pytest.fixture(scope="module")
def backend(store):
    backend = TransformersBackend(store.path_of("tiny"), LoadOptions(max_batch_size=8))
    yield backend
    backend.close()


def chat_prompt(backend, text: str) -> list[int]:
    rendered = backend.tokenizer.apply_chat_template([{"role": "user", "content": text}],
                                                     add_generation_prompt=True, tokenize=False)
    return backend.tokenizer.encode(rendered, add_special_tokens=False)


def run(backend, prompt, adapter=None, should_stop=lambda: False, **sampling):
    request = GenerationRequest("r", list(prompt), SamplingConfig(**sampling), adapter_id=adapter,
                                should_stop=should_stop)
    steps = list(backend.generate(request))
    assert all(step.finish is None for step in steps[:-1])
    return [t for step in steps for t in step.token_ids], steps[-1].finish


def run_together(backend, jobs: list[dict]) -> list:
    """Run several requests from threads, all admitted into one batch (the decode thread is held meanwhile)."""
    results: list = [None] * len(jobs)

    def worker(i: int) -> None:
        results[i] = run(backend, **jobs[i])

    threads = [threading.Thread(target=worker, args=(i,)) for i in range(len(jobs))]
    with backend._model_lock:  # the decode thread waits here, so every request queues up first
        for thread in threads:
            thread.start()
        deadline = time.monotonic() + 10
        while backend.queue_depth() < len(jobs) and time.monotonic() < deadline:
            time.sleep(0.005)
    for thread in threads:
        thread.join(timeout=30)
    return results


def test_greedy_equals_model_generate(backend):
    prompt = chat_prompt(backend, QUESTIONS[0])
    tokens, finish = run(backend, prompt, temperature=0.0, max_new_tokens=24)
    with torch.inference_mode():
        output = backend.model.generate(torch.tensor([prompt]), attention_mask=torch.ones_like(torch.tensor([prompt])),
                                        do_sample=False, max_new_tokens=24)
    expected = output[0, len(prompt):].tolist()
    if expected[-1] in backend.eos_token_ids:
        expected, expected_finish = expected[:-1], "eos"
    else:
        expected_finish = "length"
    assert tokens == expected
    assert finish == expected_finish


def test_seeded_sampling_is_reproducible(backend):
    prompt = chat_prompt(backend, QUESTIONS[1])
    first = run(backend, prompt, temperature=1.0, seed=123, max_new_tokens=20)
    again = run(backend, prompt, temperature=1.0, seed=123, max_new_tokens=20)
    other = run(backend, prompt, temperature=1.0, seed=124, max_new_tokens=20)
    assert first == again
    assert first[0] != other[0]
    # The same seed gives the same tokens when the request shares its batch with others.
    batched = run_together(backend, [
        {"prompt": prompt, "temperature": 1.0, "seed": 123, "max_new_tokens": 20},
        {"prompt": chat_prompt(backend, QUESTIONS[2]), "temperature": 1.0, "seed": 5, "max_new_tokens": 20},
        {"prompt": chat_prompt(backend, QUESTIONS[3]), "temperature": 0.0, "max_new_tokens": 20},
    ])
    assert batched[0] == first


def test_concurrent_requests_share_forward_passes(backend):
    prompts = [chat_prompt(backend, q) for q in QUESTIONS]
    assert len({len(p) for p in prompts}) > 1  # different lengths: left padding is exercised
    alone = [run(backend, p, temperature=0.0, max_new_tokens=12) for p in prompts]
    backend.stats["max_batch_seen"] = 0
    before = dict(backend.stats)
    together = run_together(backend, [{"prompt": p, "temperature": 0.0, "max_new_tokens": 12} for p in prompts])
    assert together == alone  # batching (left padding, per-row positions) does not change greedy output
    assert all(finish in ("length", "eos") for _, finish in together)
    assert backend.stats["max_batch_seen"] == 4
    assert backend.stats["prefill_calls"] - before["prefill_calls"] == 1
    decode_steps = backend.stats["decode_steps"] - before["decode_steps"]
    generated = sum(len(tokens) for tokens, _ in together)
    assert decode_steps <= max(len(tokens) for tokens, _ in together)  # one forward advances every row
    assert generated > decode_steps


def test_requests_join_a_running_batch(backend):
    long_prompt, short_prompt = chat_prompt(backend, QUESTIONS[1]), chat_prompt(backend, QUESTIONS[0])
    expected = run(backend, short_prompt, temperature=0.0, max_new_tokens=8)
    backend.stats["max_batch_seen"] = 0
    started = threading.Event()
    holder: dict = {}

    def late() -> None:
        started.wait(10)
        holder["late"] = run(backend, short_prompt, temperature=0.0, max_new_tokens=8)

    thread = threading.Thread(target=late)
    thread.start()
    request = GenerationRequest("long", long_prompt, SamplingConfig(temperature=0.0, max_new_tokens=200))
    for i, _ in enumerate(backend.generate(request)):
        if i == 2:
            started.set()
    thread.join(30)
    assert holder["late"] == expected  # admitted between steps, left-padded into the running cache
    assert backend.stats["max_batch_seen"] == 2


def test_should_stop_ends_the_stream_within_one_step(backend):
    prompt = chat_prompt(backend, QUESTIONS[2])
    stop = threading.Event()
    request = GenerationRequest("s", prompt, SamplingConfig(temperature=1.0, seed=7, max_new_tokens=400),
                                should_stop=stop.is_set)
    steps = []
    for step in backend.generate(request):
        steps.append(step)
        if len(steps) == 3:
            stop.set()
    assert steps[-1].finish == "stopped" and steps[-1].token_ids == []
    assert len(steps) <= 5  # 3 tokens, at most one more already in flight, then the stop


def test_max_new_tokens_ends_with_length(backend):
    prompt = chat_prompt(backend, QUESTIONS[3])
    tokens, finish = run(backend, prompt, temperature=1.0, seed=3, max_new_tokens=5)
    assert finish == "length" and len(tokens) == 5
    tokens, finish = run(backend, prompt, temperature=1.0, seed=3, max_new_tokens=1)
    assert finish == "length" and len(tokens) == 1


def test_context_limit_and_bad_prompts(backend):
    prompt = chat_prompt(backend, QUESTIONS[0])
    near_full = (prompt * 200)[: backend.context_length - 3]
    tokens, finish = run(backend, near_full, temperature=1.0, seed=1, max_new_tokens=50)
    assert finish in ("length", "eos") and len(tokens) <= 3
    assert run(backend, (prompt * 200)[: backend.context_length], max_new_tokens=5) == ([], "length")
    for bad in ([], [backend.vocab_size + 5], (prompt * 200)[: backend.context_length + 1]):
        with pytest.raises(InvalidArgument):
            run(backend, bad)
    with pytest.raises(NotFound):
        run(backend, prompt, adapter="no-such-adapter")


def test_penalties_and_warpers():
    scores = torch.tensor([3.0, 2.9, 1.0, -1.0])
    request = GenerationRequest("p", [0], SamplingConfig(temperature=0.0, frequency_penalty=2.0))
    slot = _Slot(request=request, max_new=10, generator=torch.Generator().manual_seed(0), eos=frozenset())
    assert TransformersBackend._sample(scores.clone(), slot) == 0
    slot.generated = [0]
    assert TransformersBackend._sample(scores.clone(), slot) == 1  # 3.0 - 2.0 < 2.9
    slot.request.sampling = SamplingConfig(temperature=0.0, repetition_penalty=1.1)  # 3.0/1.1 < 2.9
    assert TransformersBackend._sample(scores.clone(), slot) == 1
    slot.request.sampling = SamplingConfig(temperature=1.0, top_k=1)
    assert {TransformersBackend._sample(scores.clone(), slot) for _ in range(20)} == {0}
    slot.request.sampling = SamplingConfig(temperature=1.0, min_p=0.5)
    assert {TransformersBackend._sample(scores.clone(), slot) for _ in range(50)} <= {0, 1}


def test_a_failing_forward_fails_its_requests_and_the_backend_keeps_serving(backend, monkeypatch):
    prompt = chat_prompt(backend, QUESTIONS[0])
    expected = run(backend, prompt, temperature=0.0, max_new_tokens=4)

    def broken(*args, **kwargs):
        raise RuntimeError("boom")

    monkeypatch.setattr(backend, "_forward", broken)
    with pytest.raises(RuntimeError, match="boom"):
        run(backend, prompt, temperature=0.0, max_new_tokens=4)
    monkeypatch.undo()
    assert run(backend, prompt, temperature=0.0, max_new_tokens=4) == expected


@pytest.fixture(scope="module")
def adapter_dir(store, tmp_path_factory):
    from peft import LoraConfig, get_peft_model
    from transformers import AutoModelForCausalLM

    torch.manual_seed(1)
    model = AutoModelForCausalLM.from_pretrained(store.path_of("tiny"))
    model = get_peft_model(model, LoraConfig(r=4, target_modules=["q_proj", "v_proj"], init_lora_weights=False))
    out = tmp_path_factory.mktemp("adapter")
    model.save_pretrained(out)
    return out


def test_lora_adapter_changes_output_and_base_requests_stay_base(backend, adapter_dir):
    prompts = [chat_prompt(backend, q) for q in QUESTIONS[:2]]
    base = [run(backend, p, temperature=0.0, max_new_tokens=12) for p in prompts]
    backend.load_adapter("lora-a", adapter_dir)
    try:
        assert backend.adapter_ids() == ["lora-a"]
        tuned = [run(backend, p, adapter="lora-a", temperature=0.0, max_new_tokens=12) for p in prompts]
        assert tuned != base
        assert [run(backend, p, temperature=0.0, max_new_tokens=12) for p in prompts] == base
        # Base and adapter requests decoded in the same forward passes (peft mixed-adapter batch).
        backend.stats["max_batch_seen"] = 0
        mixed = run_together(backend, [
            {"prompt": prompts[0], "temperature": 0.0, "max_new_tokens": 12},
            {"prompt": prompts[0], "adapter": "lora-a", "temperature": 0.0, "max_new_tokens": 12},
            {"prompt": prompts[1], "adapter": "lora-a", "temperature": 0.0, "max_new_tokens": 12},
            {"prompt": prompts[1], "temperature": 0.0, "max_new_tokens": 12},
        ])
        assert mixed == [base[0], tuned[0], tuned[1], base[1]]
        assert backend.stats["max_batch_seen"] == 4
    finally:
        backend.unload_adapter("lora-a")
    assert backend.adapter_ids() == []
    assert [run(backend, p, temperature=0.0, max_new_tokens=12) for p in prompts] == base
    backend.load_adapter("lora-b", adapter_dir)  # loading works again once the last adapter is gone
    try:
        assert run(backend, prompts[0], adapter="lora-b", temperature=0.0, max_new_tokens=12) == tuned[0]
    finally:
        backend.unload_adapter("lora-b")


def test_close_stops_running_and_waiting_requests(store):
    backend = TransformersBackend(store.path_of("tiny"), LoadOptions(max_batch_size=1))
    prompt = chat_prompt(backend, QUESTIONS[0])
    finishes: dict = {}

    def consume(name: str) -> None:
        request = GenerationRequest(name, prompt, SamplingConfig(temperature=1.0, seed=1, max_new_tokens=100_000))
        finishes[name] = [step.finish for step in backend.generate(request)][-1]

    running = threading.Thread(target=consume, args=("running",))
    running.start()
    deadline = time.monotonic() + 10
    while backend.batch_size() == 0 and time.monotonic() < deadline:
        time.sleep(0.005)
    waiting = threading.Thread(target=consume, args=("waiting",))
    waiting.start()
    while backend.queue_depth() == 0 and time.monotonic() < deadline:
        time.sleep(0.005)
    backend.close()
    running.join(10)
    waiting.join(10)
    assert finishes == {"running": "stopped", "waiting": "stopped"}


def test_int8_and_nf4_loading_use_less_memory(tmp_path):
    store = CheckpointStore(tmp_path)
    create_tiny_model(store, "tiny-256", hidden_size=256, num_layers=2, corpus_files=CORPUS)
    path = store.path_of("tiny-256")
    full = TransformersBackend(path, LoadOptions())
    full_bytes = full.memory_bytes()
    prompt = chat_prompt(full, QUESTIONS[0])
    full.close()
    for qtype in ("int8", "nf4"):
        backend = TransformersBackend(path, LoadOptions(quantization=QuantizationConfig(type=qtype)))
        try:
            assert backend.quantization == qtype
            assert backend.memory_bytes() < full_bytes * 0.6
            tokens, finish = run(backend, prompt, temperature=0.0, max_new_tokens=4)
            assert finish in ("length", "eos") and (tokens or finish == "eos")
        finally:
            backend.close()
