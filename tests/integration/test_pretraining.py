"""Pretraining from scratch, continued pretraining and vocabulary expansion through the real trainer
service: every job runs real training steps in a worker process on a tiny model, and the results are
loaded back with transformers (and the inference service's backend) to check what they learnt.

    .venv/bin/python -m pytest tests/integration/test_pretraining.py -q -p no:cacheprovider
"""

from __future__ import annotations

import math

import grpc
import pytest
from google.rpc import error_details_pb2
from grpc_status import rpc_status
from safetensors.torch import load_file

from lmforge.v1 import common_pb2, trainer_pb2
from tests.conftest import EXAMPLES
from tests.helpers import sft_request

torch = pytest.importorskip("torch")

CORPUS = EXAMPLES / "pretrain_corpus.jsonl"
HELDOUT = EXAMPLES / "pretrain_heldout.jsonl"
TERMS = ["锻造炉", "forgeweld"]
SUCCEEDED = trainer_pb2.JOB_STATE_SUCCEEDED


@pytest.fixture(scope="module")
def corpus_id(trainer_client) -> str:
    return trainer_client.upload_dataset(CORPUS).id


@pytest.fixture(scope="module")
def heldout_id(trainer_client) -> str:
    return trainer_client.upload_dataset(HELDOUT).id


@pytest.fixture(scope="module")
def demo_id(trainer_client) -> str:
    return trainer_client.upload_dataset(EXAMPLES / "sft_demo.jsonl").id


def pretrain_request(dataset_id: str, *, max_steps: int = 50, **pretrain) -> dict:
    """A tiny from-scratch job: hidden 64, 2 layers, context 128, a 600-token BPE trained on the corpus."""
    return {
        "dataset_id": dataset_id,
        "pretrain": {"hidden_size": 64, "num_layers": 2, "num_attention_heads": 4, "num_key_value_heads": 2,
                     "context_length": 128, "vocab_size": 600, **pretrain},
        "hyperparameters": {"max_steps": max_steps, "batch_size": 4, "learning_rate": 5e-3,
                            "lr_scheduler": "constant", "logging_steps": 1},
    }


def continued_request(base_model_id: str, dataset_id: str, *, adapter: str = "ADAPTER_FULL", max_steps: int = 4,
                      new_tokens: list[str] | None = None, **extra) -> dict:
    return {
        "base_model_id": base_model_id,
        "dataset_id": dataset_id,
        "continued_pretrain": {"vocabulary": {"new_tokens": new_tokens or []}},
        "adapter": {"type": adapter, "rank": 8},
        "hyperparameters": {"max_steps": max_steps, "batch_size": 4, "max_seq_length": 64, "learning_rate": 3e-3,
                            "lr_scheduler": "constant", "logging_steps": 1},
        **extra,
    }


def run_job(client, request: dict) -> trainer_pb2.Job:
    job = client.start_training(request)
    final = client.wait(job.id)
    assert final.state == SUCCEEDED, f"{trainer_pb2.JobState.Name(final.state)}: {final.error}"
    return final


def events(client, job_id: str, payload: str) -> list:
    return [getattr(e, payload) for e in client.stream_metrics(job_id, after_sequence=0, follow=False)
            if e.WhichOneof("payload") == payload]


def load(model_dir):
    from transformers import AutoModelForCausalLM, AutoTokenizer

    return AutoModelForCausalLM.from_pretrained(model_dir), AutoTokenizer.from_pretrained(model_dir)


def generates(model, tokenizer, text: str = "The smith") -> str:
    ids = tokenizer(text, return_tensors="pt", add_special_tokens=False)
    with torch.inference_mode():
        out = model.generate(**ids, max_new_tokens=8, min_new_tokens=8, do_sample=False)
    assert out.shape[1] == ids["input_ids"].shape[1] + 8
    return tokenizer.decode(out[0])


def heldout_perplexity(model, tokenizer) -> float:
    """Per-token perplexity of the held-out rows (each row followed by EOS), as the trainer computes it."""
    import json

    rows = [json.loads(line)["text"] for line in HELDOUT.read_text(encoding="utf-8").splitlines() if line.strip()]
    total, count = 0.0, 0
    model.eval()
    with torch.inference_mode():
        for text in rows:
            ids = tokenizer(text + tokenizer.eos_token, return_tensors="pt", add_special_tokens=False)["input_ids"]
            loss = model(input_ids=ids, labels=ids).loss
            total += loss.item() * (ids.shape[1] - 1)
            count += ids.shape[1] - 1
    return math.exp(total / count)


def single_token(tokenizer, term: str) -> bool:
    return len(tokenizer(term, add_special_tokens=False)["input_ids"]) == 1


