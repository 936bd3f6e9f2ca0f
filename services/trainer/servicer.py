"""TrainerService servicer: translates proto <-> domain and nothing else (DESIGN.md §5.5).

Its collaborators (job manager, store, dataset registry) are injected; it never imports torch.
"""

from __future__ import annotations

import base64
import json

from lmforge.v1 import trainer_pb2, trainer_pb2_grpc
from services.common.convert import entry_kind_from_proto, manifest_to_proto
from services.common.errors import AlreadyExists, InvalidArgument, Violation
from services.common.grpc_server import translate_errors
from services.common.store import CheckpointStore
from services.trainer import admission, convert, methods
from services.trainer.data import validate_file
from services.trainer.datasets import DatasetRegistry
from services.trainer.describe import describe_dataset
from services.trainer.jobs import JobManager

MAX_PAGE_SIZE = 500


def _encode_page_token(created_at: float, job_id: str) -> str:
    return base64.urlsafe_b64encode(json.dumps([created_at, job_id]).encode()).decode()


def _decode_page_token(token: str) -> tuple[float, str]:
    try:
        created_at, job_id = json.loads(base64.urlsafe_b64decode(token.encode()))
        return float(created_at), str(job_id)
    except (ValueError, TypeError) as exc:
        raise InvalidArgument("page_token: not a token this server issued",
                              [Violation(0, "page_token", "malformed", "pass next_page_token back unchanged")]) from exc


class TrainerServicer(trainer_pb2_grpc.TrainerServiceServicer):
    def __init__(self, jobs: JobManager, store: CheckpointStore, datasets: DatasetRegistry, *, gpu: bool):
        self.jobs = jobs
        self.store = store
        self.datasets = datasets
        self.gpu = gpu

    @translate_errors
    def StartTraining(self, request, context):
        return self._submit(request, lambda: convert.spec_from_request(request, gpu=self.gpu))

    @translate_errors
    def Evaluate(self, request, context):
        return self._submit(request, lambda: convert.evaluate_spec_from_request(request))

    def _submit(self, request, make_spec) -> trainer_pb2.Job:
        """A new job from a request (or the one an earlier call with its request_id made): converted,
        admitted against the store and datasets, then handed to the job manager."""
        if request.request_id:
            existing = self.jobs.db.job_by_request_id(request.request_id)
            if existing:
                if type(request).FromString(existing.request_blob) != request:
                    raise AlreadyExists(
                        f"request_id: {request.request_id!r} was already used by job {existing.id} for a different "
                        "request; send the same request to get that job back, or use a new request_id")
                return convert.job_to_proto(existing)
        spec = admission.admit(make_spec(), self.store, self.datasets)
        job = self.jobs.submit(spec, request_id=request.request_id, display_name=request.display_name,
                               request_blob=request.SerializeToString())
        return convert.job_to_proto(job)

    @translate_errors
    def GetJob(self, request, context):
        return convert.job_to_proto(self.jobs.get(request.job_id))

    @translate_errors
    def ListJobs(self, request, context):
        if request.page_size < 0:
            raise InvalidArgument("page_size: must be >= 0", [Violation(0, "page_size", f"{request.page_size} is negative",
                                                                       f"ask for 1 to {MAX_PAGE_SIZE} jobs, or 0 for 50")])
        page_size = min(request.page_size or 50, MAX_PAGE_SIZE)
        states = [convert.job_state_from_proto(s) for s in request.states]
        before = _decode_page_token(request.page_token) if request.page_token else None
        jobs = self.jobs.list(states=states, limit=page_size + 1, before=before)
        page, more = jobs[:page_size], len(jobs) > page_size
        token = _encode_page_token(page[-1].created_at, page[-1].id) if more else ""
        return trainer_pb2.ListJobsResponse(jobs=[convert.job_to_proto(j) for j in page], next_page_token=token)

    @translate_errors
    def CancelJob(self, request, context):
        return convert.job_to_proto(self.jobs.cancel(request.job_id))

    @translate_errors
    def PauseJob(self, request, context):
        return convert.job_to_proto(self.jobs.pause(request.job_id))

    @translate_errors
    def ResumeJob(self, request, context):
        return convert.job_to_proto(self.jobs.resume(request.job_id))

    @translate_errors
    def StreamMetrics(self, request, context):
        if request.after_sequence < 0:
            raise InvalidArgument("after_sequence: must be >= 0")
        for event in self.jobs.events(request.job_id, request.after_sequence, request.follow,
                                      is_active=context.is_active):
            yield convert.event_to_proto(event)

    @translate_errors
    def ListCheckpoints(self, request, context):
        manifests = self.store.list(kind=entry_kind_from_proto(request.kind), job_id=request.job_id,
                                    base_model_id=request.base_model_id)
        return trainer_pb2.ListCheckpointsResponse(checkpoints=[manifest_to_proto(m) for m in manifests])

    @translate_errors
    def UploadDataset(self, request_iterator, context):
        first = next(request_iterator, None)
        if first is None or first.WhichOneof("part") != "header":
            raise InvalidArgument("the first UploadDatasetRequest must carry the header",
                                  [Violation(0, "header", "missing", "send {header: {name: 'train.jsonl'}} first")])
        header = first.header

        def chunks():
            for part in request_iterator:
                if part.WhichOneof("part") != "chunk":
                    raise InvalidArgument("only the first message may carry a header",
                                          [Violation(0, "header", "sent twice", "send the header once, then chunks")])
                yield part.chunk

        stored = self.datasets.upload(header.name, convert.file_format_from_proto(header.file_format), chunks(),
                                      header.sha256)
        return convert.dataset_to_proto(stored)

    @translate_errors
    def ListDatasets(self, request, context):
        return trainer_pb2.ListDatasetsResponse(datasets=[convert.dataset_to_proto(d) for d in self.datasets.list()])

    @translate_errors
    def ValidateDataset(self, request, context):
        if request.max_violations < 0:
            raise InvalidArgument("max_violations: must be >= 0", [Violation(
                0, "max_violations", f"{request.max_violations} is negative", "ask for 1 or more, or 0 for 1000")])
        stored = self.datasets.get(request.dataset_id)
        method = request.method or "sft"
        result = validate_file(stored.path, stored.file_format, methods.formats_for(method),
                               convert.dataset_format_from_proto(request.format),
                               max_violations=request.max_violations or 1000, method=method)
        return convert.validation_to_proto(result)

    @translate_errors
    def DescribeDataset(self, request, context):
        stats = describe_dataset(self.store, self.datasets, dataset_id=request.dataset_id,
                                 base_model_id=request.base_model_id, method=request.method,
                                 max_seq_length=request.max_seq_length, epochs=request.epochs)
        return convert.dataset_stats_to_proto(stats, dataset_id=request.dataset_id,
                                              base_model_id=request.base_model_id, method=request.method or "sft")
