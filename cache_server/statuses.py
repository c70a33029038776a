"""The one table from the errors a request can meet to gRPC status codes, with the reason sent
as trailing metadata (see service_runtime.error_reasons), and the one way a call that met one
is answered (unary calls and streams alike)."""

from __future__ import annotations

import logging
import time
from typing import Any

import grpc

from cache_server import metrics
from cache_server.embedder_client import EmbedderRejectedError, EmbedderUnavailableError
from cache_server.entries import EntryNotFoundError, InvalidInputError
from cache_server.store.base import (
    CacheLimitError,
    StoreConflictError,
    StoreFullError,
    StoreUnavailableError,
)
from cache_server.upstream import UpstreamError
from service_runtime.error_reasons import REASON_KEY, ErrorReason

log = logging.getLogger("cache_server.service")
Context = grpc.aio.ServicerContext[Any, Any]

# Each error type a request can meet: the status it becomes, and why (sent as trailing
# metadata, see service_runtime.error_reasons).
_STATUS: list[tuple[type[BaseException], grpc.StatusCode, ErrorReason]] = [
    (InvalidInputError, grpc.StatusCode.INVALID_ARGUMENT, ErrorReason.INVALID_INPUT),
    (EmbedderRejectedError, grpc.StatusCode.INVALID_ARGUMENT, ErrorReason.INVALID_INPUT),
    (EntryNotFoundError, grpc.StatusCode.NOT_FOUND, ErrorReason.NOT_FOUND),
    (EmbedderUnavailableError, grpc.StatusCode.UNAVAILABLE, ErrorReason.EMBEDDER_UNAVAILABLE),
    (UpstreamError, grpc.StatusCode.UNAVAILABLE, ErrorReason.UPSTREAM_FAILED),
    (StoreUnavailableError, grpc.StatusCode.UNAVAILABLE, ErrorReason.STORE_UNAVAILABLE),
    (StoreConflictError, grpc.StatusCode.FAILED_PRECONDITION, ErrorReason.STORE_CONFLICT),
    (CacheLimitError, grpc.StatusCode.RESOURCE_EXHAUSTED, ErrorReason.CACHE_LIMIT),
    (StoreFullError, grpc.StatusCode.RESOURCE_EXHAUSTED, ErrorReason.STORE_FULL),
]


def status_of(exc: BaseException) -> tuple[grpc.StatusCode, ErrorReason]:
    """The status an error becomes, and why; anything unforeseen is INTERNAL."""
    return next(
        ((code, reason) for kind, code, reason in _STATUS if isinstance(exc, kind)),
        (grpc.StatusCode.INTERNAL, ErrorReason.INTERNAL),
    )


async def abort(context: Context, code: grpc.StatusCode, reason: ErrorReason, message: str) -> None:
    await context.abort(code, message, trailing_metadata=((REASON_KEY, reason.value),))


async def abort_failed(method: str, exc: Exception, context: Context, started: float) -> None:
    """Answers a call of `method` that met `exc` with its status and reason, counted and logged
    (an unforeseen error's trace goes to the log, only its type to the caller). Call it from
    the `except` block. `started`: time.perf_counter() when the call began."""
    code, reason = status_of(exc)
    metrics.RPCS.labels(method, code.name).inc()
    if code is grpc.StatusCode.INTERNAL:
        log.exception("%s failed", method)
        message = f"internal error: {type(exc).__name__}"
    else:
        log.info("%s %s in %.1f ms: %s", method, code.name, elapsed_ms(started), exc)
        message = str(exc)
    await abort(context, code, reason, message)


def elapsed_ms(started: float) -> float:
    return (time.perf_counter() - started) * 1e3