def test_pretraining_from_scratch_learns_and_is_served(trainer_client, trainer_server, corpus_id):
    job = run_job(trainer_client, pretrain_request(corpus_id, max_steps=50))

    losses = [m.values["loss"] for m in events(trainer_client, job.id, "metrics") if "loss" in m.values]
    assert len(losses) == 50
    first, last = sum(losses[:5]) / 5, sum(losses[-5:]) / 5
    assert first > 5.5, f"a new model starts near ln(vocab) = {math.log(600):.2f}, not {first:.2f}"
    # About 6.2 -> 4.8 here: the perplexity falls more than e-fold in 50 steps (~2.5 epochs of the corpus).
    assert last < first - 1.0, f"loss did not fall enough: first {first:.3f}, last {last:.3f}"
    logs = [e.message for e in events(trainer_client, job.id, "log")]
    assert any("parameters" in m and "new llama model" in m for m in logs), logs

    [checkpoint] = trainer_client.list_checkpoints(job_id=job.id)
    assert checkpoint.id == job.result_checkpoint_id and checkpoint.is_final
    assert checkpoint.kind == common_pb2.FULL_CHECKPOINT and checkpoint.has_tokenizer
    assert checkpoint.base_model_id == "" and checkpoint.method == "pretrain"

    path = trainer_server.store_root / "models" / checkpoint.id
    model, tokenizer = load(path)
    config = model.config
    assert (config.model_type, config.hidden_size, config.num_hidden_layers, config.num_attention_heads,
            config.num_key_value_heads, config.max_position_embeddings) == ("llama", 64, 2, 4, 2, 128)
    assert 500 <= len(tokenizer) <= 600 and config.vocab_size == len(tokenizer)
    assert model.generation_config.eos_token_id == tokenizer.eos_token_id == tokenizer.convert_tokens_to_ids(
        "<|im_end|>")
    assert model.generation_config.pad_token_id == tokenizer.pad_token_id
    assert tokenizer.chat_template, "the trained tokenizer has the ChatML template"
    assert single_token(tokenizer, " the"), "the BPE learnt merges from the corpus"
    generates(model, tokenizer)

    # The inference service's backend loads it and answers a chat request.
    from services.engine.backends.base import GenerationRequest, LoadOptions
    from services.engine.backends.transformers_backend import TransformersBackend
    from services.engine.sampling import SamplingConfig

    backend = TransformersBackend(path, LoadOptions(max_batch_size=1))
    try:
        rendered = backend.tokenizer.apply_chat_template([{"role": "user", "content": "什么是锻焊？"}],
                                                         add_generation_prompt=True, tokenize=False)
        prompt = backend.tokenizer.encode(rendered, add_special_tokens=False)
        request = GenerationRequest("r", prompt, SamplingConfig(temperature=0.0, max_new_tokens=6))
        steps = list(backend.generate(request))
        assert steps[-1].finish is not None and sum(len(s.token_ids) for s in steps) >= 1
    finally:
        backend.close()


def test_pretraining_with_a_borrowed_tokenizer(trainer_client, trainer_server, corpus_id, tiny_model_id):
    job = run_job(trainer_client, pretrain_request(corpus_id, max_steps=3, tokenizer_from=tiny_model_id,
                                                   architecture="qwen2"))
    model, tokenizer = load(trainer_server.store_root / "models" / job.result_checkpoint_id)
    _, source = load(trainer_server.store_root / "models" / tiny_model_id)
    assert tokenizer.get_vocab() == source.get_vocab()
    assert model.config.model_type == "qwen2" and model.config.vocab_size == len(source)
    generates(model, tokenizer)


def test_continued_pretraining_lowers_heldout_perplexity(trainer_client, trainer_server, tiny_model_id, corpus_id,
                                                         heldout_id):
    request = continued_request(tiny_model_id, corpus_id, max_steps=24,
                                eval={"eval_dataset_id": heldout_id, "every_steps": 8})
    job = run_job(trainer_client, request)

    base, tokenizer = load(trainer_server.store_root / "models" / tiny_model_id)
    trained, _ = load(trainer_server.store_root / "models" / job.result_checkpoint_id)
    before, after = heldout_perplexity(base, tokenizer), heldout_perplexity(trained, tokenizer)
    assert after < 0.5 * before, f"held-out perplexity {before:.1f} -> {after:.1f}"

    # The trainer's own evaluations on the held-out file tell the same story.
    evals = [m.values["eval_perplexity"] for m in events(trainer_client, job.id, "metrics")
             if "eval_perplexity" in m.values]
    assert len(evals) >= 3 and evals[-1] < evals[0] < before
    checkpoints = {c.id: c for c in trainer_client.list_checkpoints(job_id=job.id)}
    final = checkpoints[job.result_checkpoint_id]
    assert final.kind == common_pb2.FULL_CHECKPOINT and final.base_model_id == tiny_model_id and final.is_best


@pytest.mark.parametrize("adapter", ["ADAPTER_LORA", "ADAPTER_QLORA"])
def test_continued_pretraining_with_lora_saves_an_adapter(trainer_client, trainer_server, tiny_model_id, corpus_id,
                                                          adapter):
    job = run_job(trainer_client, continued_request(tiny_model_id, corpus_id, adapter=adapter, max_steps=2))
    [checkpoint] = trainer_client.list_checkpoints(job_id=job.id)
    assert checkpoint.kind == common_pb2.ADAPTER and checkpoint.base_model_id == tiny_model_id
    assert checkpoint.method == "continued_pretrain"
    weights = load_file(trainer_server.store_root / "adapters" / checkpoint.id / "adapter_model.safetensors")
    assert any("lora_B" in name and t.abs().sum() > 0 for name, t in weights.items()), "LoRA B moved off zero"


