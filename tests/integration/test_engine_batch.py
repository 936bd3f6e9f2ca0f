"""The engine's offline generation on CPU with a tiny random model: `generate_all` over a backend loaded from
disk and over a model already in memory (`TransformersBackend.from_model`, peft-wrapped, in train mode).

    .venv/bin/python -m pytest tests/integration/test_engine_batch.py -q -p no:cacheprovider
"""

from __future__ import annotations

from pathlib import Path

import pytest

torch = pytest.importorskip("torch")

from services.common.errors import FailedPrecondition, InvalidArgument  # noqa: E402
from services.common.model_import import create_tiny_model  # noqa: E402
from services.common.store import CheckpointStore  # noqa: E402
from services.engine.backends import load_backend  # noqa: E402
from services.engine.backends.base import LoadOptions  # noqa: E402
from services.engine.backends.transformers_backend import TransformersBackend  # noqa: E402
from services.engine.batch import Completion, generate_all, prompt_ids  # noqa: E402
from services.engine.generation import Finished, stream  # noqa: E402
from services.engine.sampling import SamplingConfig  # noqa: E402

CORPUS = [Path(__file__).resolve().parents[2] / "examples" / "data" / "sft_demo.jsonl"]
CHATS = [[{"role": "user", "content": q}] for q in
         ("Hello, how are you?", "Write a short poem about the sea.", "What is 2 + 2?", "把这句话翻译成英文：你好，世界。")]


@pytest.fixture(scope="module")
def store(tmp_path_factory):
    store = CheckpointStore(tmp_path_factory.mktemp("store"))
    create_tiny_model(store, "tiny", corpus_files=CORPUS)
    return store


@pytest.fixture(scope="module")
def backend(store):
    with load_backend("transformers", store.path_of("tiny"), LoadOptions(max_batch_size=8)) as backend:
        yield backend


def test_requests_are_seeded_in_order_whatever_the_concurrency(backend):
    sampling = SamplingConfig(temperature=1.0, max_new_tokens=10)
    one_at_a_time = generate_all(backend, CHATS, sampling, n=3, seed=11, concurrency=1)
    batched = generate_all(backend, CHATS, sampling, n=3, seed=11)
    assert batched == one_at_a_time
    assert [len(group) for group in batched] == [3] * len(CHATS)
    assert all(isinstance(c, Completion) and c.finish_reason in ("eos", "length") for g in batched for c in g)
    assert generate_all(backend, CHATS, sampling, n=3, seed=12) != batched

    # Request k (prompt k // n, choice k % n) is what the inference service streams for seed + k.
    ids = prompt_ids(backend.tokenizer, CHATS[2])
    for choice in range(3):
        alone = SamplingConfig(temperature=1.0, max_new_tokens=10, seed=11 + 2 * 3 + choice)
        items = list(stream(backend, ids, alone))
        [finished] = [item for item in items if isinstance(item, Finished)]
        assert batched[2][choice] == Completion(finished.text, finished.completion_tokens, finished.reason)
        streamed = [t for item in items if not isinstance(item, Finished) for t in item.token_ids]
        assert batched[2][choice].token_ids == streamed and len(streamed) == finished.completion_tokens


def test_chats_text_and_token_ids_are_the_same_prompt(backend):
    greedy = SamplingConfig(temperature=0.0, max_new_tokens=8)
    rendered = [backend.tokenizer.apply_chat_template(c, add_generation_prompt=True, tokenize=False) for c in CHATS]
    ids = [backend.tokenizer(text, add_special_tokens=False)["input_ids"] for text in rendered]
    from_chats = generate_all(backend, CHATS, greedy)
    assert generate_all(backend, ids, greedy) == from_chats
    assert [prompt_ids(backend.tokenizer, c) for c in CHATS] == ids


def test_stop_sequences_cancellation_and_bad_prompts(backend):
    free = generate_all(backend, CHATS, SamplingConfig(temperature=1.0, max_new_tokens=12), seed=5)
    stop = free[1][0].text[3:5]
    assert len(stop) == 2
    stopped = generate_all(backend, CHATS, SamplingConfig(temperature=1.0, max_new_tokens=12, stop=[stop]), seed=5)
    for [before], [after] in zip(free, stopped):
        assert after.text == before.text.split(stop)[0]  # the text before the first match, never the stop
        assert (after.finish_reason == "stop") == (stop in before.text)
    assert stopped[1][0].finish_reason == "stop"

    cancelled = generate_all(backend, CHATS, SamplingConfig(max_new_tokens=50), n=2, should_stop=lambda: True)
    assert {c.finish_reason for g in cancelled for c in g} == {"cancelled"}

    too_long = [1] * backend.context_length
    with pytest.raises(InvalidArgument, match="context") as raised:
        generate_all(backend, [CHATS[0], too_long], SamplingConfig())
    assert raised.value.violations[0].row == 2  # 1-based: the second prompt
    with pytest.raises(InvalidArgument):
        generate_all(backend, [[]], SamplingConfig())


def test_from_model_serves_a_peft_model_in_training_and_gives_it_back(store):
    from peft import LoraConfig, get_peft_model
    from transformers import AutoModelForCausalLM, AutoTokenizer

    torch.manual_seed(0)
    model = get_peft_model(AutoModelForCausalLM.from_pretrained(store.path_of("tiny")),
                           LoraConfig(r=4, target_modules=["q_proj", "v_proj"], init_lora_weights=False))
    tokenizer = AutoTokenizer.from_pretrained(store.path_of("tiny"))
    pad_before = tokenizer.pad_token
    model.train()
    modes = []
    hook = model.get_base_model().register_forward_pre_hook(lambda module, args: modes.append(module.training))
    greedy = SamplingConfig(temperature=0.0, max_new_tokens=8)
    try:
        with TransformersBackend.from_model(model, tokenizer, LoadOptions(max_batch_size=4)) as backend:
            answers = generate_all(backend, CHATS, greedy)
            with pytest.raises(FailedPrecondition):
                backend.load_adapter("other", store.path_of("tiny"))
    finally:
        hook.remove()
    assert modes and not any(modes), "forward passes ran in eval mode"
    assert model.training and tokenizer.pad_token == pad_before  # handed back as it was

    # The same greedy answers as transformers' own generate on the peft model.
    model.eval()
    for chat, [answer] in zip(CHATS, answers):
        ids = prompt_ids(tokenizer, chat)
        with torch.no_grad():
            output = model.generate(input_ids=torch.tensor([ids]), attention_mask=torch.ones(1, len(ids),
                                    dtype=torch.long), do_sample=False, max_new_tokens=8,
                                    pad_token_id=tokenizer.eos_token_id)
        new = output[0, len(ids):].tolist()
        end = next((i for i, t in enumerate(new) if t == tokenizer.eos_token_id), len(new))
        assert answer.token_count == end
        assert answer.text == tokenizer.decode(new[:end], skip_special_tokens=True, clean_up_tokenization_spaces=False)
