"""One table from gRPC status to HTTP, and the error bodies.

Error bodies follow RFC 7807 (`type`, `title`, `status`, `detail`, `instance`) with the type
URIs of the LangCache API, so its SDK raises its typed errors; they are served as
`application/json`, which is what that SDK matches on.
"""

from __future__ import annotations

from http import HTTPStatus

import grpc
from fastapi import Request
from fastapi.responses import JSONResponse

GRPC_TO_HTTP: dict[grpc.StatusCode, int] = {
    grpc.StatusCode.INVALID_ARGUMENT: 400,
    grpc.StatusCode.OUT_OF_RANGE: 400,
    grpc.StatusCode.NOT_FOUND: 404,
    grpc.StatusCode.ALREADY_EXISTS: 409,
    grpc.StatusCode.FAILED_PRECONDITION: 409,
    grpc.StatusCode.UNAUTHENTICATED: 401,
    grpc.StatusCode.PERMISSION_DENIED: 403,
    grpc.StatusCode.RESOURCE_EXHAUSTED: 429,
    grpc.StatusCode.UNAVAILABLE: 503,
    grpc.StatusCode.DEADLINE_EXCEEDED: 504,
    grpc.StatusCode.CANCELLED: 499,
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
    429: "/errors/too-many-requests",
    503: "/errors/service-unavailable",
    500: "/errors/unexpected-error",
    504: "/errors/upstream-timeout",
}


class ProblemError(Exception):
    """Raised by routes; rendered as an RFC 7807 body."""

    def __init__(
        self,
        status: int,
        detail: str,
        *,
        fields: list[dict[str, str]] | None = None,
        headers: dict[str, str] | None = None,
    ) -> None:
        super().__init__(detail)
        self.status = status
        self.detail = detail
        self.fields = fields
        self.headers = headers


def from_grpc(error: grpc.aio.AioRpcError) -> ProblemError:
    status = GRPC_TO_HTTP.get(error.code(), 500)
    return ProblemError(status, error.details() or error.code().name)


def problem_response(request: Request, error: ProblemError) -> JSONResponse:
    body: dict[str, object] = {
        "type": PROBLEM_TYPES.get(error.status, "/errors/unexpected-error"),
        "title": HTTPStatus(error.status).phrase
        if error.status in HTTPStatus._value2member_map_
        else "Error",
        "status": error.status,
        "detail": error.detail,
        "instance": request.url.path,
    }
    if error.fields:
        body["fields"] = error.fields
    return JSONResponse(body, status_code=error.status, headers=error.headers)
