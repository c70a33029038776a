"""The one table from gRPC status to HTTP status, and the problem bodies."""

from __future__ import annotations

import grpc
import pytest

from gateway.errors import GRPC_TO_HTTP, PROBLEM_TYPES, ProblemError, from_grpc


class FakeRpcError(grpc.aio.AioRpcError):
    def __init__(self, code: grpc.StatusCode, details: str) -> None:
        super().__init__(code, grpc.aio.Metadata(), grpc.aio.Metadata(), details)


@pytest.mark.parametrize(
    ("code", "status"),
    [
        (grpc.StatusCode.INVALID_ARGUMENT, 400),
        (grpc.StatusCode.NOT_FOUND, 404),
        (grpc.StatusCode.RESOURCE_EXHAUSTED, 429),
        (grpc.StatusCode.UNAVAILABLE, 503),
        (grpc.StatusCode.DEADLINE_EXCEEDED, 504),
        (grpc.StatusCode.UNAUTHENTICATED, 401),
        (grpc.StatusCode.FAILED_PRECONDITION, 409),
        (grpc.StatusCode.INTERNAL, 500),
    ],
)
def test_grpc_status_maps_to_http(code: grpc.StatusCode, status: int) -> None:
    problem = from_grpc(FakeRpcError(code, "what went wrong"))
    assert isinstance(problem, ProblemError)
    assert problem.status == status
    assert problem.detail == "what went wrong"


def test_every_mapped_client_error_has_a_problem_type() -> None:
    for status in GRPC_TO_HTTP.values():
        if 400 <= status < 500 and status != 499:
            assert status in PROBLEM_TYPES
