"""Prometheus metrics endpoint for the gRPC services (the gateway serves its own /metrics)."""

from __future__ import annotations

import logging

from prometheus_client import CollectorRegistry, start_http_server

log = logging.getLogger(__name__)


def serve_metrics(registry: CollectorRegistry, host: str, port: int | None) -> None:
    """Serves `registry` at http://host:port/metrics from a daemon thread (port None: off)."""
    if port is None:
        return
    start_http_server(port, addr=host, registry=registry)
    log.info("metrics on http://%s:%d/metrics", host, port)
