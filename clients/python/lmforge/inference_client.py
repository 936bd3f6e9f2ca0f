"""`InferenceClient`: the typed client of `lmforge.v1.InferenceService`, and request building."""

from __future__ import annotations

import os
from collections.abc import Iterable, Iterator
from typing import Any

import grpc

from lmforge.channel import ServiceClient, retry_service_config
from lmforge.names import enum_value, short_name
from lmforge.v1 import common_pb2, inference_pb2, inference_pb2_grpc

DEFAULT_INFERENCE_ADDRESS = "127.0.0.1:50052"
INFERENCE_ADDRESS_ENV = "LMFORGE_INFERENCE_ADDRESS"

# Every unary call is safe to retry on UNAVAILABLE: reads are reads, and loading or unloading twice ends in
# the same state (a second LoadModel answers ALREADY_EXISTS or the loaded model). Generate is retried too:
# gRPC only retries a stream before its first response arrives, so no output is ever seen twice.
_INFERENCE_RETRIED_METHODS = ("Generate", "Tokenize", "ListModels", "LoadModel", "UnloadModel", "LoadAdapter",
                              "UnloadAdapter")
_INFERENCE_SERVICE_CONFIG = retry_service_config("lmforge.v1.InferenceService", _INFERENCE_RETRIED_METHODS)

# Loading weights (and quantizing them) takes minutes on big models: LoadModel gets at least this deadline.
MIN_LOAD_TIMEOUT = 600.0

# From the contract itself, so a field added to SamplingParams is usable here at once.
SAMPLING_FIELDS = tuple(f.name for f in inference_pb2.SamplingParams.DESCRIPTOR.fields)

_QUANT_ALIASES = {"": "UNSPECIFIED", "int4": "NF4", "4bit": "NF4", "8bit": "INT8", "bnb4": "NF4", "bnb8": "INT8"}


def default_inference_address() -> str:
    """$LMFORGE_INFERENCE_ADDRESS, or 127.0.0.1:50052."""
    return os.environ.get(INFERENCE_ADDRESS_ENV) or DEFAULT_INFERENCE_ADDRESS


def parse_quantization(value: Any) -> int:
    """QuantizationType from 3, "QUANTIZATION_NF4", "nf4", "int8", "fp4" or "none"."""
    return enum_value(common_pb2.QuantizationType, value, ("QUANTIZATION_", "QUANTIZATION_TYPE_"), _QUANT_ALIASES)


def quantization_name(spec: common_pb2.QuantizationSpec | int) -> str:
    """"none", "int8", "nf4", "fp4"; "+dq" for double quantization ("nf4+dq")."""
    qtype = spec if isinstance(spec, int) else spec.type
    name = {common_pb2.QUANTIZATION_INT8: "int8", common_pb2.QUANTIZATION_NF4: "nf4",
            common_pb2.QUANTIZATION_FP4: "fp4"}.get(qtype, "none")
    if not isinstance(spec, int) and spec.double_quant and name in ("nf4", "fp4"):
        name += "+dq"
    return name


def parse_backend(value: Any) -> int:
    """Backend from 2, "BACKEND_VLLM", "vllm" or "transformers" ("" = unspecified, i.e. transformers)."""
    return enum_value(inference_pb2.Backend, value, ("BACKEND_",), {"": "UNSPECIFIED", "hf": "TRANSFORMERS"})


def backend_name(backend: int) -> str:
    """"transformers" or "vllm" (UNSPECIFIED is transformers)."""
    return "vllm" if backend == inference_pb2.BACKEND_VLLM else "transformers"


def finish_reason_name(reason: int) -> str:
    """"eos", "length", "stop", "cancelled", "deadline"; "-" when unspecified."""
    if not reason:
        return "-"
    try:
        return short_name(inference_pb2.FinishReason.Name(reason), ("FINISH_REASON_",)).lower()
    except ValueError:
        return str(reason)


def to_chat_input(messages: Iterable[Any]) -> inference_pb2.ChatInput:
    """A ChatInput from ChatMessage messages, {"role", "content"} dicts or (role, content) pairs."""
    chat = inference_pb2.ChatInput()
    for m in messages:
        if isinstance(m, inference_pb2.ChatMessage):
            chat.messages.append(m)
        elif isinstance(m, dict):
            chat.messages.add(role=str(m.get("role", "")), content=str(m.get("content", "")))
        elif isinstance(m, (tuple, list)) and len(m) == 2:
            chat.messages.add(role=str(m[0]), content=str(m[1]))
        else:
            raise ValueError(f"a chat message must be a ChatMessage, a {{'role', 'content'}} dict or a "
                             f"(role, content) pair, got {m!r}")
    return chat


