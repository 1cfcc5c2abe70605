"""The server's Prometheus metrics, in a registry of their own (two apps in one process do not collide)."""

from __future__ import annotations

from prometheus_client import CONTENT_TYPE_LATEST, CollectorRegistry, Counter, Gauge, Histogram, generate_latest

LATENCY_BUCKETS = (0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0)
BATCH_BUCKETS = (1, 2, 4, 8, 16, 32, 64, 128, 256, 512)


class Metrics:
    """Requests, errors, batch sizes, queue depth and latencies of one server."""

    content_type = CONTENT_TYPE_LATEST

    def __init__(self) -> None:
        r = self.registry = CollectorRegistry()
        self.requests = Counter("mfdeploy_requests", "HTTP requests answered, by endpoint and status code",
                                ["endpoint", "status"], registry=r)
        self.errors = Counter("mfdeploy_request_errors", "Requests answered with an error, by endpoint and kind",
                              ["endpoint", "kind"], registry=r)
        self.latency = Histogram("mfdeploy_request_latency_seconds", "Time from request to response, by endpoint",
                                 ["endpoint"], buckets=LATENCY_BUCKETS, registry=r)
        self.batch_size = Histogram("mfdeploy_batch_size", "Items per model call, by tower", ["tower"],
                                    buckets=BATCH_BUCKETS, registry=r)
        self.inference = Histogram("mfdeploy_inference_seconds", "Preprocessing + model time per call, by tower",
                                   ["tower"], buckets=LATENCY_BUCKETS, registry=r)
        self.queue_depth = Gauge("mfdeploy_queue_depth", "Items waiting for a model call, by tower", ["tower"],
                                 registry=r)
        self.queue_full = Counter("mfdeploy_queue_full", "Requests refused with 503 because the queue was full",
                                  ["tower"], registry=r)
        self.ready = Gauge("mfdeploy_ready", "1 once the towers are loaded", registry=r)

    def render(self) -> bytes:
        """The Prometheus text exposition of every metric."""
        return generate_latest(self.registry)


__all__ = ["Metrics"]
