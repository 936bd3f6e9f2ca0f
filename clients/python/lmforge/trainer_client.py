"""`TrainerClient`: the typed client of `lmforge.v1.TrainerService`, and job request files."""

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

from lmforge.channel import ServiceClient, retry_service_config
from lmforge.names import TERMINAL_STATES, parse_checkpoint_kind, parse_dataset_format, parse_job_state
from lmforge.v1 import common_pb2, trainer_pb2, trainer_pb2_grpc

DEFAULT_ADDRESS = "127.0.0.1:50051"
# Unary calls are safe to retry on UNAVAILABLE: reads are reads, StartTraining and Evaluate are idempotent on
# request_id (which start_training and evaluate always fill) and CancelJob on a cancelled job is a no-op.
# StreamMetrics resumes by hand (from the last sequence seen) and UploadDataset is not retried (it streams a
# whole file).
_RETRIED_METHODS = ("StartTraining", "Evaluate", "GetJob", "ListJobs", "CancelJob", "PauseJob", "ListCheckpoints",
                    "ListDatasets", "ValidateDataset", "DescribeDataset")


_SERVICE_CONFIG = retry_service_config("lmforge.v1.TrainerService", _RETRIED_METHODS)


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


class TrainerClient(ServiceClient):
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
        api_key: str | None = None,
    ):
        super().__init__(address, channel, _SERVICE_CONFIG, api_key)
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

    def pause_job(self, job_id: str) -> trainer_pb2.Job:
        """Pause a QUEUED or RUNNING job: a running worker saves its full state at the next step and stops
        (PAUSED, its device slot freed). Returns the job once it stopped. FAILED_PRECONDITION otherwise."""
        return self._stub.PauseJob(trainer_pb2.PauseJobRequest(job_id=job_id), timeout=self.timeout)

    def resume_job(self, job_id: str) -> trainer_pb2.Job:
        """Queue a PAUSED, FAILED or CANCELLED job again as its next attempt, continuing from its last
        full-state checkpoint. FAILED_PRECONDITION for a job that succeeded or is still active. Not
        retried: a second call after a lost answer would find the job active and fail."""
        return self._stub.ResumeJob(trainer_pb2.ResumeJobRequest(job_id=job_id), timeout=self.timeout)

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
        """Block until the job reaches SUCCEEDED, FAILED, CANCELLED or PAUSED and return it."""
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

    def describe_dataset(
        self, dataset_id: str, base_model_id: str, max_seq_length: int, method: str = "sft", epochs: int = 1,
        timeout: float | None = None,
    ) -> trainer_pb2.DatasetStats:
        """The token calculator: a stored dataset's token statistics for `method`, rendered with
        `base_model_id`'s tokenizer and chat template (rows, total and trained tokens, length percentiles and
        histogram, truncation at `max_seq_length`, duplicates, per-language characters per token, and the
        trained tokens over `epochs`). The server streams the whole file, so a large one may need a longer
        `timeout` than the client's default. Raises grpc.RpcError: NOT_FOUND for an unknown dataset or
        model, INVALID_ARGUMENT for a bad method, max_seq_length or epochs."""
        request = trainer_pb2.DescribeDatasetRequest(dataset_id=dataset_id, base_model_id=base_model_id,
                                                     method=method, max_seq_length=max_seq_length, epochs=epochs)
        return self._stub.DescribeDataset(request, timeout=timeout or self.timeout)

    # -- checkpoints

    def list_checkpoints(self, job_id: str = "", kind: Any = 0, base_model_id: str = "") -> list[common_pb2.Checkpoint]:
        """Checkpoints in the store, filtered by job, kind ("base" / "full" / "adapter") and base model."""
        request = trainer_pb2.ListCheckpointsRequest(
            job_id=job_id, kind=parse_checkpoint_kind(kind), base_model_id=base_model_id
        )
        return list(self._stub.ListCheckpoints(request, timeout=self.timeout).checkpoints)
