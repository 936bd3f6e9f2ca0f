"""Vocabulary expansion (services/trainer/training/vocabulary.py) on tiny in-process models: new rows start
as the exact mean of the old sub-token rows, tied and untied heads, spare rows, and LoRA training the new
rows and merging them into full weights. An integration test: it builds, trains and merges torch models.

    .venv/bin/python -m pytest tests/integration/test_vocabulary.py -q -p no:cacheprovider
"""

from __future__ import annotations

from pathlib import Path

import pytest

torch = pytest.importorskip("torch")

from services.common.model_import import causal_lm_config, create_tiny_model, train_tiny_tokenizer  # noqa: E402
from services.common.store import CheckpointStore  # noqa: E402
from services.trainer.training.vocabulary import expand_vocabulary, train_new_tokens_with_lora  # noqa: E402

CORPUS = [Path(__file__).resolve().parents[2] / "examples" / "data" / "sft_demo.jsonl"]
TERMS = ["锻造炉", "forgeweld"]


@pytest.fixture(scope="module")
def tiny_dir(tmp_path_factory) -> Path:
    store = CheckpointStore(tmp_path_factory.mktemp("store"))
    create_tiny_model(store, "tiny", corpus_files=CORPUS)
    return store.path_of("tiny")


def load(model_dir: Path):
    from transformers import AutoModelForCausalLM, AutoTokenizer

    return AutoModelForCausalLM.from_pretrained(model_dir), AutoTokenizer.from_pretrained(model_dir)


def untied_model(extra_rows: int = 0):
    from transformers import AutoModelForCausalLM

    tokenizer = train_tiny_tokenizer(["a forge, an anvil and a hammer", "铁匠在铁砧上锤打钢条"],
                                     vocab_size=300)
    config = causal_lm_config("llama", tokenizer, hidden_size=32, num_layers=1, num_attention_heads=4,
                              num_key_value_heads=2, intermediate_size=64, context_length=64,
                              tie_word_embeddings=False)
    config.vocab_size += extra_rows
    torch.manual_seed(0)
    return AutoModelForCausalLM.from_config(config), tokenizer


def sub_token_ids(tokenizer, terms):
    return {term: tokenizer(term, add_special_tokens=False)["input_ids"] for term in terms}


def test_new_rows_start_at_the_mean_of_their_sub_tokens(tiny_dir):
    model, tokenizer = load(tiny_dir)
    old_size = len(tokenizer)
    before = sub_token_ids(tokenizer, TERMS)
    assert all(len(ids) > 1 for ids in before.values()), before
    old_rows = model.get_input_embeddings().weight.detach().clone()

    assert expand_vocabulary(model, tokenizer, TERMS) == TERMS

    assert len(tokenizer) == old_size + 2
    rows = model.get_input_embeddings().weight
    assert rows.shape[0] == len(tokenizer) and model.config.vocab_size == len(tokenizer)
    assert torch.equal(rows[:old_size], old_rows), "existing rows must not move"
    for term, ids in before.items():
        [new_id] = tokenizer(term, add_special_tokens=False)["input_ids"]
        assert new_id >= old_size
        assert torch.allclose(rows[new_id], old_rows[ids].mean(dim=0), atol=0, rtol=0)
    assert model.get_output_embeddings().weight is rows, "a tied head stays tied"
    # Normal tokens, not special: they survive decode(skip_special_tokens=True) in running text.
    ids = tokenizer("the 锻造炉 is hot", add_special_tokens=False)["input_ids"]
    assert tokenizer.decode(ids, skip_special_tokens=True) == "the 锻造炉 is hot"


def test_terms_that_are_already_one_token_are_skipped(tiny_dir):
    model, tokenizer = load(tiny_dir)
    assert len(tokenizer("a", add_special_tokens=False)["input_ids"]) == 1
    lines: list[str] = []
    assert expand_vocabulary(model, tokenizer, ["a", "forgeweld"], log_line=lines.append) == ["forgeweld"]
    assert any("already single tokens" in line and "a" in line for line in lines), lines
    assert expand_vocabulary(model, tokenizer, ["forgeweld"]) == [], "a second expansion adds nothing"


