"""gRPC statuses as Python exceptions, mapped in one place.

Every failed call raises a subclass of SemcacheError carrying the status code, the server's
message, the reason the cache server gave (trailing metadata `semcache-error-reason`), the
request id the call was sent with, the method, the address of the last try and how many tries
were made. An error without a reason did not come from the cache server itself (it could not be
reached, or the deadline passed on the way).
"""

from __future__ import annotations

from collections.abc import Iterable
from enum import StrEnum
from typing import Protocol

import grpc

REASON_KEY = "semcache-error-reason"


class ErrorReason(StrEnum):
    """What failed, as the cache server says it (the wire values of its `ErrorReason`)."""

    INVALID_INPUT = "invalid-input"  # INVALID_ARGUMENT: the message says what to fix
    NOT_FOUND = "not-found"  # NOT_FOUND: no such entry
    EMBEDDER_UNAVAILABLE = "embedder-unavailable"  # UNAVAILABLE
    UPSTREAM_FAILED = "upstream-failed"  # UNAVAILABLE: the LLM failed or timed out
    STORE_UNAVAILABLE = "store-unavailable"  # UNAVAILABLE: e.g. Redis down or read-only
    STORE_FULL = "store-full"  # RESOURCE_EXHAUSTED: the store is out of memory
    STORE_CONFLICT = "store-conflict"  # FAILED_PRECONDITION: e.g. the model's dimension changed
    CACHE_LIMIT = "cache-limit"  # RESOURCE_EXHAUSTED: one cache more than max_caches
    INTERRUPTED = "interrupted"  # UNAVAILABLE: cut short by a cancellation it shared; retry
    INTERNAL = "internal"  # INTERNAL: a bug; the cache server's log has the trace
    UNAUTHENTICATED = "unauthenticated"  # UNAUTHENTICATED: no valid API key (api_key=)
    NOT_PERMITTED = "not-permitted"  # PERMISSION_DENIED: the key does not grant this
    RATE_LIMITED = "rate-limited"  # RESOURCE_EXHAUSTED: the key's limits; see retry_after_s
    BUDGET_SPENT = "budget-spent"  # RESOURCE_EXHAUSTED: the key's upstream budget for today


class FailedCall(Protocol):
    """What grpc's sync and asyncio errors both offer."""

    def code(self) -> grpc.StatusCode: ...

    def details(self) -> str | None: ...

    def trailing_metadata(self) -> object: ...


class SemcacheError(Exception):
    """A call failed. `code` is the gRPC status; `message` the server's (or gRPC's) words."""

    def __init__(
        self,
        code: grpc.StatusCode,
        message: str,
        *,
        reason: ErrorReason | None = None,
        request_id: str = "",
        method: str = "",
        address: str = "",
        attempts: int = 1,
        retry_after_s: float | None = None,
    ) -> None:
        super().__init__(message)
        self.retry_after_s = retry_after_s  # a limit's refusal: when to try again
        self.code = code
        self.message = message
        self.reason = reason
        self.request_id = request_id
        self.method = method
        self.address = address
        self.attempts = attempts

    def __str__(self) -> str:
        where = f"{self.method} on {self.address}" if self.address else self.method
        reason = f", reason {self.reason.value}" if self.reason else ""
        tries = f", {self.attempts} tries" if self.attempts > 1 else ""
        return (
            f"{self.code.name}: {self.message} ({where}{reason}{tries}, "
            f"request id {self.request_id})"
        )


class InvalidArgument(SemcacheError):
    """The request was refused as it is (INVALID_ARGUMENT, OUT_OF_RANGE): fix, don't retry."""


class NotFound(SemcacheError):
    """No such entry (NOT_FOUND)."""


class FailedPrecondition(SemcacheError):
    """The server's state refuses the call (FAILED_PRECONDITION, ALREADY_EXISTS, ABORTED): e.g.
    a store holding vectors of another dimension, or an embedder without a verifier."""


class ResourceExhausted(SemcacheError):
    """A limit was reached (RESOURCE_EXHAUSTED): the store is full, one cache too many, or the
    embedder's queue is full. Retry later, or not at all for `CACHE_LIMIT`."""


class Unavailable(SemcacheError):
    """No server answered, or one of its dependencies (embedder, upstream LLM, store) is down
    (UNAVAILABLE). Idempotent calls were already retried."""


class DeadlineExceeded(SemcacheError):
    """The call's deadline passed (DEADLINE_EXCEEDED), retries included."""


class Cancelled(SemcacheError):
    """The call was cancelled (CANCELLED)."""


class PermissionDenied(SemcacheError):
    """The server refused the caller (PERMISSION_DENIED)."""


class Unauthenticated(SemcacheError):
    """The server could not authenticate the caller (UNAUTHENTICATED)."""


class Unimplemented(SemcacheError):
    """The server does not offer this method (UNIMPLEMENTED): an older server, or the wrong
    service at this address."""


class InternalError(SemcacheError):
    """A bug or a broken reply (INTERNAL, UNKNOWN, DATA_LOSS); the server's log has more."""


_BY_CODE: dict[grpc.StatusCode, type[SemcacheError]] = {
    grpc.StatusCode.INVALID_ARGUMENT: InvalidArgument,
    grpc.StatusCode.OUT_OF_RANGE: InvalidArgument,
    grpc.StatusCode.NOT_FOUND: NotFound,
    grpc.StatusCode.FAILED_PRECONDITION: FailedPrecondition,
    grpc.StatusCode.ALREADY_EXISTS: FailedPrecondition,
    grpc.StatusCode.ABORTED: FailedPrecondition,
    grpc.StatusCode.RESOURCE_EXHAUSTED: ResourceExhausted,
    grpc.StatusCode.UNAVAILABLE: Unavailable,
    grpc.StatusCode.DEADLINE_EXCEEDED: DeadlineExceeded,
    grpc.StatusCode.CANCELLED: Cancelled,
    grpc.StatusCode.PERMISSION_DENIED: PermissionDenied,
    grpc.StatusCode.UNAUTHENTICATED: Unauthenticated,
    grpc.StatusCode.UNIMPLEMENTED: Unimplemented,
    grpc.StatusCode.INTERNAL: InternalError,
    grpc.StatusCode.UNKNOWN: InternalError,
    grpc.StatusCode.DATA_LOSS: InternalError,
}


def error_class(code: grpc.StatusCode) -> type[SemcacheError]:
    return _BY_CODE.get(code, SemcacheError)


def retry_after_in(trailing_metadata: object) -> float | None:
    """The seconds a refusal asks to wait (trailing metadata `retry-after`), if any."""
    if not isinstance(trailing_metadata, Iterable):
        return None
    for key, value in trailing_metadata:
        if key == "retry-after" and isinstance(value, str) and value.isdigit():
            return float(value)
    return None


def reason_in(trailing_metadata: object) -> ErrorReason | None:
    """The cache server's reason in a call's trailing metadata (key/value pairs), if any."""
    if not isinstance(trailing_metadata, Iterable):
        return None
    for item in trailing_metadata:
        key, value = item
        if key == REASON_KEY:
            try:
                return ErrorReason(value)
            except ValueError:  # a reason newer than this client: the code still says enough
                return None
    return None


def from_failed_call(
    error: FailedCall, *, request_id: str, method: str, address: str, attempts: int
) -> SemcacheError:
    code = error.code()
    return error_class(code)(
        code,
        error.details() or code.name,
        reason=reason_in(error.trailing_metadata()),
        request_id=request_id,
        method=method,
        address=address,
        attempts=attempts,
        retry_after_s=retry_after_in(error.trailing_metadata()),
    )
