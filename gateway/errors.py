"""From a failed cache-server call (or the gateway's own refusal) to an HTTP problem.

Error bodies follow RFC 7807 (`type`, `title`, `status`, `detail`, `instance`), served as
`application/json`. Each REST API answers in its own terms:

- the original API (`/query`, `/cache/stats`, ...): statuses by gRPC code, as documented
  (400, 404, 409, 429, 503, 504, ...);
- the LangCache-compatible API (`/v1/...`): only the statuses and `type` URIs that the
  official `langcache` SDK models (400, 401, 403, 404, 413, 424, 429, 500), so that it raises
  its own typed errors. A dependency that is down (embedder, LLM, store, the cache server
  itself) is 424 `/errors/resource-unavailable`; a store out of memory 424
  `/errors/database-out-of-memory`; one cache more than `max_caches` 403
  `/errors/insufficient-permissions` (a deployment limit, not a rate limit: retrying is
  pointless).

Messages about the caller's input pass through; failures of the services behind the gateway
get a fixed wording and never name internal addresses: the full message is logged with the
request id instead.
"""

from __future__ import annotations

import logging
from http import HTTPStatus

import grpc
from fastapi import Request
from fastapi.responses import JSONResponse

from gateway import openai_wire
from service_runtime.error_reasons import ErrorReason, reason_of, retry_after_of
from service_runtime.logs import request_id

log = logging.getLogger("gateway")

LANGCACHE_PREFIX = "/v1/"

GRPC_TO_HTTP: dict[grpc.StatusCode, int] = {
    grpc.StatusCode.INVALID_ARGUMENT: 400,
    grpc.StatusCode.OUT_OF_RANGE: 400,
    grpc.StatusCode.NOT_FOUND: 404,
    grpc.StatusCode.ALREADY_EXISTS: 409,
    grpc.StatusCode.FAILED_PRECONDITION: 409,
    grpc.StatusCode.RESOURCE_EXHAUSTED: 429,
    grpc.StatusCode.UNAVAILABLE: 503,
    grpc.StatusCode.DEADLINE_EXCEEDED: 504,
    # The gateway's own call cut short, or its credentials refused by the cache server: a
    # fault behind the gateway, not the client's.
    grpc.StatusCode.CANCELLED: 503,
    grpc.StatusCode.UNAUTHENTICATED: 503,
    grpc.StatusCode.PERMISSION_DENIED: 503,
}

PROBLEM_TYPES: dict[int, str] = {
    400: "/errors/invalid-data",
    401: "/errors/authentication-failed",
    403: "/errors/insufficient-permissions",
    404: "/errors/resource-not-found",
    405: "/errors/method-not-allowed",
    409: "/errors/conflict",
    413: "/errors/payload-too-large",
    415: "/errors/unsupported-media-type",
    422: "/errors/invalid-data",
    424: "/errors/resource-unavailable",
    429: "/errors/too-many-requests",
    500: "/errors/unexpected-error",
    503: "/errors/service-unavailable",
    504: "/errors/upstream-timeout",
}
OUT_OF_MEMORY_TYPE = "/errors/database-out-of-memory"
_OPENAI_CODES = {
    401: "invalid_api_key",
    403: "permission_denied",
    413: "request_too_large",
    415: "unsupported_media_type",
    422: "invalid_request",
    429: "rate_limit_exceeded",
    503: "service_unavailable",
    504: "timeout",
}

# What failed behind the gateway, in words fit for a client.
_SAFE_DETAIL: dict[ErrorReason | None, str] = {
    ErrorReason.EMBEDDER_UNAVAILABLE: "the embedding service is unavailable; retry shortly",
    ErrorReason.UPSTREAM_FAILED: "the upstream LLM failed or timed out; nothing was stored",
    ErrorReason.STORE_UNAVAILABLE: "the cache store is unavailable; retry shortly",
    ErrorReason.STORE_FULL: "the cache store is out of memory; nothing was stored",
    ErrorReason.INTERRUPTED: "the request was interrupted; retry",
    ErrorReason.INTERNAL: "internal error in the cache server",
    None: "the cache server is unavailable; retry shortly",
}
# Reasons whose message is about the caller's own request, safe to pass on.
_CALLER_FACING = {
    ErrorReason.INVALID_INPUT,
    ErrorReason.NOT_FOUND,
    ErrorReason.CACHE_LIMIT,
    ErrorReason.STORE_CONFLICT,
    ErrorReason.UNAUTHENTICATED,
    ErrorReason.NOT_PERMITTED,
    ErrorReason.RATE_LIMITED,
    ErrorReason.BUDGET_SPENT,
}
# The caller's key and limits, as the cache server judged them: the same status in every API.
_CALLER_STATUS: dict[ErrorReason, int] = {
    ErrorReason.UNAUTHENTICATED: 401,
    ErrorReason.NOT_PERMITTED: 403,
    ErrorReason.RATE_LIMITED: 429,
    ErrorReason.BUDGET_SPENT: 429,
}


