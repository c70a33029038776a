"""The one table from the errors a request can meet to gRPC status codes, with the reason sent
as trailing metadata (see service_runtime.error_reasons)."""

from __future__ import annotations

import grpc

from cache_server.embedder_client import EmbedderRejectedError, EmbedderUnavailableError
from cache_server.entries import EntryNotFoundError, InvalidInputError
from cache_server.store.base import (
    CacheLimitError,
    StoreConflictError,
    StoreFullError,
    StoreUnavailableError,
)
from cache_server.upstream import UpstreamError
from service_runtime.error_reasons import ErrorReason

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