def test_untied_output_rows_get_their_own_mean():
    model, tokenizer = untied_model()
    before = sub_token_ids(tokenizer, TERMS)
    old_in = model.get_input_embeddings().weight.detach().clone()
    old_out = model.get_output_embeddings().weight.detach().clone()
    assert not torch.equal(old_in, old_out)

    assert expand_vocabulary(model, tokenizer, TERMS) == TERMS

    new_in, new_out = model.get_input_embeddings().weight, model.get_output_embeddings().weight
    for term, ids in before.items():
        new_id = tokenizer.convert_tokens_to_ids(term)
        assert torch.equal(new_in[new_id], old_in[ids].mean(dim=0))
        assert torch.equal(new_out[new_id], old_out[ids].mean(dim=0))


def test_spare_embedding_rows_are_used_not_cut_off():
    model, tokenizer = untied_model(extra_rows=16)
    rows = model.get_input_embeddings().weight.shape[0]
    assert rows == len(tokenizer) + 16
    expand_vocabulary(model, tokenizer, TERMS)
    assert model.get_input_embeddings().weight.shape[0] == rows, "the matrix must not shrink to the tokenizer"
    assert len(tokenizer(TERMS[0], add_special_tokens=False)["input_ids"]) == 1


@pytest.mark.parametrize("tied", [True, False], ids=["tied", "untied"])
def test_lora_trains_the_new_rows_and_merges_them(tiny_dir, tied):
    from peft import LoraConfig, get_peft_model

    model, tokenizer = load(tiny_dir) if tied else untied_model()
    added = expand_vocabulary(model, tokenizer, TERMS)
    new_ids = [tokenizer.convert_tokens_to_ids(t) for t in added]
    initial = model.get_input_embeddings().weight.detach().clone()
    initial_out = model.get_output_embeddings().weight.detach().clone()

    config = LoraConfig(r=4, lora_alpha=8, target_modules="all-linear", task_type="CAUSAL_LM")
    train_new_tokens_with_lora(config, model, tokenizer, added)
    peft_model = get_peft_model(model, config)
    optimizer = torch.optim.AdamW([p for p in peft_model.parameters() if p.requires_grad], lr=1e-2)
    batch = tokenizer(["the 锻造炉 is ready for a forgeweld", "forgeweld in the 锻造炉"], return_tensors="pt",
                      padding=True)
    for _ in range(3):
        loss = peft_model(**batch, labels=batch["input_ids"]).loss
        loss.backward()
        optimizer.step()
        optimizer.zero_grad()

    merged = peft_model.merge_and_unload()
    rows = merged.get_input_embeddings().weight
    old = [i for i in range(initial.shape[0]) if i not in new_ids]
    assert torch.equal(rows[old], initial[old]), "LoRA must leave the old embedding rows alone"
    for new_id in new_ids:
        assert not torch.equal(rows[new_id], initial[new_id]), "the new rows must have trained"
    out = merged.get_output_embeddings().weight
    if tied:
        assert out is rows
    else:
        assert torch.equal(out[old], initial_out[old])
        assert all(not torch.equal(out[i], initial_out[i]) for i in new_ids), "untied head rows must train too"


def test_trl_fused_head_trains_the_tied_new_rows(tiny_dir):
    """TRL's fused LM head reads lm_head.bias, which peft's TrainableTokensWrapper lacks: the callback exposes
    it, and the new rows then get gradients through both the input and the (tied) output side."""
    from peft import LoraConfig, get_peft_model
    from trl.trainer.utils import add_fused_lm_head

    from services.trainer.training.vocabulary import TrainableTokensHeadFix

    model, tokenizer = load(tiny_dir)
    added = expand_vocabulary(model, tokenizer, TERMS)
    config = LoraConfig(r=4, lora_alpha=8, target_modules="all-linear", task_type="CAUSAL_LM")
    train_new_tokens_with_lora(config, model, tokenizer, added)
    add_fused_lm_head(model)  # as SFTTrainer does, before peft wraps the model
    peft_model = get_peft_model(model, config)
    TrainableTokensHeadFix().on_train_begin(None, None, None, model=peft_model)

    # Labels without the new tokens: their rows learn only through the output side (the softmax).
    batch = tokenizer(["the anvil rings"], return_tensors="pt")
    outputs = peft_model(**batch, labels=batch["input_ids"], fused_lm_head=True)
    (-outputs.log_probs.sum()).backward()
    [delta] = [p for name, p in peft_model.named_parameters() if "trainable_tokens_delta" in name]
    assert delta.grad is not None and bool((delta.grad.abs().sum(dim=1) > 0).all())
