"""The embedder's Prometheus metrics."""

from __future__ import annotations

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram

REGISTRY = CollectorRegistry()

REQUESTS = Counter(
    "semcache_embedder_requests_total",
    "Embed requests by gRPC status code",
    ["code"],
    registry=REGISTRY,
)
TEXTS = Counter("semcache_embedder_texts_total", "Texts embedded", registry=REGISTRY)
BATCH_TEXTS = Histogram(
    "semcache_embedder_batch_texts",
    "Texts per batch taken from the queue",
    buckets=(1, 2, 4, 8, 16, 32, 64, 128, 256),
    registry=REGISTRY,
)
RUN_SECONDS = Histogram(
    "semcache_embedder_model_run_seconds",
    "Seconds per model run (one padded micro-batch)",
    buckets=(0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5),
    registry=REGISTRY,
)
QUEUED = Gauge("semcache_embedder_queued_texts", "Texts waiting for a batch", registry=REGISTRY)