class ProblemError(Exception):
    """Raised by routes; rendered as an RFC 7807 body."""

    def __init__(
        self,
        status: int,
        detail: str,
        *,
        problem_type: str | None = None,
        fields: list[dict[str, str]] | None = None,
        headers: dict[str, str] | None = None,
    ) -> None:
        super().__init__(detail)
        self.status = status
        self.detail = detail
        self.problem_type = problem_type
        self.fields = fields
        self.headers = headers


class CacheCallError(Exception):
    """A failed call to the cache server; the exception handler answers it in the terms of
    the API that the request came through."""

    def __init__(self, error: grpc.aio.AioRpcError) -> None:
        super().__init__(error.details())
        self.error = error


# The OpenAI-compatible route answers every error in OpenAI's shape
# (`{"error": {"message", "type", "param", "code"}}`), so that the OpenAI SDK raises its own
# exceptions; its statuses are the original API's.
OPENAI_PATHS = frozenset({"/v1/chat/completions"})


def is_openai(path: str) -> bool:
    return path in OPENAI_PATHS


def is_langcache(path: str) -> bool:
    return path.startswith(LANGCACHE_PREFIX) and not is_openai(path)


def from_grpc(error: grpc.aio.AioRpcError, *, langcache: bool = False) -> ProblemError:
    code = error.code()
    reason = reason_of(error.trailing_metadata())
    if reason is None and code in (grpc.StatusCode.INVALID_ARGUMENT, grpc.StatusCode.NOT_FOUND):
        reason = (
            ErrorReason.INVALID_INPUT
            if code is grpc.StatusCode.INVALID_ARGUMENT
            else ErrorReason.NOT_FOUND
        )
    if reason in _CALLER_FACING:
        detail = error.details() or code.name
    else:
        detail = _SAFE_DETAIL.get(reason, _SAFE_DETAIL[None])
        if reason is None and code is grpc.StatusCode.DEADLINE_EXCEEDED:
            detail = "the cache server did not answer in time; retry shortly"
        log.warning(
            "cache server call failed: %s %s: %s",
            code.name,
            reason.value if reason else "(no reason: not from the cache server)",
            error.details(),
        )
        detail = f"{detail} (request id {request_id.get()})"
    if reason in _CALLER_STATUS:
        status = _CALLER_STATUS[reason]
        headers = {"WWW-Authenticate": "Bearer"} if status == 401 else None
        if (wait := retry_after_of(error.trailing_metadata())) is not None:
            headers = {"Retry-After": wait}
        return ProblemError(status, detail, headers=headers)
    if langcache:
        return _langcache_problem(code, reason, detail)
    status = GRPC_TO_HTTP.get(code, 500)
    if reason is ErrorReason.STORE_FULL:
        status = 503  # not the caller's quota: the store itself is full
    return ProblemError(status, detail)


def _langcache_problem(
    code: grpc.StatusCode, reason: ErrorReason | None, detail: str
) -> ProblemError:
    if reason is ErrorReason.INVALID_INPUT:
        return ProblemError(400, detail)
    if reason is ErrorReason.NOT_FOUND:
        return ProblemError(404, detail)
    if reason is ErrorReason.CACHE_LIMIT:
        return ProblemError(403, detail)
    if reason is ErrorReason.STORE_FULL:
        return ProblemError(424, detail, problem_type=OUT_OF_MEMORY_TYPE)
    if reason is ErrorReason.INTERNAL:
        return ProblemError(500, detail)
    return ProblemError(424, detail)  # a dependency is unavailable, whichever


def langcache_status(status: int) -> int:
    """The gateway's own refusals on the LangCache routes, within the SDK's set: what it would
    call a 415 or a 422 is invalid data (400)."""
    return 400 if status in (415, 422) else status


def answered(status: int, detail: str) -> None:
    """Logs what a client was told of an error (every error body the gateway sends passes
    here), so that operators see it; tests/processes.py scans these lines for leaks."""
    log.info("error answered: %d %s", status, detail.replace("\n", "\\n"))


def problem_response(request: Request, error: ProblemError) -> JSONResponse:
    status = error.status
    answered(status, error.detail)
    if is_openai(request.url.path):
        status = 400 if status == 422 else status  # OpenAI calls a malformed request a 400
        param = error.fields[0].get("field") if error.fields else None
        content = openai_wire.error_body(
            status, error.detail, code=_OPENAI_CODES.get(status), param=param
        )
        return JSONResponse(content, status_code=status, headers=error.headers)
    if is_langcache(request.url.path):
        status = langcache_status(status)
    body: dict[str, object] = {
        "type": error.problem_type or PROBLEM_TYPES.get(status, "/errors/unexpected-error"),
        "title": HTTPStatus(status).phrase if status in HTTPStatus._value2member_map_ else "Error",
        "status": status,
        "detail": error.detail,
        "instance": request.url.path,
    }
    if error.fields:
        body["fields"] = error.fields
    return JSONResponse(body, status_code=status, headers=error.headers)
