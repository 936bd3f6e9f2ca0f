"""The inference service over real gRPC on tiny local models: exact greedy output, seeds, adapters trained
by the trainer, streaming, cancellation, overload and every bad-input status."""

from __future__ import annotations

import threading
import time

import grpc
import pytest

from lmforge.client import InferenceClient
from lmforge.v1 import inference_pb2
from tests.helpers import collect_generation as collect
from tests.helpers import rpc_code, sft_request, wait_for

CHAT = [{"role": "user", "content": "What does LoRA train?"}]


@pytest.fixture(scope="module")
def inference_server(store_root):
    from services.inference.server import InferenceServer

    server = InferenceServer(store_root, port=0, max_batch_size=4, max_requests_per_model=8)
    server.serve()
    yield server
    server.stop(grace_seconds=2)


@pytest.fixture(scope="module")
def client(inference_server):
    with InferenceClient(inference_server.address, timeout=120) as c:
        yield c


@pytest.fixture(scope="module")
def trained_adapter_id(trainer_client, tiny_model_id, demo_dataset_id) -> str:
    """A LoRA adapter trained by the trainer service, as a user would hand it over."""
    job = trainer_client.start_training(sft_request(tiny_model_id, demo_dataset_id, max_steps=12,
                                                    learning_rate=1e-2, lr_scheduler="constant"))
    final = trainer_client.wait(job.id)
    assert final.result_checkpoint_id, final.error
    return final.result_checkpoint_id


def test_greedy_output_equals_transformers_generate(client, store_root, tiny_model_id):
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    path = store_root / "models" / tiny_model_id
    tokenizer = AutoTokenizer.from_pretrained(path)
    model = AutoModelForCausalLM.from_pretrained(path)
    prompt = tokenizer.apply_chat_template(CHAT, add_generation_prompt=True, return_tensors="pt", return_dict=True)
    with torch.no_grad():
        expected = model.generate(**prompt, do_sample=False, max_new_tokens=24)[0, prompt["input_ids"].shape[1]:]
    expected = [t for t in expected.tolist() if t != tokenizer.eos_token_id]

    text, ids, finished, _ = collect(client.generate(tiny_model_id, messages=CHAT, temperature=0.0,
                                                     max_new_tokens=24))
    assert ids == expected
    assert text == finished.text == tokenizer.decode(expected, skip_special_tokens=True)
    assert finished.usage.prompt_tokens == prompt["input_ids"].shape[1]
    assert finished.usage.completion_tokens == len(ids)
    assert finished.finish_reason in (inference_pb2.FINISH_REASON_LENGTH, inference_pb2.FINISH_REASON_EOS)
    assert finished.timings.time_to_first_token_ms > 0


def test_seeds_make_sampling_reproducible(client, tiny_model_id):
    def sample(seed):
        return collect(client.generate(tiny_model_id, messages=CHAT, temperature=1.0, top_p=0.95, top_k=50,
                                       seed=seed, max_new_tokens=16))[1]

    assert sample(1234) == sample(1234)
    assert len({tuple(sample(seed)) for seed in (1, 2, 3, 4)}) > 1


def test_n_choices_stream_with_their_own_index(client, tiny_model_id):
    finished = {}
    texts = {0: "", 1: "", 2: ""}
    for response in client.generate(tiny_model_id, messages=CHAT, temperature=1.0, seed=5, n=3, max_new_tokens=8):
        texts[response.index] += response.text_delta
        if response.HasField("finished"):
            finished[response.index] = response.finished
    assert set(finished) == {0, 1, 2}
    assert all(texts[i] == finished[i].text for i in range(3))


def test_an_adapter_trained_by_the_trainer_changes_the_output(client, tiny_model_id, trained_adapter_id):
    base = collect(client.generate(tiny_model_id, messages=CHAT, temperature=0.0, max_new_tokens=16))[1]
    tuned = collect(client.generate(tiny_model_id, adapter_id=trained_adapter_id, messages=CHAT, temperature=0.0,
                                    max_new_tokens=16))[1]
    assert tuned != base
    again = collect(client.generate(tiny_model_id, messages=CHAT, temperature=0.0, max_new_tokens=16))[1]
    assert again == base, "requests without the adapter still get the base model"
    loaded = {m.model_id: m for m in client.list_models().loaded}
    assert trained_adapter_id in [a.adapter_id for a in loaded[tiny_model_id].adapters]


def test_stop_sequences_end_generation_before_the_match(client, tiny_model_id):
    text, _, _, _ = collect(client.generate(tiny_model_id, messages=CHAT, temperature=0.0, max_new_tokens=24))
    assert len(text) > 4
    stop = text[2:4]
    cut, _, finished, _ = collect(client.generate(tiny_model_id, messages=CHAT, temperature=0.0, max_new_tokens=24,
                                                  stop=[stop]))
    assert finished.finish_reason == inference_pb2.FINISH_REASON_STOP
    assert cut == text[:text.index(stop)] == finished.text


