"""Prometheus metrics of the gateway (served at /metrics)."""

from __future__ import annotations

from prometheus_client import CollectorRegistry, Counter, Histogram

REGISTRY = CollectorRegistry()

REQUESTS = Counter(
    "semcache_gateway_requests_total",
    "HTTP requests by route template, method and status code",
    ["route", "method", "status"],
    registry=REGISTRY,
)
LATENCY = Histogram(
    "semcache_gateway_request_seconds",
    "HTTP request latency by route template, seconds",
    ["route", "method"],
    buckets=(0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10),
    registry=REGISTRY,
)
LOOKUPS = Counter(
    "semcache_gateway_lookups_total",
    "Cache look-ups answered through the gateway, by outcome (hit or miss)",
    ["outcome"],
    registry=REGISTRY,
)
