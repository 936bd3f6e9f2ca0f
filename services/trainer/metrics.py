"""The trainer's Prometheus metrics (registered on the server's registry; see services/common/metrics.py).

    lmforge_trainer_jobs{state}                        jobs in each state (read from the job database at scrape)
    lmforge_trainer_queue_depth                        jobs waiting for a device slot (QUEUED)
    lmforge_trainer_worker_restarts_total              automatic restarts after a worker died
    lmforge_trainer_job_duration_seconds{method,state} from start (or creation, if it never ran) to the end
    lmforge_trainer_event_ingest_lag_seconds           from a worker writing an event to the server storing it,
                                                       after which every StreamMetrics subscriber has it
    lmforge_trainer_tokens_trained_total               tokens the trainers report (num_tokens), summed over jobs
"""

from __future__ import annotations

import time

from prometheus_client import CollectorRegistry, Counter, Histogram
from prometheus_client.core import GaugeMetricFamily
from prometheus_client.registry import Collector

from services.trainer.jobdb import JobDB, JobState

DURATION_BUCKETS = (10, 30, 60, 120, 300, 600, 1800, 3600, 7200, 14400, 43200, 86400, 259200)
LAG_BUCKETS = (0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5)


class _JobStates(Collector):
    """Jobs by state, counted in the database when Prometheus scrapes (never a stale copy)."""

    def __init__(self, db: JobDB):
        self.db = db

    def collect(self):
        counts = self.db.count_by_state()
        jobs = GaugeMetricFamily("lmforge_trainer_jobs", "jobs in each state", labels=["state"])
        for state in JobState:
            jobs.add_metric([state.value], counts.get(state, 0))
        yield jobs
        yield GaugeMetricFamily("lmforge_trainer_queue_depth", "jobs waiting for a device slot",
                                value=counts.get(JobState.QUEUED, 0))


class TrainerMetrics:
    def __init__(self, registry: CollectorRegistry | None = None):
        self.registry = registry or CollectorRegistry()
        self.worker_restarts = Counter("lmforge_trainer_worker_restarts", "automatic restarts after a worker died",
                                       registry=self.registry)
        self.job_duration = Histogram("lmforge_trainer_job_duration_seconds", "job run time, start to end",
                                      ["method", "state"], buckets=DURATION_BUCKETS, registry=self.registry)
        self.event_ingest_lag = Histogram("lmforge_trainer_event_ingest_lag_seconds",
                                          "seconds from a worker writing an event to the server storing it",
                                          buckets=LAG_BUCKETS, registry=self.registry)
        self.tokens_trained = Counter("lmforge_trainer_tokens_trained", "tokens the trainers reported (num_tokens)",
                                      registry=self.registry)

    def watch_jobs(self, db: JobDB) -> None:
        self.registry.register(_JobStates(db))

    def job_ended(self, method: str, state: JobState, started_at: float, created_at: float) -> None:
        self.job_duration.labels(method, state.value).observe(max(0.0, time.time() - (started_at or created_at)))

    def event_stored(self, written_at: float | None) -> None:
        if written_at:
            self.event_ingest_lag.observe(max(0.0, time.time() - written_at))
