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
"""

from __future__ import annotations

import hashlib
import json
import os
import time
import uuid
from collections.abc import Iterable, Iterator
from pathlib import Path
from typing import Any

import grpc
from google.protobuf import json_format

from lmforge.v1 import common_pb2, inference_pb2, inference_pb2_grpc, trainer_pb2, trainer_pb2_grpc

DEFAULT_ADDRESS = "127.0.0.1:50051"
MAX_MESSAGE_BYTES = 64 * 1024 * 1024

TERMINAL_STATES = frozenset(
    {trainer_pb2.JOB_STATE_SUCCEEDED, trainer_pb2.JOB_STATE_FAILED, trainer_pb2.JOB_STATE_CANCELLED}
)

# Unary calls are safe to retry on UNAVAILABLE: reads are reads, StartTraining and Evaluate are idempotent on
# request_id (which start_training and evaluate always fill) and CancelJob on a cancelled job is a no-op.
# StreamMetrics resumes by hand (from the last sequence seen) and UploadDataset is not retried (it streams a
# whole file).
_RETRIED_METHODS = ("StartTraining", "Evaluate", "GetJob", "ListJobs", "CancelJob", "ListCheckpoints",
                    "ListDatasets", "ValidateDataset")


def retry_service_config(service: str, methods: Iterable[str]) -> str:
    """A gRPC service config retrying `methods` of `service` on UNAVAILABLE with exponential backoff."""
    return json.dumps({
        "methodConfig": [{
            "name": [{"service": service, "method": m} for m in methods],
            "retryPolicy": {
                "maxAttempts": 5,
                "initialBackoff": "0.2s",
                "maxBackoff": "3s",
                "backoffMultiplier": 2,
                "retryableStatusCodes": ["UNAVAILABLE"],
            },
        }]
    })


_SERVICE_CONFIG = retry_service_config("lmforge.v1.TrainerService", _RETRIED_METHODS)


# ----------------------------------------------------------------------------------------------- enums


def _enum_value(enum_type, value: Any, prefixes: tuple[str, ...], aliases: dict[str, str] | None = None) -> int:
    """An enum value from an int, a full name ("JOB_STATE_RUNNING") or a short one ("running")."""
    if isinstance(value, int):
        return value
    text = str(value).strip()
    if text.isdigit():
        return int(text)
    key = text.upper().replace("-", "_")
    if aliases and key.lower() in aliases:
        key = aliases[key.lower()]
    for candidate in (key, *(p + key for p in prefixes)):
        if candidate in enum_type.keys():
            return enum_type.Value(candidate)
    names = sorted({_short_name(n, prefixes) for n in enum_type.keys()} - {"UNSPECIFIED"})
    raise ValueError(f"unknown value {value!r}; expected one of: {', '.join(n.lower() for n in names)}")


def _short_name(name: str, prefixes: tuple[str, ...]) -> str:
    for p in prefixes:
        if name.startswith(p):
            return name[len(p):]
    return name


def parse_job_state(value: Any) -> int:
    """JobState from 3, "JOB_STATE_RUNNING" or "running"."""
    return _enum_value(trainer_pb2.JobState, value, ("JOB_STATE_",))


def job_state_name(state: int) -> str:
    """Short name of a JobState: "RUNNING", "SUCCEEDED", ... ("UNSPECIFIED" for 0)."""
    try:
        return _short_name(trainer_pb2.JobState.Name(state), ("JOB_STATE_",))
    except ValueError:
        return str(state)


def parse_dataset_format(value: Any) -> int:
    """DatasetFormat from 1, "DATASET_FORMAT_MESSAGES", "messages", "prompt-completion" or "auto"."""
    return _enum_value(trainer_pb2.DatasetFormat, value, ("DATASET_FORMAT_",))


def dataset_format_name(fmt: int) -> str:
    try:
        return _short_name(trainer_pb2.DatasetFormat.Name(fmt), ("DATASET_FORMAT_",))
    except ValueError:
        return str(fmt)


_KIND_ALIASES = {"base": "BASE_MODEL", "full": "FULL_CHECKPOINT", "adapter": "ADAPTER", "any": "UNSPECIFIED",
                 "": "UNSPECIFIED"}


def parse_checkpoint_kind(value: Any) -> int:
    """CheckpointKind from 3, "ADAPTER", "adapter", "base" or "full" ("" / "any" = 0, no filter)."""
    return _enum_value(common_pb2.CheckpointKind, value, ("CHECKPOINT_KIND_",), _KIND_ALIASES)


def checkpoint_kind_name(kind: int) -> str:
    """"base", "full" or "adapter" ("-" when unspecified)."""
    return {common_pb2.BASE_MODEL: "base", common_pb2.FULL_CHECKPOINT: "full",
            common_pb2.ADAPTER: "adapter"}.get(kind, "-")


def is_terminal(state: Any) -> bool:
    """True for SUCCEEDED, FAILED and CANCELLED (accepts the enum int or a name like "succeeded")."""
    return parse_job_state(state) in TERMINAL_STATES


# ------------------------------------------------------------------------------------------ request files


def load_request_file(path: str | os.PathLike) -> dict:
    """Read a StartTrainingRequest (or any request) written as YAML or JSON into a plain dict.

    Field names mirror the proto exactly (snake_case; protobuf's camelCase JSON names also work), enums are
    written by name. Raises OSError if the file cannot be read and ValueError if it is not a mapping.
    """
    import yaml  # local: keeps `import lmforge` cheap

    path = Path(path)
    text = path.read_text(encoding="utf-8")
    data = json.loads(text) if path.suffix.lower() == ".json" else yaml.safe_load(text)
    if data is None:
        return {}
    if not isinstance(data, dict):
        raise ValueError(f"{path}: expected a mapping of request fields at the top level, got {type(data).__name__}")
    return data


def to_start_training_request(request: trainer_pb2.StartTrainingRequest | dict) -> trainer_pb2.StartTrainingRequest:
    """A StartTrainingRequest from a message (copied) or a dict (json_format.ParseDict), request_id filled.

    Raises google.protobuf.json_format.ParseError for unknown fields or values of the wrong type.
    """
    if isinstance(request, trainer_pb2.StartTrainingRequest):
        message = trainer_pb2.StartTrainingRequest()
        message.CopyFrom(request)
    else:
        message = json_format.ParseDict(dict(request), trainer_pb2.StartTrainingRequest())
    if not message.request_id:
        message.request_id = uuid.uuid4().hex
    return message


def sha256_file(path: str | os.PathLike, chunk_size: int = 1 << 20) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        while chunk := f.read(chunk_size):
            digest.update(chunk)
    return digest.hexdigest()


# ---------------------------------------------------------------------------------------------- client


class _ServiceClient:
    """Channel set-up and lifecycle shared by the service clients (context manager, `close()`).

    A given `channel` is used as is and not closed by `close()`; otherwise an insecure channel to
    `address` is opened with our message limits and the service config's retry policy.
    """

    def __init__(self, address: str, channel: grpc.Channel | None, service_config: str):
        self.address = address
        self._owns_channel = channel is None
        self._channel = channel or grpc.insecure_channel(
            address,
            options=[
                ("grpc.max_send_message_length", MAX_MESSAGE_BYTES),
                ("grpc.max_receive_message_length", MAX_MESSAGE_BYTES),
                ("grpc.enable_retries", 1),
                ("grpc.service_config", service_config),
            ],
        )

    def close(self) -> None:
        if self._owns_channel:
            self._channel.close()

    def __enter__(self):
        return self

    def __exit__(self, *exc) -> None:
        self.close()

    def __repr__(self) -> str:
        return f"{type(self).__name__}({self.address!r})"


class TrainerClient(_ServiceClient):
    """Client of `lmforge.v1.TrainerService`. Use as a context manager, or call `close()`.

    `channel`: an existing grpc.Channel to use (not closed by `close()`); otherwise an insecure channel
    to `address` is opened, with retries on UNAVAILABLE for the unary calls. `timeout`: deadline in
    seconds of each unary call. `reconnect_timeout`: how long `stream_metrics` keeps trying to reconnect.
    """

    def __init__(
        self,
        address: str = DEFAULT_ADDRESS,
        *,
        channel: grpc.Channel | None = None,
        timeout: float = 30.0,
        reconnect_timeout: float = 30.0,
    ):
        super().__init__(address, channel, _SERVICE_CONFIG)
        self.timeout = timeout
        self.reconnect_timeout = reconnect_timeout
        self._stub = trainer_pb2_grpc.TrainerServiceStub(self._channel)

    # -- jobs

    def start_training(self, request: trainer_pb2.StartTrainingRequest | dict) -> trainer_pb2.Job:
        """Start a job. A dict is parsed with json_format.ParseDict (field names as in the proto).

        An empty request_id is replaced by a fresh uuid4 hex, so the automatic retries on UNAVAILABLE
        never start the job twice. Raises grpc.RpcError (INVALID_ARGUMENT, NOT_FOUND, ...) and
        json_format.ParseError for a malformed dict.
        """
        return self._stub.StartTraining(to_start_training_request(request), timeout=self.timeout)

    def evaluate(
        self,
        model_id: str,
        dataset_id: str,
        *,
        adapter_id: str = "",
        metrics: Iterable[str] = (),
        max_new_tokens: int = 0,
        max_samples: int = 0,
        batch_size: int = 0,
        format: Any = 0,
        display_name: str = "",
        labels: dict[str, str] | None = None,
        request_id: str | None = None,
    ) -> trainer_pb2.Job:
        """Start an Evaluate job: score a model (or `adapter_id` on it) from the store on a dataset.

        `metrics`: any of perplexity, exact_match, accuracy, f1, macro_f1, bleu, rouge (empty: perplexity for
        text rows, exact_match + f1 + bleu + rouge for answers). Zero means the server default for
        max_new_tokens (128), batch_size (8) and max_samples (all rows); `format` is a DatasetFormat
        (0 / "auto" = detect). Follow the job like a training job (`wait`, `stream_metrics`); its results
        land in the entry's `Checkpoint.evaluations` (`list_checkpoints`). A missing request_id becomes a
        fresh uuid4 hex, so retries never start it twice. Raises grpc.RpcError (INVALID_ARGUMENT for an
        unknown metric, NOT_FOUND, FAILED_PRECONDITION for an adapter of another model, ...).
        """
        request = trainer_pb2.EvaluateRequest(
            request_id=request_id or uuid.uuid4().hex,
            display_name=display_name,
            model_id=model_id,
            adapter_id=adapter_id or "",
            dataset_id=dataset_id,
            format=parse_dataset_format(format),
            metrics=list(metrics),
            max_new_tokens=max_new_tokens,
            max_samples=max_samples,
            batch_size=batch_size,
            labels=labels or {},
        )
        return self._stub.Evaluate(request, timeout=self.timeout)

    def get_job(self, job_id: str) -> trainer_pb2.Job:
        return self._stub.GetJob(trainer_pb2.GetJobRequest(job_id=job_id), timeout=self.timeout)

    def list_jobs(self, states: Iterable[Any] | None = None, page_size: int = 50) -> Iterator[trainer_pb2.Job]:
        """Every job (newest first), following next_page_token; `states` filters ("running", 3, ...)."""
        request = trainer_pb2.ListJobsRequest(
            page_size=page_size, states=[parse_job_state(s) for s in (states or [])]
        )
        while True:
            response = self._stub.ListJobs(request, timeout=self.timeout)
            yield from response.jobs
            if not response.next_page_token:
                return
            request.page_token = response.next_page_token

    def cancel_job(self, job_id: str) -> trainer_pb2.Job:
        return self._stub.CancelJob(trainer_pb2.CancelJobRequest(job_id=job_id), timeout=self.timeout)

    def stream_metrics(
        self,
        job_id: str,
        after_sequence: int = 0,
        follow: bool = True,
        reconnect: bool = True,
    ) -> Iterator[trainer_pb2.TrainingEvent]:
        """The job's events with sequence > after_sequence, in order, each exactly once.

        follow=False replays what exists and ends; follow=True ends after the terminal state event. When
        the stream breaks with UNAVAILABLE (server restart, network) and `reconnect` is true, it
        reconnects with exponential backoff for up to `reconnect_timeout` seconds from the last sequence
        seen, dropping any event it already yielded. Raises grpc.RpcError (NOT_FOUND, or UNAVAILABLE once
        reconnecting gives up). Closing the iterator cancels the call.
        """
        last = after_sequence
        give_up_at: float | None = None  # set at the first failure, cleared by the next event
        delay = 0.2
        while True:
            call = self._stub.StreamMetrics(
                trainer_pb2.StreamMetricsRequest(job_id=job_id, after_sequence=last, follow=follow),
                timeout=None if follow else self.timeout,
            )
            failure: grpc.RpcError | None = None
            try:
                saw_terminal = False
                for event in call:
                    if event.sequence <= last:  # already yielded before a reconnect
                        continue
                    last = event.sequence
                    give_up_at, delay = None, 0.2
                    if event.WhichOneof("payload") == "state_change" and event.state_change.state in TERMINAL_STATES:
                        saw_terminal = True
                    yield event
                if not follow or saw_terminal or not reconnect:
                    return
                # A follow stream that ended cleanly before a terminal state: either the terminal event came
                # at or before after_sequence (the job was already over), or the server went away gracefully.
                job = self.get_job(job_id)
                if job.state in TERMINAL_STATES and job.last_sequence <= last:
                    return
            except grpc.RpcError as err:
                if not reconnect or err.code() != grpc.StatusCode.UNAVAILABLE:
                    raise
                failure = err
            finally:
                call.cancel()  # no-op when finished; stops the server side when the caller stops early
            now = time.monotonic()
            if give_up_at is None:
                give_up_at = now + self.reconnect_timeout
            if now >= give_up_at:
                if failure is not None:
                    raise failure
                raise RuntimeError(
                    f"metrics stream of job {job_id} keeps ending before the job finished (last sequence {last})"
                )
            time.sleep(min(delay, give_up_at - now))
            delay = min(delay * 2, 5.0)

    def wait(self, job_id: str) -> trainer_pb2.Job:
        """Block until the job reaches SUCCEEDED, FAILED or CANCELLED and return its final state."""
        for _ in self.stream_metrics(job_id, follow=True):
            pass
        job = self.get_job(job_id)
        while job.state not in TERMINAL_STATES:  # only if the stream ended early; should not happen
            time.sleep(1.0)
            job = self.get_job(job_id)
        return job

    # -- datasets

    def upload_dataset(
        self, path: str | os.PathLike, name: str | None = None, chunk_size: int = 1 << 20
    ) -> trainer_pb2.Dataset:
        """Upload a local JSONL / JSON / Parquet / CSV file; returns the stored Dataset.

        The sha256 is computed in a first pass so the header carries it and the server can verify the
        bytes (DATA_LOSS on mismatch). `name` defaults to the file name, whose extension gives the file
        format. Uploading the same bytes again returns the same dataset id.
        """
        path = Path(path)
        digest = sha256_file(path, chunk_size)
        header = trainer_pb2.DatasetUploadHeader(name=name or path.name, sha256=digest)

        def parts() -> Iterator[trainer_pb2.UploadDatasetRequest]:
            yield trainer_pb2.UploadDatasetRequest(header=header)
            with open(path, "rb") as f:
                while chunk := f.read(chunk_size):
                    yield trainer_pb2.UploadDatasetRequest(chunk=chunk)

        size = path.stat().st_size
        # Deadline grows with the file: the unary timeout plus 1 s per 8 MiB.
        return self._stub.UploadDataset(parts(), timeout=self.timeout + size / (8 << 20))

    def list_datasets(self) -> list[trainer_pb2.Dataset]:
        return list(self._stub.ListDatasets(trainer_pb2.ListDatasetsRequest(), timeout=self.timeout).datasets)

    def validate_dataset(
        self, dataset_id: str, method: str = "sft", format: Any = 0, max_violations: int = 1000
    ) -> trainer_pb2.ValidationReport:
        """Check every row of a stored dataset; `format` is a DatasetFormat (0 / "auto" = detect)."""
        request = trainer_pb2.ValidateDatasetRequest(
            dataset_id=dataset_id,
            method=method,
            format=parse_dataset_format(format),
            max_violations=max_violations,
        )
        return self._stub.ValidateDataset(request, timeout=self.timeout)

    # -- checkpoints

    def list_checkpoints(self, job_id: str = "", kind: Any = 0, base_model_id: str = "") -> list[common_pb2.Checkpoint]:
        """Checkpoints in the store, filtered by job, kind ("base" / "full" / "adapter") and base model."""
        request = trainer_pb2.ListCheckpointsRequest(
            job_id=job_id, kind=parse_checkpoint_kind(kind), base_model_id=base_model_id
        )
        return list(self._stub.ListCheckpoints(request, timeout=self.timeout).checkpoints)


# ------------------------------------------------------------------------------------- inference client

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
    return _enum_value(common_pb2.QuantizationType, value, ("QUANTIZATION_", "QUANTIZATION_TYPE_"), _QUANT_ALIASES)


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
    return _enum_value(inference_pb2.Backend, value, ("BACKEND_",), {"": "UNSPECIFIED", "hf": "TRANSFORMERS"})


def backend_name(backend: int) -> str:
    """"transformers" or "vllm" (UNSPECIFIED is transformers)."""
    return "vllm" if backend == inference_pb2.BACKEND_VLLM else "transformers"


def finish_reason_name(reason: int) -> str:
    """"eos", "length", "stop", "cancelled", "deadline"; "-" when unspecified."""
    if not reason:
        return "-"
    try:
        return _short_name(inference_pb2.FinishReason.Name(reason), ("FINISH_REASON_",)).lower()
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


class InferenceClient(_ServiceClient):
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
    ):
        super().__init__(address or default_inference_address(), channel, _INFERENCE_SERVICE_CONFIG)
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
