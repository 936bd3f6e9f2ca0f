"""InferenceService servicer: proto <-> domain translation only (DESIGN.md §5.5).

The registry (models, adapters, admission) is injected; which backend serves a model is the
registry's business, so nothing here knows transformers or vLLM.
"""

from __future__ import annotations

import time

from lmforge.v1 import common_pb2, inference_pb2, inference_pb2_grpc
from services.common.errors import InvalidArgument
from services.common.grpc_server import translate_errors
from services.engine.backends.base import LoadOptions, QuantizationConfig
from services.engine.sampling import checked_sampling
from services.inference import serving
from services.inference.metrics import InferenceMetrics
from services.inference.registry import LoadedModel, ModelRegistry
from services.common.convert import manifest_to_proto

_QUANTIZATION = {common_pb2.QUANTIZATION_TYPE_UNSPECIFIED: "none", common_pb2.QUANTIZATION_NONE: "none",
                 common_pb2.QUANTIZATION_INT8: "int8", common_pb2.QUANTIZATION_NF4: "nf4",
                 common_pb2.QUANTIZATION_FP4: "fp4"}
_QUANTIZATION_PROTO = {"none": common_pb2.QUANTIZATION_NONE, "int8": common_pb2.QUANTIZATION_INT8,
                       "nf4": common_pb2.QUANTIZATION_NF4, "fp4": common_pb2.QUANTIZATION_FP4}
_BACKENDS = {inference_pb2.BACKEND_UNSPECIFIED: "transformers", inference_pb2.BACKEND_TRANSFORMERS: "transformers",
             inference_pb2.BACKEND_VLLM: "vllm"}
_BACKENDS_PROTO = {"transformers": inference_pb2.BACKEND_TRANSFORMERS, "vllm": inference_pb2.BACKEND_VLLM}
_FINISH = {"length": inference_pb2.FINISH_REASON_LENGTH, "eos": inference_pb2.FINISH_REASON_EOS,
           "stop": inference_pb2.FINISH_REASON_STOP, "cancelled": inference_pb2.FINISH_REASON_CANCELLED,
           "deadline": inference_pb2.FINISH_REASON_DEADLINE}
_SAMPLING_FIELDS = ("temperature", "top_p", "top_k", "min_p", "repetition_penalty", "presence_penalty",
                    "frequency_penalty", "seed", "max_new_tokens", "n", "ignore_eos")
DTYPES = ("auto", "float32", "bfloat16", "float16")


def sampling_from_proto(params: inference_pb2.SamplingParams):
    values = {name: getattr(params, name) for name in _SAMPLING_FIELDS if params.HasField(name)}
    values["stop"] = list(params.stop)
    return checked_sampling(values)


def messages_from_proto(chat: inference_pb2.ChatInput) -> list[dict]:
    return [{"role": m.role, "content": m.content} for m in chat.messages]


def load_options_from_proto(request: inference_pb2.LoadModelRequest, defaults: LoadOptions) -> LoadOptions:
    quant = request.quantization
    if quant.type not in _QUANTIZATION:
        raise InvalidArgument(f"quantization.type: unknown value {quant.type}")
    dtype = request.dtype or "auto"
    if dtype not in DTYPES:
        raise InvalidArgument(f"dtype: {dtype!r} is not one of {', '.join(DTYPES)}")
    if quant.compute_dtype not in ("", "float32", "bfloat16", "float16"):
        raise InvalidArgument(f"quantization.compute_dtype: {quant.compute_dtype!r} is not float32, bfloat16 "
                              "or float16")
    return LoadOptions(
        quantization=QuantizationConfig(type=_QUANTIZATION[quant.type], double_quant=quant.double_quant,
                                        compute_dtype=quant.compute_dtype),
        dtype=dtype, max_batch_size=defaults.max_batch_size, max_loras=defaults.max_loras,
        max_lora_rank=defaults.max_lora_rank)


