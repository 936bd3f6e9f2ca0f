"""The backend interface: everything the engine needs from a model runtime, at the token level.

The generation layer (services/engine/generation.py, batch.py) and the inference service know only this
interface; the transformers+bitsandbytes and vLLM backends implement it. Text is not a backend's concern:
the generation layer detokenizes incrementally (exact UTF-8), matches stop sequences and times requests,
the same way for every backend.
"""

from __future__ import annotations

import abc
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path

from services.engine.sampling import SamplingConfig


@dataclass
class QuantizationConfig:
    type: str = "none"  # none | int8 | nf4 | fp4
    double_quant: bool = False
    compute_dtype: str = ""  # "" = the model dtype


@dataclass
class LoadOptions:
    quantization: QuantizationConfig = field(default_factory=QuantizationConfig)
    dtype: str = "auto"  # auto | float32 | bfloat16 | float16
    max_batch_size: int = 8  # sequences decoded together
    max_loras: int = 4  # adapters live at once (vLLM sizes its LoRA slots with it)
    max_lora_rank: int = 64


@dataclass
class GenerationRequest:
    request_id: str
    prompt_ids: list[int]
    sampling: SamplingConfig  # one choice (n == 1); seed already derived per choice
    adapter_id: str | None = None
    # Checked before every decoding step: True = stop now (client cancelled, deadline, stop sequence).
    should_stop: Callable[[], bool] = lambda: False


@dataclass
class TokenStep:
    """What one decoding step produced for one request."""

    token_ids: list[int]
    # Set on the request's last step: "eos", "length" (max_new_tokens or context full) or "stopped"
    # (should_stop returned True). An eos token is not included in token_ids.
    finish: str | None = None


class Backend(abc.ABC):
    name: str  # "transformers" | "vllm"
    tokenizer: object  # a transformers PreTrainedTokenizerBase
    context_length: int
    device: str
    dtype: str

    @abc.abstractmethod
    def generate(self, request: GenerationRequest) -> Iterator[TokenStep]:
        """Decode one request; blocks between steps. Safe to call from many threads at once: concurrent
        requests are batched. Ends within one decoding step of `should_stop` turning True."""

    @abc.abstractmethod
    def load_adapter(self, adapter_id: str, path: Path) -> None:
        """Make a LoRA adapter (peft format) selectable by `GenerationRequest.adapter_id`."""

    @abc.abstractmethod
    def unload_adapter(self, adapter_id: str) -> None: ...

    @abc.abstractmethod
    def adapter_ids(self) -> list[str]: ...

    @abc.abstractmethod
    def memory_bytes(self) -> int:
        """Bytes the weights take (GPU memory on CUDA, RAM on CPU)."""

    @abc.abstractmethod
    def close(self) -> None:
        """Stop background threads/processes and free memory. Requests in flight end as "stopped"."""

    def __enter__(self) -> Backend:
        return self

    def __exit__(self, *exc_info) -> None:
        self.close()