def build_sampling_params(**sampling: Any) -> inference_pb2.SamplingParams:
    """SamplingParams from keyword arguments named as its fields; None means "unset" (server default).

    Only the fields given (not None) are set, so proto3 presence survives: temperature=0 is greedy, not
    "default". `stop` takes a list of strings (a single string is one stop sequence). Raises TypeError for
    an unknown name.
    """
    unknown = sorted(set(sampling) - set(SAMPLING_FIELDS))
    if unknown:
        raise TypeError(f"unknown sampling parameter(s): {', '.join(unknown)}; "
                        f"expected: {', '.join(SAMPLING_FIELDS)}")
    params = inference_pb2.SamplingParams()
    fields = inference_pb2.SamplingParams.DESCRIPTOR.fields_by_name
    for name, value in sampling.items():
        if value is None:
            continue
        field = fields[name]
        if name == "stop":
            params.stop.extend([value] if isinstance(value, str) else list(value))
        elif field.cpp_type == field.CPPTYPE_BOOL:
            setattr(params, name, bool(value))
        elif field.cpp_type == field.CPPTYPE_DOUBLE:
            setattr(params, name, float(value))
        else:
            setattr(params, name, int(value))
    return params


def build_generate_request(
    model_id: str,
    *,
    messages: Iterable[Any] | None = None,
    text: str | None = None,
    adapter_id: str = "",
    **sampling: Any,
) -> inference_pb2.GenerateRequest:
    """A GenerateRequest with exactly one of `messages` (a chat) or `text` (raw prompt); ValueError otherwise."""
    if (messages is None) == (text is None):
        raise ValueError("give exactly one of messages (a chat) or text (a raw prompt)")
    request = inference_pb2.GenerateRequest(model_id=model_id, adapter_id=adapter_id or "",
                                            sampling=build_sampling_params(**sampling))
    if messages is not None:
        request.chat.CopyFrom(to_chat_input(messages))
    else:
        request.text = text
    return request


