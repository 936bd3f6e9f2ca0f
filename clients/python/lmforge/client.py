"""`TrainerClient` and `InferenceClient`: thin, typed wrappers around the generated service stubs.

    from lmforge import TrainerClient

    with TrainerClient("127.0.0.1:50051") as client:
        dataset = client.upload_dataset("data/train.jsonl")
        job = client.start_training({
            "base_model_id": "smollm2-135m-instruct",
            "dataset_id": dataset.id,
            "sft": {},
            "adapter": {"type": "ADAPTER_LORA", "rank": 16},
            "hyperparameters": {"max_steps": 40},
        })
        for event in client.stream_metrics(job.id):   # survives server restarts
            print(event.sequence, event.WhichOneof("payload"))
        print(client.get_job(job.id).result_checkpoint_id)
        scored = client.wait(client.evaluate("smollm2-135m-instruct", dataset.id, metrics=["bleu", "rouge"]).id)

    with InferenceClient("127.0.0.1:50052") as client:
        client.load_model("smollm2-135m-instruct", quantization="nf4")
        text, finished = client.chat("smollm2-135m-instruct", [{"role": "user", "content": "Hi"}], temperature=0)

Every method returns protobuf messages from `lmforge.v1.trainer_pb2` / `inference_pb2` / `common_pb2` and raises
`grpc.RpcError` on failure (code INVALID_ARGUMENT with a google.rpc.BadRequest detail for bad requests,
NOT_FOUND for unknown ids, ...). Only grpcio, protobuf and pyyaml are needed: never torch.

This module is the stable import path; the code lives in `trainer_client`, `inference_client`, `names`
(enum names) and `channel` (the shared channel set-up).
"""

from __future__ import annotations

from lmforge.channel import (
    MAX_MESSAGE_BYTES,
    ServiceClient,
    retry_service_config,
)
from lmforge.inference_client import (
    DEFAULT_INFERENCE_ADDRESS,
    INFERENCE_ADDRESS_ENV,
    InferenceClient,
    MIN_LOAD_TIMEOUT,
    SAMPLING_FIELDS,
    backend_name,
    build_generate_request,
    build_sampling_params,
    default_inference_address,
    finish_reason_name,
    parse_backend,
    parse_quantization,
    quantization_name,
    to_chat_input,
)
from lmforge.names import (
    TERMINAL_STATES,
    checkpoint_kind_name,
    dataset_format_name,
    enum_value,
    is_terminal,
    job_state_name,
    parse_checkpoint_kind,
    parse_dataset_format,
    parse_job_state,
    short_name,
)
from lmforge.trainer_client import (
    DEFAULT_ADDRESS,
    TrainerClient,
    load_request_file,
    sha256_file,
    to_start_training_request,
)

__all__ = [
    "DEFAULT_ADDRESS",
    "DEFAULT_INFERENCE_ADDRESS",
    "INFERENCE_ADDRESS_ENV",
    "InferenceClient",
    "MAX_MESSAGE_BYTES",
    "MIN_LOAD_TIMEOUT",
    "SAMPLING_FIELDS",
    "ServiceClient",
    "TERMINAL_STATES",
    "TrainerClient",
    "backend_name",
    "build_generate_request",
    "build_sampling_params",
    "checkpoint_kind_name",
    "dataset_format_name",
    "default_inference_address",
    "enum_value",
    "finish_reason_name",
    "is_terminal",
    "job_state_name",
    "load_request_file",
    "parse_backend",
    "parse_checkpoint_kind",
    "parse_dataset_format",
    "parse_job_state",
    "parse_quantization",
    "quantization_name",
    "retry_service_config",
    "sha256_file",
    "short_name",
    "to_chat_input",
    "to_start_training_request",
]
