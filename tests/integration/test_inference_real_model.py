"""The inference service on the real SmolLM2-135M-Instruct: exact greedy output, exact Chinese streaming,
and INT8 / NF4 loads that take less memory and still answer."""

from __future__ import annotations

import pytest

from lmforge.client import InferenceClient
from lmforge.v1 import inference_pb2
from tests.helpers import collect_generation

pytestmark = pytest.mark.slow
MODEL = "smollm2-135m-instruct"


@pytest.fixture(scope="module")
def real_client(smollm2_store):
    from services.inference.server import InferenceServer

    server = InferenceServer(smollm2_store, port=0, max_batch_size=4)
    server.serve()
    with InferenceClient(server.address, timeout=300) as client:
        yield client
    server.stop(grace_seconds=2)


def test_greedy_chat_equals_transformers_generate(real_client, smollm2_store):
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    path = smollm2_store / "models" / MODEL
    tokenizer = AutoTokenizer.from_pretrained(path)
    model = AutoModelForCausalLM.from_pretrained(path)
    messages = [{"role": "user", "content": "What is the capital of France?"}]
    prompt = tokenizer.apply_chat_template(messages, add_generation_prompt=True, return_tensors="pt", return_dict=True)
    with torch.no_grad():
        expected = model.generate(**prompt, do_sample=False, max_new_tokens=32)[0, prompt["input_ids"].shape[1]:].tolist()
    eos = tokenizer.convert_tokens_to_ids("<|im_end|>")
    if eos in expected:
        expected = expected[:expected.index(eos)]

    _, ids, finished, _ = collect_generation(real_client.generate(MODEL, messages=messages, temperature=0.0,
                                                                  max_new_tokens=32))
    assert ids == expected
    assert "Paris" in finished.text
    assert finished.finish_reason == inference_pb2.FINISH_REASON_EOS


def test_chinese_streams_exactly(real_client, smollm2_store):
    from transformers import AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(smollm2_store / "models" / MODEL)
    messages = [{"role": "user", "content": "请用中文写一句关于春天的话。"}]
    text, ids, finished, deltas = collect_generation(real_client.generate(MODEL, messages=messages, temperature=0.7,
                                                                          seed=3, max_new_tokens=48))
    assert text == finished.text == tokenizer.decode(ids, skip_special_tokens=True)
    assert any("\u4e00" <= ch <= "\u9fff" for ch in text), text
    assert all("\ufffd" not in d for d in deltas), "no delta carries a broken character"


def test_int8_and_nf4_take_less_memory_and_still_answer(real_client):
    memory = {}
    messages = [{"role": "user", "content": "Name a color."}]
    for quantization in ("none", "int8", "nf4"):
        loaded = {m.model_id for m in real_client.list_models().loaded}
        if MODEL in loaded:
            real_client.unload_model(MODEL)
        info = real_client.load_model(MODEL, quantization=quantization)
        memory[quantization] = info.memory_bytes
        _, ids, finished, _ = collect_generation(real_client.generate(MODEL, messages=messages, temperature=0.0,
                                                                      max_new_tokens=12))
        assert ids and finished.text.strip(), f"{quantization} load answers"
    real_client.unload_model(MODEL)
    assert memory["int8"] < 0.8 * memory["none"], memory
    assert memory["nf4"] < memory["int8"], memory