def test_vocabulary_expansion_in_continued_pretraining(trainer_client, trainer_server, tiny_model_id, corpus_id):
    _, base_tokenizer = load(trainer_server.store_root / "models" / tiny_model_id)
    assert not any(single_token(base_tokenizer, t) for t in TERMS)

    job = run_job(trainer_client, continued_request(tiny_model_id, corpus_id, new_tokens=TERMS, max_steps=3))
    model, tokenizer = load(trainer_server.store_root / "models" / job.result_checkpoint_id)
    assert all(single_token(tokenizer, t) for t in TERMS)
    assert len(tokenizer) == len(base_tokenizer) + 2
    assert model.get_input_embeddings().weight.shape[0] == len(tokenizer)
    logs = [e.message for e in events(trainer_client, job.id, "log")]
    assert any("added 2 token(s)" in m for m in logs), logs
    generates(model, tokenizer, "锻造炉")


def test_vocabulary_expansion_in_lora_sft_is_saved_merged(trainer_client, trainer_server, tiny_model_id, demo_id):
    request = sft_request(tiny_model_id, demo_id, max_steps=3)
    request["sft"] = {"vocabulary": {"new_tokens": [*TERMS, "a"]}}  # "a" is one token already: skipped
    job = run_job(trainer_client, request)

    [checkpoint] = trainer_client.list_checkpoints(job_id=job.id)
    assert checkpoint.kind == common_pb2.FULL_CHECKPOINT and checkpoint.has_tokenizer, \
        "a LoRA run that grew the vocabulary is saved merged, with its tokenizer"
    assert checkpoint.base_model_id == tiny_model_id
    path = trainer_server.store_root / "models" / checkpoint.id
    model, tokenizer = load(path)
    _, base_tokenizer = load(trainer_server.store_root / "models" / tiny_model_id)
    assert all(single_token(tokenizer, t) for t in TERMS) and len(tokenizer) == len(base_tokenizer) + 2

    # LoRA leaves the old embedding rows alone but trains the new ones away from their initial mean.
    base_rows = load_file(trainer_server.store_root / "models" / tiny_model_id / "model.safetensors")[
        "model.embed_tokens.weight"]
    rows = load_file(path / "model.safetensors")["model.embed_tokens.weight"]
    old = base_rows.shape[0]
    assert rows.shape[0] == old + 2 and torch.equal(rows[:old], base_rows)
    for term in TERMS:
        sub_ids = base_tokenizer(term, add_special_tokens=False)["input_ids"]
        new_id = tokenizer.convert_tokens_to_ids(term)
        assert not torch.allclose(rows[new_id], base_rows[sub_ids].mean(dim=0)), f"{term} row did not train"

    chat = tokenizer.apply_chat_template([{"role": "user", "content": "什么是锻造炉？"}],
                                         add_generation_prompt=True, tokenize=False)
    generates(model, tokenizer, chat)


def _bad_request_fields(error: grpc.RpcError) -> set[str]:
    fields = set()
    for detail in rpc_status.from_call(error).details:
        if detail.Is(error_details_pb2.BadRequest.DESCRIPTOR):
            bad_request = error_details_pb2.BadRequest()
            detail.Unpack(bad_request)
            fields |= {v.field for v in bad_request.field_violations}
    return fields


@pytest.mark.parametrize(("change", "field"), [
    ({"pretrain": {"hidden_size": 64, "num_attention_heads": 5}}, "pretrain.num_attention_heads"),
    ({"adapter": {"type": "ADAPTER_LORA"}}, "adapter.type"),
    ({"base_model_id": "tiny-llama"}, "base_model_id"),
], ids=["heads-do-not-divide-hidden", "lora", "base-model"])
def test_bad_pretrain_requests_are_refused_up_front(trainer_client, corpus_id, change, field):
    request = {**pretrain_request(corpus_id), **change}
    with pytest.raises(grpc.RpcError) as info:
        trainer_client.start_training(request)
    assert info.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert field in _bad_request_fields(info.value), info.value.details()


def test_other_bad_requests(trainer_client, corpus_id, tiny_model_id):
    with pytest.raises(grpc.RpcError) as info:
        trainer_client.start_training(pretrain_request(corpus_id, tokenizer_from="no-such-model"))
    assert info.value.code() == grpc.StatusCode.NOT_FOUND and "pretrain.tokenizer_from" in info.value.details()

    qlora = continued_request(tiny_model_id, corpus_id, adapter="ADAPTER_QLORA", new_tokens=TERMS)
    with pytest.raises(grpc.RpcError) as info:
        trainer_client.start_training(qlora)
    assert info.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert "adapter.type" in _bad_request_fields(info.value)
