"""The transformers (+ bitsandbytes, + peft) backend: continuous batching on one decode thread.

    backend = TransformersBackend(store.path_of("tiny"), LoadOptions(max_batch_size=8))
    for step in backend.generate(GenerationRequest("r1", prompt_ids, SamplingConfig(temperature=0))):
        ...

    with TransformersBackend.from_model(policy, tokenizer) as backend:  # a model already in memory
        completions = generate_all(backend, prompts, SamplingConfig(temperature=1.0))  # services/engine/batch.py

Design (why it looks like this):

* One background thread owns the model. `generate` (called from any number of threads) puts the request
  on a FIFO queue and then yields the `TokenStep`s that the thread puts on the request's own queue.
* Continuous batching: between two decoding steps the thread admits waiting requests (oldest first, up to
  `LoadOptions.max_batch_size` sequences in the batch). The new requests are prefilled together
  (left-padded), their KV cache is left-padded to the batch's length and concatenated to it, and from then
  on every sequence of the batch advances in the same forward pass (one token each). Finished rows are
  dropped from the cache at once; columns that became padding for every row are trimmed.
  Models whose cache is not a plain `DynamicCache` of `DynamicLayer`s (sliding-window / hybrid caches)
  fall back to "waves": new requests are only admitted when the batch is empty.
* Positions are per row (number of real tokens seen), the 2D attention mask hides padding, so a row's
  result does not depend on what it is batched with (up to floating-point rounding).
* LoRA adapters are served with peft's mixed-adapter batches: one forward takes `adapter_names` per row
  ("__base__" = the base weights), so requests for different adapters and for the base model share the
  batch.
* Sampling is done per row, in the request's own order of processors, with the request's own
  `torch.Generator` on CPU: same seed + prompt + parameters => the same tokens, whatever the batch.
* Errors: a failing forward fails the requests in it (their iterator raises the exception); a failing
  sampling step fails its row only; the thread keeps serving.

* `from_model` wraps a model someone else owns (RFT's policy being trained, Evaluate's model, peft-wrapped
  or not): nothing is loaded, the model is in eval mode while the backend lives, and `close()` gives it
  back in train mode if it was training. Loading from disk is transformers_loading.py.

Raises (from `__init__`): InvalidArgument for bad load options, FailedPrecondition when the model or
bitsandbytes cannot be loaded. `generate` raises InvalidArgument (empty / too long / out-of-vocabulary
prompt), NotFound (unknown adapter), FailedPrecondition (backend closed), or the exception that broke the
forward pass of the request.
"""

from __future__ import annotations

import collections
import json
import logging
import queue
import threading
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

import torch

from services.common.errors import AlreadyExists, FailedPrecondition, NotFound, ResourceExhausted
from services.engine.backends.base import Backend, GenerationRequest, LoadOptions, TokenStep
from services.engine.backends.transformers_loading import invalid as _invalid
from services.engine.backends.transformers_loading import load_pretrained

logger = logging.getLogger(__name__)

_BASE = "__base__"  # peft's name for "no adapter" in mixed-adapter batches


@dataclass(eq=False)
class _Slot:
    """A request and everything the decode thread keeps about it."""

    request: GenerationRequest
    max_new: int  # max_new_tokens, capped by the context left after the prompt
    generator: torch.Generator
    eos: frozenset[int]
    out: queue.Queue = field(default_factory=queue.Queue)
    generated: list[int] = field(default_factory=list)
    length: int = 0  # real tokens in the KV cache (= position of the next token fed)
    pending: int = -1  # sampled token not yet fed to the model
    done: bool = False
    abandoned: bool = False  # the consumer went away (generator closed)

    @property
    def adapter_name(self) -> str:
        return self.request.adapter_id or _BASE

    def emit(self, step: TokenStep) -> None:
        if step.finish is not None:
            self.done = True
        self.out.put(step)

    def fail(self, exc: BaseException) -> None:
        self.done = True
        self.out.put(exc)


