"""Offline generation: many prompts through one backend, concurrently, so the backend batches them.

    from services.engine.backends import load_backend
    from services.engine.backends.transformers_backend import TransformersBackend

    with load_backend("transformers", store.path_of("teacher")) as backend:           # a model from disk
        answers = generate_all(backend, chats, SamplingConfig(temperature=0, max_new_tokens=64))
    with TransformersBackend.from_model(policy, tokenizer) as backend:               # a model in memory
        groups = generate_all(backend, chats, SamplingConfig(temperature=1.0), n=8, seed=seed)
    groups[i][j].text, groups[i][j].token_count, groups[i][j].finish_reason, groups[i][j].token_ids

Each completion runs the engine's own Choice (services/engine/generation.py), so it is exactly what the
inference service would stream for the same request: same chat template, end-of-turn tokens, detokenizer
and stop sequences. Request k (prompt k // n, choice k % n) is seeded with `seed + k`, so a sampled run is
reproducible whatever the batching. Raises InvalidArgument (a prompt that fills the context: its violation's
row is the prompt's 1-based position; a bad chat) before anything is generated; afterwards the backend's
errors propagate.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field, replace

from services.engine.backends.base import Backend
from services.engine.generation import Choice, Finished, check_room, render_prompt
from services.engine.sampling import SamplingConfig

DEFAULT_CONCURRENCY = 8

# A prompt: chat messages (rendered with the model's chat template), raw text, or token ids as they are.
Prompt = list[dict] | str | list[int]


@dataclass
class Completion:
    text: str  # what the model said, without the end-of-turn token or any stop sequence
    token_count: int  # generated tokens (an end-of-turn token is not counted)
    finish_reason: str  # eos | length | stop | cancelled
    # The generated token ids, end-of-turn token excluded (with stop sequences: those streamed before the stop);
    # not compared: text and counts identify a completion.
    token_ids: list[int] = field(default_factory=list, compare=False)


def prompt_ids(tokenizer, prompt: Prompt) -> list[int]:
    """Token ids of a prompt: a chat through the chat template (generation prompt added), text as the
    tokenizer encodes it, token ids unchanged."""
    if isinstance(prompt, str):
        return render_prompt(tokenizer, None, prompt)[0]
    if prompt and all(isinstance(t, int) for t in prompt):
        return list(prompt)
    return render_prompt(tokenizer, list(prompt), None)[0]


def generate_all(backend: Backend, prompts: list[Prompt], sampling: SamplingConfig, *, n: int | None = None,
                 seed: int | None = None, should_stop: Callable[[], bool] = lambda: False,
                 concurrency: int | None = None, adapter_id: str | None = None,
                 on_complete: Callable[[int, Completion], None] | None = None) -> list[list[Completion]]:
    """`n` completions (default `sampling.n`) of every prompt, in prompt order: result[i][j] is choice j
    of prompt i.

    `concurrency` requests are in flight at once (default: the backend's max_batch_size), so the backend
    decodes them in one continuous batch. `seed` (default `sampling.seed`; None = unseeded) seeds request k
    with seed + k. When `should_stop()` turns true, requests in flight end within one decoding step and
    the rest are not started; all of them come back with finish_reason "cancelled". `on_complete(i,
    completion)` is called (one call at a time) as each request of prompt i ends, e.g. to log progress."""
    n = sampling.n if n is None else n
    base_seed = sampling.seed if seed is None else seed
    ids = [prompt_ids(backend.tokenizer, p) for p in prompts]
    rooms = [check_room(backend, p, row=i + 1) for i, p in enumerate(ids)]
    if concurrency is None:
        concurrency = getattr(getattr(backend, "options", None), "max_batch_size", DEFAULT_CONCURRENCY)
    lock = threading.Lock()

    def one(k: int) -> Completion:
        i, j = divmod(k, n)
        if should_stop():
            completion = Completion("", 0, "cancelled")
        else:
            request = replace(sampling, n=1, stop=list(sampling.stop),
                              seed=None if base_seed is None else base_seed + k)
            choice = Choice(j, backend, ids[i], request, adapter_id, time.monotonic(), lambda: not should_stop(),
                            None, rooms[i])
            items = list(choice.run())
            finished = [item for item in items if isinstance(item, Finished)][-1]
            tokens = [t for item in items if not isinstance(item, Finished) for t in item.token_ids]
            completion = Completion(finished.text, finished.completion_tokens, finished.reason, tokens)
        if on_complete is not None:
            with lock:
                on_complete(i, completion)
        return completion

    total = len(ids) * n
    if total == 0:
        return []
    with ThreadPoolExecutor(max_workers=max(1, min(concurrency, total)), thread_name_prefix="generate-all") as pool:
        flat = list(pool.map(one, range(total)))
    return [flat[i * n:(i + 1) * n] for i in range(len(ids))]
