"""`TrainerClient`: a thin, typed wrapper around the generated `TrainerService` stub.

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

Every method returns protobuf messages from `lmforge.v1.trainer_pb2` / `common_pb2` and raises
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

from lmforge.v1 import common_pb2, trainer_pb2, trainer_pb2_grpc

DEFAULT_ADDRESS = "127.0.0.1:50051"
MAX_MESSAGE_BYTES = 64 * 1024 * 1024

TERMINAL_STATES = frozenset(
    {trainer_pb2.JOB_STATE_SUCCEEDED, trainer_pb2.JOB_STATE_FAILED, trainer_pb2.JOB_STATE_CANCELLED}
)

# Unary calls are safe to retry on UNAVAILABLE: reads are reads, StartTraining is idempotent on request_id
# (which start_training always fills) and CancelJob on a cancelled job is a no-op. StreamMetrics resumes by
# hand (from the last sequence seen) and UploadDataset is not retried (it streams a whole file).
_RETRIED_METHODS = ("StartTraining", "GetJob", "ListJobs", "CancelJob", "ListCheckpoints", "ListDatasets",
                    "ValidateDataset")
_SERVICE_CONFIG = json.dumps({
    "methodConfig": [{
        "name": [{"service": "lmforge.v1.TrainerService", "method": m} for m in _RETRIED_METHODS],
        "retryPolicy": {
            "maxAttempts": 5,
            "initialBackoff": "0.2s",
            "maxBackoff": "3s",
            "backoffMultiplier": 2,
            "retryableStatusCodes": ["UNAVAILABLE"],
        },
    }]
})


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


class TrainerClient:
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
        self.address = address
        self.timeout = timeout
        self.reconnect_timeout = reconnect_timeout
        self._owns_channel = channel is None
        if channel is None:
            channel = grpc.insecure_channel(
                address,
                options=[
                    ("grpc.max_send_message_length", MAX_MESSAGE_BYTES),
                    ("grpc.max_receive_message_length", MAX_MESSAGE_BYTES),
                    ("grpc.enable_retries", 1),
                    ("grpc.service_config", _SERVICE_CONFIG),
                ],
            )
        self._channel = channel
        self._stub = trainer_pb2_grpc.TrainerServiceStub(channel)

    # -- lifecycle

    def close(self) -> None:
        if self._owns_channel:
            self._channel.close()

    def __enter__(self) -> TrainerClient:
        return self

    def __exit__(self, *exc) -> None:
        self.close()

    def __repr__(self) -> str:
        return f"TrainerClient({self.address!r})"

    # -- jobs

    def start_training(self, request: trainer_pb2.StartTrainingRequest | dict) -> trainer_pb2.Job:
        """Start a job. A dict is parsed with json_format.ParseDict (field names as in the proto).

        An empty request_id is replaced by a fresh uuid4 hex, so the automatic retries on UNAVAILABLE
        never start the job twice. Raises grpc.RpcError (INVALID_ARGUMENT, NOT_FOUND, ...) and
        json_format.ParseError for a malformed dict.
        """
        return self._stub.StartTraining(to_start_training_request(request), timeout=self.timeout)

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