def loaded_to_proto(loaded: LoadedModel) -> inference_pb2.LoadedModel:
    backend = loaded.backend
    quant = loaded.options.quantization
    return inference_pb2.LoadedModel(
        model_id=loaded.model_id, backend=_BACKENDS_PROTO[loaded.backend_kind],
        quantization=common_pb2.QuantizationSpec(type=_QUANTIZATION_PROTO[quant.type],
                                                 double_quant=quant.double_quant, compute_dtype=quant.compute_dtype),
        dtype=backend.dtype, device=backend.device, memory_bytes=backend.memory_bytes(),
        context_length=backend.context_length, load_seconds=loaded.load_seconds,
        adapters=[inference_pb2.LoadedAdapter(adapter_id=a, base_model_id=loaded.model_id)
                  for a in backend.adapter_ids()])


class InferenceServicer(inference_pb2_grpc.InferenceServiceServicer):
    def __init__(self, registry: ModelRegistry, metrics: InferenceMetrics | None = None):
        self.registry = registry
        self.metrics = metrics

    @translate_errors
    def Generate(self, request, context):
        sampling = sampling_from_proto(request.sampling)
        which = request.WhichOneof("input")
        remaining = context.time_remaining()
        deadline = time.monotonic() + remaining if remaining is not None else None
        stream = serving.generate(
            self.registry, request.model_id, adapter_id=request.adapter_id, sampling=sampling,
            messages=messages_from_proto(request.chat) if which == "chat" else None,
            text=request.text if which == "text" else None, is_active=context.is_active, deadline=deadline,
            metrics=self.metrics)
        for item in stream:
            if isinstance(item, serving.Delta):
                yield inference_pb2.GenerateResponse(index=item.index, text_delta=item.text, token_ids=item.token_ids)
            else:
                yield inference_pb2.GenerateResponse(index=item.index, finished=inference_pb2.GenerationFinished(
                    finish_reason=_FINISH[item.reason],
                    usage=inference_pb2.Usage(prompt_tokens=item.prompt_tokens,
                                              completion_tokens=item.completion_tokens),
                    timings=inference_pb2.Timings(time_to_first_token_ms=item.time_to_first_token_ms,
                                                  tokens_per_second=item.tokens_per_second),
                    text=item.text))

    @translate_errors
    def Tokenize(self, request, context):
        tokenizer = self.registry.tokenizer(request.model_id)
        which = request.WhichOneof("input")
        add_prompt = request.add_generation_prompt if request.HasField("add_generation_prompt") else True
        ids, text = serving.render_prompt(tokenizer, messages_from_proto(request.chat) if which == "chat" else None,
                                             request.text if which == "text" else None, add_prompt)
        return inference_pb2.TokenizeResponse(
            token_ids=ids, pieces=[tokenizer.decode([i]) for i in ids], count=len(ids),
            chars_per_token=len(text) / len(ids) if ids else 0.0,
            context_length=serving.model_context_length(self.registry, request.model_id))

    @translate_errors
    def ListModels(self, request, context):
        return inference_pb2.ListModelsResponse(
            available=[manifest_to_proto(m) for m in self.registry.store.list()],
            loaded=[loaded_to_proto(m) for m in self.registry.loaded()])

    @translate_errors
    def LoadModel(self, request, context):
        options = load_options_from_proto(request, self.registry.default_options)
        if request.backend not in _BACKENDS:
            raise InvalidArgument(f"backend: unknown value {request.backend}")
        return loaded_to_proto(self.registry.load(request.model_id, _BACKENDS[request.backend], options))

    @translate_errors
    def UnloadModel(self, request, context):
        self.registry.unload(request.model_id)
        return inference_pb2.UnloadModelResponse()

    @translate_errors
    def LoadAdapter(self, request, context):
        model_id = request.model_id or self.registry.store.get(request.adapter_id, "adapter_id").base_model_id
        self.registry.ensure_adapter(model_id, request.adapter_id)
        return inference_pb2.LoadedAdapter(adapter_id=request.adapter_id, base_model_id=model_id)

    @translate_errors
    def UnloadAdapter(self, request, context):
        model_id = request.model_id or self.registry.store.get(request.adapter_id, "adapter_id").base_model_id
        self.registry.unload_adapter(model_id, request.adapter_id)
        return inference_pb2.UnloadAdapterResponse()