def test_cancel_mid_stream_frees_the_slot(client, inference_server, tiny_model_id):
    call = client.generate(tiny_model_id, messages=CHAT, temperature=1.0, max_new_tokens=400)
    next(call)
    call.cancel()
    loaded = inference_server.registry.get(tiny_model_id)
    wait_for(lambda: loaded.active_requests == 0, timeout=10, what="the cancelled request to release its slot")
    assert collect(client.generate(tiny_model_id, messages=CHAT, temperature=0.0, max_new_tokens=4))[2] is not None


def test_deadline_ends_the_stream_and_frees_the_slot(client, inference_server, tiny_model_id):
    """The server watches the deadline itself, so two endings are both correct and race each other:
    it closes the stream first with finish reason DEADLINE, or gRPC's own expiry ends it first."""
    try:
        _, ids, finished, _ = collect(client.generate(tiny_model_id, messages=CHAT, temperature=1.0,
                                                      max_new_tokens=480, ignore_eos=True, timeout=0.15))
    except grpc.RpcError as error:
        assert error.code() == grpc.StatusCode.DEADLINE_EXCEEDED
    else:
        assert finished.finish_reason == inference_pb2.FINISH_REASON_DEADLINE and len(ids) < 480
    loaded = inference_server.registry.get(tiny_model_id)
    wait_for(lambda: loaded.active_requests == 0, timeout=10, what="the expired request to release its slot")


def test_overload_is_refused_at_once(store_root, tiny_model_id):
    from services.inference.server import InferenceServer

    server = InferenceServer(store_root, port=0, max_batch_size=2, max_requests_per_model=2)
    server.serve()
    try:
        with InferenceClient(server.address) as c:
            # ignore_eos: a sampled end-of-text must not free a slot before the third request arrives
            streams = [c.generate(tiny_model_id, messages=CHAT, temperature=1.0, max_new_tokens=480, ignore_eos=True)
                       for _ in range(2)]
            for stream in streams:
                next(stream)  # admitted and decoding
            started = time.monotonic()
            code = rpc_code(lambda: next(c.generate(tiny_model_id, messages=CHAT, max_new_tokens=4)))
            assert code == grpc.StatusCode.RESOURCE_EXHAUSTED and time.monotonic() - started < 5
            for stream in streams:
                stream.cancel()
    finally:
        server.stop(grace_seconds=1)


