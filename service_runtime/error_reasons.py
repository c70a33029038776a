"""Why a cache-server call failed, in one word, beside its gRPC status.

The status code says what a caller may do (retry, fix the input); the reason says what failed,
so that the gateway can answer each REST API in its own terms (the LangCache SDK's error set,
the original API's codes) and word its message without repeating internal detail. The cache
server sends the reason as trailing metadata under REASON_KEY on every error it answers; an
error without one did not come from the cache server (it was unreachable, or the call timed out
on the way).
"""

from __future__ import annotations

from enum import StrEnum

REASON_KEY = "semcache-error-reason"
# Beside a refusal that may be retried later (a limit reached): whole seconds to wait.
RETRY_AFTER_KEY = "retry-after"


class ErrorReason(StrEnum):
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
    UNAUTHENTICATED = "unauthenticated"  # UNAUTHENTICATED: no valid API key
    NOT_PERMITTED = "not-permitted"  # PERMISSION_DENIED: the key does not grant this
    RATE_LIMITED = "rate-limited"  # RESOURCE_EXHAUSTED: the client's limits; retry-after
    BUDGET_SPENT = "budget-spent"  # RESOURCE_EXHAUSTED: the key's upstream budget for today


def retry_after_of(trailing_metadata: object) -> str | None:
    """The whole seconds to wait that a refusal's trailing metadata names, if any."""
    for key, value in trailing_metadata or ():  # type: ignore[attr-defined]
        if key == RETRY_AFTER_KEY and isinstance(value, str) and value.isdigit():
            return value
    return None


def reason_of(trailing_metadata: object) -> ErrorReason | None:
    """The reason in a call's trailing metadata (a sequence of key/value pairs), if any."""
    for key, value in trailing_metadata or ():  # type: ignore[attr-defined]
        if key == REASON_KEY:
            try:
                return ErrorReason(value)
            except ValueError:
                return None
    return None