class TransformersBackend(Backend):
    name = "transformers"

    def __init__(self, model_dir: Path, options: LoadOptions | None = None):
        options = self._checked(options)
        model, tokenizer, quantization = load_pretrained(Path(model_dir), options)
        self._start(model, tokenizer, options, Path(model_dir), quantization, owned=True)

    @classmethod
    def from_model(cls, model, tokenizer, options: LoadOptions | None = None) -> TransformersBackend:
        """A backend over a model already in memory (a transformers model or a peft model around one), on
        whatever device it is. Nothing is loaded or copied; the model is switched to eval mode until
        `close()`, which puts it back in train mode if it was training and leaves it (and the tokenizer,
        never modified) to its owner. Adapters cannot be loaded on such a backend."""
        backend = cls.__new__(cls)
        options = cls._checked(options)
        quantization = str(getattr(model, "quantization_method", "") or "none") \
            if getattr(model, "is_quantized", False) else "none"
        name = Path(str(getattr(model.config, "_name_or_path", "") or "in-memory"))
        backend._start(model, tokenizer, options, name, quantization, owned=False)
        return backend

    @staticmethod
    def _checked(options: LoadOptions | None) -> LoadOptions:
        options = options or LoadOptions()
        if options.max_batch_size < 1:
            raise _invalid("max_batch_size", f"{options.max_batch_size} is not positive", "use 1 or more")
        return options

    def _start(self, model, tokenizer, options: LoadOptions, model_dir: Path, quantization: str, owned: bool):
        self.options = options
        self.model_dir = model_dir
        self._owned = owned
        self._was_training = bool(model.training)
        model.eval()
        self._adopt(model, tokenizer, quantization)

        self._adapters: dict[str, Path] = {}
        # Held by the decode thread for a whole iteration; adapter changes take it too, so the model never
        # changes under a forward pass.
        self._model_lock = threading.Lock()
        self._cv = threading.Condition()
        self._waiting: collections.deque[_Slot] = collections.deque()
        self._closed = False
        # The batch (owned by the decode thread).
        self._rows: list[_Slot] = []
        self._admitting: list[_Slot] = []  # taken off the queue, not yet in the batch
        self._cache = None
        self._mask: torch.Tensor | None = None
        self.stats = {"forward_calls": 0, "prefill_calls": 0, "decode_steps": 0, "max_batch_seen": 0,
                      "tokens_generated": 0, "requests_finished": 0, "requests_failed": 0}
        self._thread = threading.Thread(target=self._run, name=f"transformers-decode:{self.model_dir.name}",
                                        daemon=True)
        self._thread.start()

    # ------------------------------------------------------------------ the model

    def _adopt(self, model, tokenizer, quantization: str) -> None:
        """Everything the decode loop needs to know about the model (read once)."""
        import inspect

        from transformers.cache_utils import DynamicCache, DynamicLayer

        self.tokenizer = tokenizer
        self._base_model = model  # the transformers model (peft injects LoRA layers into it in place)
        self.model = model  # what forward passes go through: the base model or a PeftModel around it
        self._config = model.config
        self.device = str(next(model.parameters()).device)
        self.dtype = str(model.dtype).removeprefix("torch.")
        self.quantization = quantization
        pad = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else tokenizer.eos_token_id
        self._pad_id = pad if pad is not None else 0  # padding is masked: any id will do

        # What ends an answer: the model's generation EOS (one or several) and the tokenizer's EOS.
        eos = model.generation_config.eos_token_id if model.generation_config is not None else None
        eos_ids = set(eos if isinstance(eos, (list, tuple)) else ([] if eos is None else [eos]))
        if tokenizer.eos_token_id is not None:
            eos_ids.add(tokenizer.eos_token_id)
        self.eos_token_ids = frozenset(int(t) for t in eos_ids)

        text_config = model.config.get_text_config() if hasattr(model.config, "get_text_config") else model.config
        self.context_length = int(getattr(text_config, "max_position_embeddings", 0) or 2048)
        self.vocab_size = int(model.get_input_embeddings().num_embeddings)

        inner = model.get_base_model() if hasattr(model, "get_base_model") else model  # peft passes kwargs on
        self._logits_to_keep = "logits_to_keep" in inspect.signature(inner.forward).parameters
        probe = DynamicCache(config=model.config)
        # Only caches made of plain growing layers can be left-padded and concatenated (continuous batching).
        self._mergeable = bool(probe.layers) and all(type(layer) is DynamicLayer for layer in probe.layers)

    def memory_bytes(self) -> int:
        return int(self._base_model.get_memory_footprint())

    # ------------------------------------------------------------------ adapters

    def load_adapter(self, adapter_id: str, path: Path) -> None:
        from peft import PeftModel

        if not self._owned:
            raise FailedPrecondition("this backend serves a model it does not own (from_model); adapters cannot "
                                     "be loaded on it")
        path = Path(path)
        config_file = path / "adapter_config.json"
        if not config_file.is_file():
            raise FailedPrecondition(f"adapter {adapter_id} is not a peft adapter (its adapter_config.json is missing)")
        rank = json.loads(config_file.read_text()).get("r") or 0
        if rank > self.options.max_lora_rank:
            raise _invalid("adapter", f"LoRA rank {rank} is above max_lora_rank {self.options.max_lora_rank}",
                           "load the model with a larger max_lora_rank")
        with self._model_lock:
            if self._closed:
                raise FailedPrecondition("the backend is closed")
            if adapter_id in self._adapters:
                raise AlreadyExists(f"adapter {adapter_id!r} is already loaded")
            if len(self._adapters) >= self.options.max_loras:
                raise ResourceExhausted(f"{len(self._adapters)} adapters are loaded, the most max_loras allows; "
                                        "unload one first")
            try:
                if self._adapters:
                    self.model.load_adapter(path, adapter_name=adapter_id)
                else:
                    self.model = PeftModel.from_pretrained(self._base_model, path, adapter_name=adapter_id)
            except (ValueError, KeyError, RuntimeError, OSError) as exc:
                raise FailedPrecondition(f"adapter {adapter_id!r} cannot be applied to this model: {exc}") from exc
            self.model.eval()
            self._adapters[adapter_id] = path

    def unload_adapter(self, adapter_id: str) -> None:
        with self._model_lock:
            if adapter_id not in self._adapters:
                raise NotFound(f"adapter {adapter_id!r} is not loaded")
            if len(self._adapters) == 1:
                # peft cannot run with no adapter at all: take the LoRA layers out and go back to the base model.
                self._base_model = self.model.unload()
                self.model = self._base_model
                self.model.eval()
            else:
                self.model.delete_adapter(adapter_id)
            del self._adapters[adapter_id]

    def adapter_ids(self) -> list[str]:
        return list(self._adapters)

    def queue_depth(self) -> int:
        """Requests waiting for a place in the batch."""
        with self._cv:
            return len(self._waiting)

    def batch_size(self) -> int:
        """Sequences in the running batch."""
        return len(self._rows)

    # ------------------------------------------------------------------ generation API

    def generate(self, request: GenerationRequest) -> Iterator[TokenStep]:
        slot = self._new_slot(request)
        if slot is None:  # the prompt fills the context: nothing can be generated
            yield TokenStep([], "length")
            return
        with self._cv:
            if self._closed:
                raise FailedPrecondition("the backend is closed")
            self._waiting.append(slot)
            self._cv.notify_all()
        try:
            while True:
                item = slot.out.get()
                if isinstance(item, BaseException):
                    raise item
                yield item
                if item.finish is not None:
                    return
        finally:
            slot.abandoned = True

    def _new_slot(self, request: GenerationRequest) -> _Slot | None:
        prompt = request.prompt_ids
        if not prompt:
            raise _invalid("prompt", "the prompt has no tokens", "send some text or messages")
        if min(prompt) < 0 or max(prompt) >= self.vocab_size:
            raise _invalid("prompt", "token ids out of the vocabulary", f"ids must be in [0, {self.vocab_size})")
        if len(prompt) > self.context_length:
            raise _invalid("prompt", f"the prompt has {len(prompt)} tokens; the model's context is "
                                     f"{self.context_length}", "shorten the prompt")
        if request.adapter_id is not None and request.adapter_id not in self._adapters:
            raise NotFound(f"adapter {request.adapter_id!r} is not loaded on this model")
        room = self.context_length - len(prompt)
        if room <= 0:
            return None
        generator = torch.Generator(device="cpu")
        if request.sampling.seed is None:
            generator.seed()
        else:
            generator.manual_seed(int(request.sampling.seed) & 0xFFFF_FFFF_FFFF_FFFF)
        return _Slot(request=request, max_new=min(request.sampling.max_new_tokens, room), generator=generator,
                     eos=frozenset() if request.sampling.ignore_eos else self.eos_token_ids)

    def close(self) -> None:
        with self._cv:
            if self._closed:
                return
            self._closed = True
            pending = list(self._waiting)
            self._waiting.clear()
            self._cv.notify_all()
        for slot in pending:
            slot.emit(TokenStep([], "stopped"))
        self._thread.join(timeout=60)
        if self._thread.is_alive():
            logger.warning("the decode thread of %s did not stop within 60 s", self.model_dir)
            return
        self._cache = self._mask = None
        if not self._owned:
            if self._was_training:
                self.model.train()
            self.model = self._base_model = None
            return
        self.model = self._base_model = None
        import gc
        gc.collect()
        if torch.cuda.is_available():
            torch.cuda.empty_cache()

    # ------------------------------------------------------------------ the decode thread

    def _run(self) -> None:
        # A model we do not own trains again after us: buffers a forward may cache (e.g. dynamic RoPE) must not
        # become inference tensors, which autograd later refuses. no_grad is enough there.
        with torch.inference_mode() if self._owned else torch.no_grad():
            while True:
                with self._cv:
                    while not self._closed and not self._waiting and not self._rows:
                        self._cv.wait()
                    if self._closed:
                        break
                with self._model_lock:
                    try:
                        self._iteration()
                    except Exception as exc:  # noqa: BLE001 - keep serving; the rows in flight get the error
                        logger.exception("decode loop error; failing %d request(s)", len(self._rows))
                        self._fail_all(exc)
        for slot in self._rows:
            slot.emit(TokenStep([], "stopped"))
        self._rows, self._cache, self._mask = [], None, None

    def _iteration(self) -> None:
        self._sweep()
        self._admitting = self._admit()
        if self._admitting:
            self._prefill(self._admitting)
            self._admitting = []
            self._sweep()
        if self._rows:
            self._decode()

    def _stop_reason(self, slot: _Slot) -> BaseException | str | None:
        """"stopped" when the request must end now, an exception when it must fail, None to go on."""
        if slot.abandoned:
            return "stopped"
        if slot.request.adapter_id is not None and slot.request.adapter_id not in self._adapters:
            return FailedPrecondition(f"adapter {slot.request.adapter_id!r} was unloaded")
        try:
            return "stopped" if slot.request.should_stop() else None
        except Exception as exc:  # noqa: BLE001 - a broken callback fails its own request only
            return exc

    def _end(self, slot: _Slot, reason: BaseException | str) -> None:
        if isinstance(reason, BaseException):
            self.stats["requests_failed"] += 1
            slot.fail(reason)
        else:
            self.stats["requests_finished"] += 1
            slot.emit(TokenStep([], reason))

    def _sweep(self) -> None:
        """Check should_stop for every row, then drop finished rows from the batch."""
        for slot in self._rows:
            if not slot.done:
                reason = self._stop_reason(slot)
                if reason is not None:
                    self._end(slot, reason)
        self._drop_done()

    def _admit(self) -> list[_Slot]:
        capacity = self.options.max_batch_size - len(self._rows)
        if not self._mergeable and self._rows:
            capacity = 0
        admitted: list[_Slot] = []
        with self._cv:
            # Requests still waiting end as soon as they are cancelled, not when they reach the batch.
            for slot in list(self._waiting):
                reason = self._stop_reason(slot)
                if reason is not None:
                    self._waiting.remove(slot)
                    self._end(slot, reason)
            while self._waiting and len(admitted) < capacity:
                admitted.append(self._waiting.popleft())
        return admitted

    def _forward(self, input_ids, attention_mask, position_ids, cache, rows: list[_Slot]) -> torch.Tensor:
        kwargs = {"input_ids": input_ids, "attention_mask": attention_mask, "position_ids": position_ids,
                  "past_key_values": cache, "use_cache": True}
        if self._logits_to_keep:
            kwargs["logits_to_keep"] = 1
        if self._adapters:
            kwargs["adapter_names"] = [slot.adapter_name for slot in rows]
        self.stats["forward_calls"] += 1
        return self.model(**kwargs).logits[:, -1, :]

    def _prefill(self, slots: list[_Slot]) -> None:
        from transformers.cache_utils import DynamicCache

        device = self._device()
        width = max(len(s.request.prompt_ids) for s in slots)
        ids = torch.full((len(slots), width), self._pad_id, dtype=torch.long)
        mask = torch.zeros((len(slots), width), dtype=torch.long)
        for i, slot in enumerate(slots):
            prompt = slot.request.prompt_ids
            ids[i, width - len(prompt):] = torch.tensor(prompt, dtype=torch.long)
            mask[i, width - len(prompt):] = 1
        positions = (mask.cumsum(-1) - 1).clamp(min=0)
        ids, mask, positions = ids.to(device), mask.to(device), positions.to(device)
        cache = DynamicCache(config=self._config)
        try:
            logits = self._forward(ids, mask, positions, cache, slots)
        except Exception as exc:  # noqa: BLE001 - fail these requests, keep the running batch
            logger.exception("prefill failed for %d request(s)", len(slots))
            for slot in slots:
                self._end(slot, exc)
            return
        self.stats["prefill_calls"] += 1
        for slot in slots:
            slot.length = len(slot.request.prompt_ids)
        self._merge(cache, mask, slots)
        self._sample_and_emit(logits, slots)

    def _decode(self) -> None:
        rows = self._rows
        device = self._device()
        ids = torch.tensor([[slot.pending] for slot in rows], dtype=torch.long, device=device)
        positions = torch.tensor([[slot.length] for slot in rows], dtype=torch.long, device=device)
        self._mask = torch.cat([self._mask, torch.ones((len(rows), 1), dtype=self._mask.dtype, device=device)], 1)
        self.stats["max_batch_seen"] = max(self.stats["max_batch_seen"], len(rows))
        try:
            logits = self._forward(ids, self._mask, positions, self._cache, rows)
        except Exception as exc:  # noqa: BLE001 - the cache is now inconsistent: fail the whole batch
            logger.exception("decode step failed for %d request(s)", len(rows))
            self._fail_all(exc)
            return
        self.stats["decode_steps"] += 1
        for slot in rows:
            slot.length += 1
        self._sample_and_emit(logits, rows)
        self._drop_done()

    def _device(self) -> torch.device:
        return next(self._base_model.parameters()).device

    def _fail_all(self, exc: BaseException) -> None:
        for slot in self._rows + self._admitting:
            if not slot.done:
                self._end(slot, exc)
        self._rows, self._cache, self._mask, self._admitting = [], None, None, []

    # ------------------------------------------------------------------ batch bookkeeping

    def _merge(self, cache, mask: torch.Tensor, slots: list[_Slot]) -> None:
        """Append prefilled rows to the batch: left-pad the shorter cache so both have one length."""
        if not self._rows:
            self._rows, self._cache, self._mask = list(slots), cache, mask
            return
        pad = torch.nn.functional.pad
        width = max(self._mask.shape[1], mask.shape[1])

        def left(t: torch.Tensor, dim_from_end: int) -> torch.Tensor:
            missing = width - t.shape[-dim_from_end]
            if missing == 0:
                return t
            spec = [0, 0] * (dim_from_end - 1) + [missing, 0]
            return pad(t, spec)

        for old, new in zip(self._cache.layers, cache.layers, strict=True):
            old.keys = torch.cat([left(old.keys, 2), left(new.keys, 2)], 0)
            old.values = torch.cat([left(old.values, 2), left(new.values, 2)], 0)
        self._mask = torch.cat([left(self._mask, 1), left(mask, 1)], 0)
        self._rows = self._rows + list(slots)

    def _drop_done(self) -> None:
        keep = [i for i, slot in enumerate(self._rows) if not slot.done]
        if not keep:
            self._rows, self._cache, self._mask = [], None, None
            return
        if len(keep) < len(self._rows):
            index = torch.tensor(keep, dtype=torch.long, device=self._mask.device)
            self._cache.batch_select_indices(index)
            self._mask = self._mask[index]
            self._rows = [self._rows[i] for i in keep]
            if self._mergeable:
                # Columns that are padding in every remaining row cost compute for nothing: cut them.
                first = int(self._mask.any(0).to(torch.long).argmax())
                if first > 0:
                    for layer in self._cache.layers:
                        layer.keys = layer.keys[:, :, first:, :]
                        layer.values = layer.values[:, :, first:, :]
                    self._mask = self._mask[:, first:]

    # ------------------------------------------------------------------ sampling

    def _sample_and_emit(self, logits: torch.Tensor, rows: list[_Slot]) -> None:
        argmax = logits.argmax(-1).tolist()  # what greedy rows with no penalty take (as model.generate does)
        for i, slot in enumerate(rows):
            if slot.done:
                continue
            try:
                s = slot.request.sampling
                plain_greedy = s.temperature == 0 and s.repetition_penalty == 1.0 \
                    and s.presence_penalty == 0 and s.frequency_penalty == 0
                token = argmax[i] if plain_greedy else self._sample(logits[i].float().cpu(), slot)
            except Exception as exc:  # noqa: BLE001 - e.g. NaN probabilities: fail this row only
                logger.exception("sampling failed for request %s", slot.request.request_id)
                self._end(slot, exc)
                continue
            self._advance(slot, int(token))

    def _advance(self, slot: _Slot, token: int) -> None:
        if token in slot.eos:
            self.stats["requests_finished"] += 1
            slot.emit(TokenStep([], "eos"))
            return
        slot.generated.append(token)
        slot.pending = token
        self.stats["tokens_generated"] += 1
        if len(slot.generated) >= slot.max_new:
            self.stats["requests_finished"] += 1
            slot.emit(TokenStep([token], "length"))
        else:
            slot.emit(TokenStep([token]))

    @staticmethod
    def _sample(scores: torch.Tensor, slot: _Slot) -> int:
        """One token from one row of logits (float32, CPU), in the documented order of processors."""
        from transformers.generation.logits_process import MinPLogitsWarper, TopKLogitsWarper, TopPLogitsWarper

        s = slot.request.sampling
        if s.repetition_penalty != 1.0:  # transformers' rule, over prompt + generated ids
            seen = torch.tensor(sorted(set(slot.request.prompt_ids) | set(slot.generated)), dtype=torch.long)
            picked = scores[seen]
            scores[seen] = torch.where(picked < 0, picked * s.repetition_penalty, picked / s.repetition_penalty)
        if (s.presence_penalty or s.frequency_penalty) and slot.generated:  # OpenAI's rule, generated ids only
            counts = torch.bincount(torch.tensor(slot.generated, dtype=torch.long),
                                    minlength=scores.shape[-1])[: scores.shape[-1]].to(scores.dtype)
            scores = scores - s.frequency_penalty * counts - s.presence_penalty * (counts > 0).to(scores.dtype)
        if s.temperature == 0:
            return int(scores.argmax())
        scores = (scores / float(s.temperature)).unsqueeze(0)
        if s.top_k and s.top_k > 0:
            scores = TopKLogitsWarper(top_k=int(s.top_k))(None, scores)
        if s.top_p < 1.0:
            scores = TopPLogitsWarper(top_p=float(s.top_p))(None, scores)
        if s.min_p > 0.0:
            scores = MinPLogitsWarper(min_p=float(s.min_p))(None, scores)
        probs = torch.softmax(scores, dim=-1)
        return int(torch.multinomial(probs, 1, generator=slot.generator)[0, 0])

