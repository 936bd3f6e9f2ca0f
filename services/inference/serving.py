"""A Generate call, from a model id to streamed text: the registry finds (or loads) the model and its
adapter and admits the request; the engine (services/engine/generation.py) renders the prompt and streams
the choices. Everything about text (exact UTF-8 deltas, stop sequences, finish reasons) is the engine's."""

from __future__ import annotations

import json
import time
from collections.abc import Callable, Iterator

from services.engine.generation import Delta, Finished, check_room, render_prompt, stream
from services.engine.sampling import SamplingConfig
from services.inference.metrics import InferenceMetrics
from services.inference.registry import ModelRegistry

__all__ = ["Delta", "Finished", "generate", "model_context_length", "render_prompt"]


def model_context_length(registry: ModelRegistry, model_id: str) -> int:
    config = json.loads((registry.store.path_of(model_id) / "config.json").read_text())
    return int(config.get("max_position_embeddings") or config.get("n_positions") or 2048)


def generate(registry: ModelRegistry, model_id: str, *, messages: list[dict] | None, text: str | None,
             adapter_id: str, sampling: SamplingConfig, is_active: Callable[[], bool] = lambda: True,
             deadline: float | None = None, metrics: InferenceMetrics | None = None) -> Iterator[Delta | Finished]:
    """Stream one request's choices. Raises NOT_FOUND / FAILED_PRECONDITION / INVALID_ARGUMENT /
    RESOURCE_EXHAUSTED before the first item; afterwards every choice ends with a Finished."""
    arrived = time.monotonic()
    loaded = registry.get(model_id)
    if adapter_id:
        registry.ensure_adapter(model_id, adapter_id)
    backend = loaded.backend
    prompt_ids, _ = render_prompt(backend.tokenizer, messages, text)
    check_room(backend, prompt_ids, model_id)
    with registry.admit(loaded, sampling.n):
        items = stream(backend, prompt_ids, sampling, adapter_id=adapter_id or None, is_active=is_active,
                       deadline=deadline, arrived=arrived, name=model_id)
        yield from metrics.observe(model_id, arrived, items) if metrics is not None else items