def test_concurrent_streams_all_complete(client, tiny_model_id):
    results = [None] * 6

    def run(index):
        results[index] = collect(client.generate(tiny_model_id, messages=CHAT, temperature=1.0, seed=index,
                                                 max_new_tokens=12))[2]

    threads = [threading.Thread(target=run, args=(i,)) for i in range(6)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(timeout=120)
    assert all(r is not None and r.usage.completion_tokens > 0 for r in results)


def test_bad_input_gets_precise_status_codes(client, store_root, tiny_model_id, trained_adapter_id):
    from services.common.model_import import create_tiny_model
    from services.common.store import CheckpointStore

    def first(**kwargs):
        return lambda: next(client.generate(**kwargs))

    assert rpc_code(first(model_id="no-such-model", messages=CHAT)) == grpc.StatusCode.NOT_FOUND
    assert rpc_code(first(model_id=tiny_model_id, adapter_id="no-such-adapter", messages=CHAT)) == \
        grpc.StatusCode.NOT_FOUND
    store = CheckpointStore(store_root)
    if not store.exists("tiny-qwen"):
        create_tiny_model(store, "tiny-qwen", architecture="qwen2")
    assert rpc_code(first(model_id="tiny-qwen", adapter_id=trained_adapter_id, messages=CHAT)) == \
        grpc.StatusCode.FAILED_PRECONDITION
    assert rpc_code(first(model_id=trained_adapter_id, messages=CHAT)) == grpc.StatusCode.FAILED_PRECONDITION
    with pytest.raises(grpc.RpcError) as info:
        next(client.generate(_tiny_reward_model(store, tiny_model_id), messages=CHAT))
    assert info.value.code() == grpc.StatusCode.FAILED_PRECONDITION and "reward model" in info.value.details()

    with pytest.raises(grpc.RpcError) as info:
        next(client.generate(tiny_model_id, messages=CHAT, temperature=2.5))
    assert info.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert "sampling.temperature" in info.value.details() and "2.0" in info.value.details()

    long_text = "token " * 2000
    with pytest.raises(grpc.RpcError) as info:
        next(client.generate(tiny_model_id, text=long_text))
    assert info.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert "context of 512" in info.value.details()
    assert rpc_code(first(model_id=tiny_model_id, messages=[{"role": "robot", "content": "hi"}])) == \
        grpc.StatusCode.INVALID_ARGUMENT


def _tiny_reward_model(store, base_id: str) -> str:
    """A real one-score sequence classifier on the tiny base, stored as a REWARD_MODEL entry."""
    from transformers import AutoModelForSequenceClassification, AutoTokenizer

    from services.common.store import EntryKind, Manifest

    reward_id = "tiny-reward-scorer"
    if not store.exists(reward_id):
        model = AutoModelForSequenceClassification.from_pretrained(store.path_of(base_id), num_labels=1)
        tokenizer = AutoTokenizer.from_pretrained(store.path_of(base_id))
        model.config.pad_token_id = tokenizer.pad_token_id
        with store.write_entry(Manifest(id=reward_id, kind=EntryKind.REWARD_MODEL, base_model_id=base_id)) as out:
            model.save_pretrained(out)
            tokenizer.save_pretrained(out)
    return reward_id


def test_tokenize_counts_tokens_of_text_and_chat(client, tiny_model_id):
    text = client.tokenize(tiny_model_id, text="你好，世界 hello")
    assert text.count == len(text.token_ids) == len(text.pieces) > 0
    assert text.chars_per_token == pytest.approx(len("你好，世界 hello") / text.count)
    chat = client.tokenize(tiny_model_id, messages=CHAT)
    assert chat.count > text.count and chat.context_length == 512


def test_load_unload_and_list(client, tiny_model_id):
    models = client.list_models()
    assert tiny_model_id in {c.id for c in models.available}
    with pytest.raises(grpc.RpcError) as info:
        client.load_model(tiny_model_id, quantization="nf4")
    assert info.value.code() == grpc.StatusCode.FAILED_PRECONDITION, "loaded already with other settings"
    assert rpc_code(lambda: client.unload_model("tiny-not-loaded")) == grpc.StatusCode.NOT_FOUND


def test_several_adapters_live_on_one_base_and_each_request_picks_its_own(client, store_root, tiny_model_id,
                                                                        trained_adapter_id):
    import torch
    from peft import LoraConfig, get_peft_model
    from transformers import AutoModelForCausalLM

    from services.common.store import CheckpointStore, EntryKind, Manifest

    store = CheckpointStore(store_root)
    second = "random-lora-b"
    if not store.exists(second):
        torch.manual_seed(7)
        model = get_peft_model(AutoModelForCausalLM.from_pretrained(store.path_of(tiny_model_id)),
                               LoraConfig(r=4, target_modules=["q_proj", "v_proj"], init_lora_weights=False))
        with store.write_entry(Manifest(id=second, kind=EntryKind.ADAPTER, base_model_id=tiny_model_id)) as out:
            model.save_pretrained(out)

    def greedy(adapter_id=""):
        return collect(client.generate(tiny_model_id, adapter_id=adapter_id, messages=CHAT, temperature=0.0,
                                       max_new_tokens=12))[1]

    results = {}
    threads = [threading.Thread(target=lambda a=a: results.__setitem__(a, greedy(a)))
               for a in ("", trained_adapter_id, second)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(timeout=120)
    assert len({tuple(v) for v in results.values()}) == 3, "base, adapter A and adapter B answer differently"
    assert results[""] == greedy() and results[second] == greedy(second), "concurrent answers match solo ones"
    loaded = {m.model_id: m for m in client.list_models().loaded}[tiny_model_id]
    assert {trained_adapter_id, second} <= {a.adapter_id for a in loaded.adapters}


def test_cli_chat_tokens_and_models_against_the_server(inference_server, tiny_model_id):
    import subprocess
    import sys

    from tests.conftest import ROOT

    def lmforge(*args):
        return subprocess.run([sys.executable, "-m", "lmforge.cli", "--inference-address", inference_server.address,
                               *args], cwd=ROOT, capture_output=True, text=True, timeout=120)

    chat = lmforge("chat", tiny_model_id, "你好", "--temperature", "0", "--max-new-tokens", "8")
    assert chat.returncode == 0, chat.stderr
    assert "finish: length · 8 tokens" in chat.stderr and len(chat.stdout) > 0
    tokens = lmforge("tokens", tiny_model_id, "你好，世界")
    assert tokens.returncode == 0 and "chars/token" in tokens.stdout.replace(" per ", "/"), tokens.stdout
    models = lmforge("models")
    assert models.returncode == 0 and tiny_model_id in models.stdout
    bad = lmforge("chat", tiny_model_id, "hi", "--temperature", "9")
    assert bad.returncode == 2 and "INVALID_ARGUMENT" in bad.stderr and "sampling.temperature" in bad.stderr
