"""The one table from the errors a request can meet to gRPC status codes, with the reason sent
as trailing metadata (see service_runtime.error_reasons), and the one way a call that met one
is answered (unary calls and streams alike)."""

from __future__ import annotations

import logging
import math
import time
from typing import Any

import grpc

from cache_server import metrics
from cache_server.access import BudgetSpentError, NotPermittedError
from cache_server.embedder_client import EmbedderRejectedError, EmbedderUnavailableError
from cache_server.entries import EntryNotFoundError, InvalidInputError
from cache_server.store.base import (
    CacheLimitError,
    StoreConflictError,
    StoreFullError,
    StoreUnavailableError,
)
from cache_server.upstream import UpstreamError
from service_runtime.error_reasons import REASON_KEY, RETRY_AFTER_KEY, ErrorReason
from service_runtime.logs import request_id

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
    (NotPermittedError, grpc.StatusCode.PERMISSION_DENIED, ErrorReason.NOT_PERMITTED),
    (BudgetSpentError, grpc.StatusCode.RESOURCE_EXHAUSTED, ErrorReason.BUDGET_SPENT),
]


# Failures of what the cache server depends on, told in fixed words: their own messages name
# internal addresses and carry the text of the client library that met them (the log keeps
# them whole).
_DEPENDENCY_DETAIL: dict[ErrorReason, str] = {
    ErrorReason.EMBEDDER_UNAVAILABLE: "embedder unavailable; retry shortly",
    ErrorReason.STORE_UNAVAILABLE: "the cache store is unavailable; retry shortly",
    ErrorReason.STORE_FULL: "the cache store is out of memory; nothing was stored",
}


def status_of(exc: BaseException) -> tuple[grpc.StatusCode, ErrorReason]:
    """The status an error becomes, and why; anything unforeseen is INTERNAL."""
    return next(
        ((code, reason) for kind, code, reason in _STATUS if isinstance(exc, kind)),
        (grpc.StatusCode.INTERNAL, ErrorReason.INTERNAL),
    )


async def abort(
    context: Context,
    code: grpc.StatusCode,
    reason: ErrorReason | None,
    message: str,
    retry_after_s: float | None = None,
) -> None:
    """Every gRPC error the cache server answers goes through here: `message` is what the
    caller is told, so it never holds an address, an exception's text or a trace."""
    # What the caller was told, for operators (and the scan in tests/processes.py).
    log.info("error answered: %s %s", code.name, message.replace("\n", "\\n"))
    metadata: tuple[tuple[str, str], ...] = ((REASON_KEY, reason.value),) if reason else ()
    if retry_after_s is not None:
        metadata += ((RETRY_AFTER_KEY, str(max(1, math.ceil(retry_after_s)))),)
    await context.abort(code, message, trailing_metadata=metadata)


async def abort_failed(method: str, exc: Exception, context: Context, started: float) -> None:
    """Answers a call of `method` that met `exc` with its status and reason, counted and logged
    (an unforeseen error's trace goes to the log, the request id to the caller; a foreseen
    one's message to the caller, or fixed words for a dependency's failure, and its cause
    too to the log). Call it from the `except` block. `started`: time.perf_counter() when the
    call began."""
    code, reason = status_of(exc)
    metrics.RPCS.labels(method, code.name).inc()
    metrics.ERRORS.labels(method, reason.value).inc()
    if code is grpc.StatusCode.INTERNAL:
        log.exception("%s failed", method)
        message = f"internal error (request id {request_id.get()})"
    else:
        # The upstream refusing the operator's key, or failing, is the operator's to see.
        level = logging.WARNING if isinstance(exc, UpstreamError) else logging.INFO
        took = elapsed_ms(started)
        log.log(level, "%s %s in %.1f ms: %s", method, code.name, took, _described(exc))
        message = str(exc)
        if reason in _DEPENDENCY_DETAIL:
            why = f"the cache server's log says why: request id {request_id.get()}"
            message = f"{_DEPENDENCY_DETAIL[reason]} ({why})"
    await abort(context, code, reason, message, getattr(exc, "retry_after_s", None))


def _described(exc: Exception) -> str:
    """The error for the log: its message and the cause it was raised from, which may name
    addresses the caller is not told."""
    if isinstance(exc, UpstreamError):
        return exc.detail
    cause = exc.__cause__
    return f"{exc} ({type(cause).__name__}: {cause})" if cause is not None else str(exc)


def elapsed_ms(started: float) -> float:
    return (time.perf_counter() - started) * 1e3