class InferenceClient(ServiceClient):
    """Client of `lmforge.v1.InferenceService`. Use as a context manager, or call `close()`.

        from lmforge import InferenceClient

        with InferenceClient() as client:                    # $LMFORGE_INFERENCE_ADDRESS or 127.0.0.1:50052
            client.load_model("smollm2-135m-instruct", quantization="nf4")
            text, finished = client.chat("smollm2-135m-instruct", [{"role": "user", "content": "Hi"}],
                                         temperature=0, max_new_tokens=64)
            call = client.generate("smollm2-135m-instruct", text="Once upon a time", seed=1)
            for response in call:                            # deltas, then one `finished` per choice
                print(response.text_delta, end="", flush=True)
            call.cancel()                                    # stops the server's generation at once

    `address`: HOST:PORT (None: $LMFORGE_INFERENCE_ADDRESS or 127.0.0.1:50052). `channel`: an existing
    grpc.Channel to use (not closed by `close()`); otherwise an insecure channel is opened, with retries
    on UNAVAILABLE. `timeout`: deadline in seconds of each unary call (LoadModel gets at least 600 s).
    Every method raises grpc.RpcError on failure (INVALID_ARGUMENT with field violations for bad sampling
    parameters, NOT_FOUND for unknown ids, FAILED_PRECONDITION for a model that is not loaded, ...).
    """

    def __init__(
        self,
        address: str | None = None,
        *,
        channel: grpc.Channel | None = None,
        timeout: float = 60.0,
        api_key: str | None = None,
    ):
        super().__init__(address or default_inference_address(), channel, _INFERENCE_SERVICE_CONFIG, api_key)
        self.timeout = timeout
        self._stub = inference_pb2_grpc.InferenceServiceStub(self._channel)

    # -- generation

    def generate(
        self,
        model_id: str,
        *,
        messages: Iterable[Any] | None = None,
        text: str | None = None,
        adapter_id: str = "",
        timeout: float | None = None,
        **sampling: Any,
    ) -> Iterator[inference_pb2.GenerateResponse]:
        """Start a generation; returns the gRPC call, an iterator of GenerateResponse with `.cancel()`.

        Give a chat (`messages`: dicts, pairs or ChatMessage) or a raw `text`. Sampling keyword arguments
        are SamplingParams fields (temperature, top_p, top_k, min_p, repetition_penalty, presence_penalty,
        frequency_penalty, seed, max_new_tokens, stop, n); None leaves a field unset. `timeout`: deadline
        of the whole stream in seconds (None: none). Each choice streams text deltas and ends with a
        message whose `finished` is set. Cancel the call (or let its deadline pass) to stop the server's
        generation. Raises ValueError / TypeError for a malformed request before sending anything; the
        iterator raises grpc.RpcError.
        """
        request = build_generate_request(model_id, messages=messages, text=text, adapter_id=adapter_id, **sampling)
        return self._stub.Generate(request, timeout=timeout)

    def chat(
        self, model_id: str, messages: Iterable[Any], **kw: Any
    ) -> tuple[str, inference_pb2.GenerationFinished]:
        """Generate a reply to a chat and wait for it: (text of choice 0, its GenerationFinished).

        Takes generate()'s keyword arguments (adapter_id, timeout, sampling). Other choices (n > 1) are
        discarded: use generate() to see them.
        """
        call = self.generate(model_id, messages=messages, **kw)
        parts: list[str] = []
        finished: inference_pb2.GenerationFinished | None = None
        try:
            for response in call:
                if response.index != 0:
                    continue
                parts.append(response.text_delta)
                if response.HasField("finished"):
                    finished = response.finished
        finally:
            call.cancel()  # no-op once finished
        text = "".join(parts)
        if finished is None:  # the stream ended without a final message: report what arrived
            finished = inference_pb2.GenerationFinished(text=text)
        return (finished.text or text), finished

    # -- tokens

    def tokenize(
        self,
        model_id: str,
        text: str | None = None,
        messages: Iterable[Any] | None = None,
        add_generation_prompt: bool | None = None,
    ) -> inference_pb2.TokenizeResponse:
        """Token ids, pieces, count and chars/token of a raw `text` or of a chat (`messages`, rendered with
        the model's chat template; `add_generation_prompt` defaults to true on the server)."""
        if (messages is None) == (text is None):
            raise ValueError("give exactly one of text or messages")
        request = inference_pb2.TokenizeRequest(model_id=model_id)
        if messages is not None:
            request.chat.CopyFrom(to_chat_input(messages))
        else:
            request.text = text
        if add_generation_prompt is not None:
            request.add_generation_prompt = bool(add_generation_prompt)
        return self._stub.Tokenize(request, timeout=self.timeout)

    # -- models and adapters

    def list_models(self) -> inference_pb2.ListModelsResponse:
        """Every store entry (`available`) and what is loaded, how (`loaded`)."""
        return self._stub.ListModels(inference_pb2.ListModelsRequest(), timeout=self.timeout)

    def load_model(
        self,
        model_id: str,
        quantization: Any = "none",
        dtype: str = "auto",
        backend: Any = "transformers",
        double_quant: bool = False,
        compute_dtype: str = "",
        timeout: float | None = None,
    ) -> inference_pb2.LoadedModel:
        """Load a base model or full checkpoint from the store.

        `quantization`: "none", "int8", "nf4" or "fp4" (or the enum); `backend`: "transformers" or "vllm";
        `dtype`: "auto", "float32", "bfloat16" or "float16"; `double_quant` / `compute_dtype` apply to
        4-bit only. `timeout` defaults to max(client timeout, 600 s). Raises ValueError for an unknown
        enum name, grpc.RpcError NOT_FOUND / INVALID_ARGUMENT / ALREADY_EXISTS / RESOURCE_EXHAUSTED.
        """
        if isinstance(quantization, common_pb2.QuantizationSpec):
            spec = quantization
        else:
            spec = common_pb2.QuantizationSpec(
                type=parse_quantization(quantization), double_quant=double_quant, compute_dtype=compute_dtype
            )
        request = inference_pb2.LoadModelRequest(
            model_id=model_id, quantization=spec, dtype=dtype or "auto", backend=parse_backend(backend)
        )
        if timeout is None:
            timeout = max(self.timeout, MIN_LOAD_TIMEOUT)
        return self._stub.LoadModel(request, timeout=timeout)

    def unload_model(self, model_id: str) -> inference_pb2.UnloadModelResponse:
        return self._stub.UnloadModel(inference_pb2.UnloadModelRequest(model_id=model_id), timeout=self.timeout)

    def load_adapter(self, adapter_id: str, model_id: str = "") -> inference_pb2.LoadedAdapter:
        """Make a store adapter available on its (loaded) base model, or on `model_id` when given."""
        return self._stub.LoadAdapter(inference_pb2.LoadAdapterRequest(adapter_id=adapter_id, model_id=model_id),
                                      timeout=self.timeout)

    def unload_adapter(self, adapter_id: str, model_id: str = "") -> inference_pb2.UnloadAdapterResponse:
        return self._stub.UnloadAdapter(
            inference_pb2.UnloadAdapterRequest(adapter_id=adapter_id, model_id=model_id), timeout=self.timeout
        )
