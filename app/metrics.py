"""Prometheus metrics: one registry per app, so tests can build many apps side by side."""
from __future__ import annotations

from typing import Callable

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram
from prometheus_client.core import GaugeMetricFamily

from app.jobs.model import JobState

# Job phases run from tenths of a second (tiny model) to minutes (SVD-XT on a small card).
PHASE_BUCKETS = (0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 20, 30, 60, 120, 300, 600, 1800)


class _JobsByState:
    """Counts jobs by state when scraped, straight from the store (no double bookkeeping)."""

    def __init__(self, count: Callable[[JobState], int]):
        self.count = count

    def collect(self):
        family = GaugeMetricFamily("svd_jobs", "Jobs in the store by state", labels=["state"])
        for state in JobState:
            family.add_metric([state.value], self.count(state))
        yield family
        queued = GaugeMetricFamily("svd_queue_depth", "Jobs waiting for a worker")
        queued.add_metric([], self.count(JobState.QUEUED))
        yield queued


class Metrics:
    def __init__(self):
        self.registry = CollectorRegistry()
        r = self.registry
        self.requests = Counter("svd_http_requests", "HTTP requests",
                                ["route", "method", "status"], registry=r)
        self.request_seconds = Histogram("svd_http_request_duration_seconds",
                                         "HTTP request duration", ["route"], registry=r)
        self.job_phase_seconds = Histogram("svd_job_phase_seconds",
                                           "Time spent per job phase", ["phase"],
                                           buckets=PHASE_BUCKETS, registry=r)
        self.videos = Counter("svd_videos_generated", "Videos generated successfully", registry=r)
        self.jobs_finished = Counter("svd_jobs_finished", "Jobs finished by outcome; "
                                     "started: whether a worker had claimed it",
                                     ["state", "started"], registry=r)
        self.rejected = Counter("svd_requests_rejected", "Requests refused with 429 or 503",
                                ["reason"], registry=r)
        self.worker_restarts = Counter("svd_worker_restarts",
                                       "Worker starts after the first, and jobs re-queued "
                                       "because their worker died", ["kind"], registry=r)
        self.memory_retries = Counter("svd_out_of_memory_retries",
                                      "Generations retried with a lower-memory setting",
                                      registry=r)
        self.webhooks = Counter("svd_webhook_deliveries", "Webhook deliveries by outcome",
                                ["outcome"], registry=r)
        self.gpu_memory = Gauge("svd_gpu_memory_bytes", "GPU memory of the worker's device",
                                ["kind"], registry=r)

    def watch_store(self, count: Callable[[JobState], int]) -> None:
        self.registry.register(_JobsByState(count))
