"""From a prompt to streamed text: prompt rendering, context checks, n choices, deltas, stop sequences,
finish reasons and timings, identical for every backend (they only produce token ids).

    ids, _ = render_prompt(backend.tokenizer, [{"role": "user", "content": "Hi"}], None)
    for item in stream(backend, ids, SamplingConfig(temperature=0, max_new_tokens=16)):
        ...  # Delta(index, text, token_ids) ..., then Finished(index, reason, ..., text)

Model-independent: the inference service resolves a model id to a backend (its registry) and then
streams through here; offline generation goes through batch.py, which runs the same Choice.
"""

from __future__ import annotations

import queue
import threading
import time
import uuid
from collections.abc import Callable, Iterator
from dataclasses import dataclass

from services.common.errors import InvalidArgument, Violation
from services.engine.backends.base import Backend, GenerationRequest
from services.engine.sampling import SamplingConfig
from services.engine.textstream import IncrementalDetokenizer, StopMatcher

ROLES = ("system", "user", "assistant")


@dataclass
class Delta:
    index: int
    text: str
    token_ids: list[int]


@dataclass
class Finished:
    index: int
    reason: str  # length | eos | stop | cancelled | deadline
    prompt_tokens: int
    completion_tokens: int
    time_to_first_token_ms: float
    tokens_per_second: float
    text: str


def check_messages(messages: list[dict], field: str = "chat.messages") -> None:
    violations = []
    if not messages:
        violations.append(Violation(0, field, "empty", "send at least one user message"))
    for i, message in enumerate(messages):
        if message["role"] not in ROLES:
            violations.append(Violation(0, f"{field}[{i}].role", f"unknown role {message['role']!r}",
                                        f"use one of {', '.join(ROLES)}"))
    if violations:
        raise InvalidArgument("invalid chat messages", violations)


def render_prompt(tokenizer, messages: list[dict] | None, text: str | None,
                  add_generation_prompt: bool = True) -> tuple[list[int], str]:
    """Token ids (and the text they encode) of a chat, via the model's chat template, or of raw text."""
    if messages is not None:
        check_messages(messages)
        if not tokenizer.chat_template:
            raise InvalidArgument("chat: this model has no chat template; send the prompt as text instead")
        rendered = tokenizer.apply_chat_template(messages, add_generation_prompt=add_generation_prompt,
                                                 tokenize=False)
        return tokenizer(rendered, add_special_tokens=False)["input_ids"], rendered
    if not text:
        raise InvalidArgument("input: empty", [Violation(0, "input", "neither chat nor text was given",
                                                         "set chat.messages or text")])
    return tokenizer(text)["input_ids"], text


def check_room(backend: Backend, prompt_ids: list[int], name: str = "the model", row: int = 0) -> int:
    """Tokens left in the context after the prompt; InvalidArgument (naming the counts) when none are."""
    room = backend.context_length - len(prompt_ids)
    if room <= 0:
        raise InvalidArgument(
            f"input: the prompt is {len(prompt_ids)} tokens and {name} has a context of "
            f"{backend.context_length}; shorten it by at least {1 - room} tokens",
            [Violation(row, "input", f"{len(prompt_ids)} prompt tokens >= context length {backend.context_length}",
                       "shorten the prompt or the conversation")])
    return room


def stream(backend: Backend, prompt_ids: list[int], sampling: SamplingConfig, *, adapter_id: str | None = None,
           is_active: Callable[[], bool] = lambda: True, deadline: float | None = None,
           arrived: float | None = None, name: str = "the model") -> Iterator[Delta | Finished]:
    """Stream the `sampling.n` choices of one prompt on a backend: Delta items, then one Finished per choice
    (choices run concurrently, so the backend batches them). Raises InvalidArgument before the first item
    when the prompt fills the context (`name` is the model named in the message); afterwards the backend's
    errors (NotFound for an unknown adapter...) come out of the iterator."""
    arrived = time.monotonic() if arrived is None else arrived
    room = check_room(backend, prompt_ids, name)
    choices = [Choice(index, backend, prompt_ids, sampling.for_choice(index), adapter_id or None, arrived,
                      is_active, deadline, room) for index in range(sampling.n)]
    if len(choices) == 1:
        yield from choices[0].run()
        return
    merged: queue.Queue = queue.Queue()
    for choice in choices:
        threading.Thread(target=choice.run_into, args=(merged,), daemon=True,
                         name=f"choice-{choice.index}").start()
    remaining = len(choices)
    while remaining:
        item = merged.get()
        if isinstance(item, BaseException):
            raise item
        if isinstance(item, Finished):
            remaining -= 1
        yield item


class Choice:
    """One sequence of one request: its backend request, detokenizer and stop matcher.

    `run()` yields Delta items and ends with one Finished; the deltas are exact UTF-8 text and never
    contain any part of a stop sequence. It ends within one decoding step of `is_active()` turning False,
    the deadline passing or a stop sequence matching."""

    def __init__(self, index, backend, prompt_ids, sampling: SamplingConfig, adapter_id, arrived, is_active,
                 deadline, room):
        self.index = index
        self.backend = backend
        self.prompt_ids = prompt_ids
        self.sampling = sampling
        sampling.max_new_tokens = min(sampling.max_new_tokens, room)
        self.adapter_id = adapter_id
        self.arrived = arrived
        self.is_active = is_active
        self.deadline = deadline
        self.stopper = StopMatcher(sampling.stop)

    def should_stop(self) -> bool:
        return (self.stopper.matched or not self.is_active()
                or (self.deadline is not None and time.monotonic() >= self.deadline))

    def run_into(self, out: queue.Queue) -> None:
        try:
            for item in self.run():
                out.put(item)
        except BaseException as exc:  # noqa: BLE001 - handed to the consuming thread
            out.put(exc)

    def run(self) -> Iterator[Delta | Finished]:
        detokenizer = IncrementalDetokenizer(self.backend.tokenizer, self.prompt_ids)
        request = GenerationRequest(request_id=uuid.uuid4().hex, prompt_ids=self.prompt_ids, sampling=self.sampling,
                                    adapter_id=self.adapter_id, should_stop=self.should_stop)
        generated = 0
        first_token_at = last_token_at = None
        finish = "length"
        for step in self.backend.generate(request):
            if step.token_ids:
                now = time.monotonic()
                first_token_at = first_token_at or now
                last_token_at = now
                generated += len(step.token_ids)
                text = self.stopper.feed(detokenizer.add(step.token_ids))
                if text or not self.stopper.matched:
                    yield Delta(self.index, text, list(step.token_ids))
            if step.finish:
                finish = step.finish
                break
        tail = self.stopper.feed(detokenizer.flush()) + self.stopper.flush()
        if tail:
            yield Delta(self.index, tail, [])
        if finish == "stopped" or self.stopper.matched:
            if self.stopper.matched:
                finish = "stop"
            elif self.deadline is not None and time.monotonic() >= self.deadline:
                finish = "deadline"
            else:
                finish = "cancelled"
        duration = (last_token_at - first_token_at) if first_token_at and last_token_at else 0.0
        yield Finished(
            index=self.index, reason=finish, prompt_tokens=len(self.prompt_ids), completion_tokens=generated,
            time_to_first_token_ms=((first_token_at - self.arrived) * 1000.0) if first_token_at else 0.0,
            tokens_per_second=(generated - 1) / duration if duration > 0 else 0.0,
            text=self.stopper.released)
