"""From a failed cache-server call to the problem each REST API answers with."""

from __future__ import annotations

import grpc
import pytest

from gateway.errors import GRPC_TO_HTTP, OUT_OF_MEMORY_TYPE, PROBLEM_TYPES, from_grpc
from service_runtime.error_reasons import REASON_KEY, ErrorReason

INTERNAL_DETAIL = "embedder unavailable (10.0.0.7:50052): UNAVAILABLE ipv4:10.0.0.7:50052"


class FakeRpcError(grpc.aio.AioRpcError):
    def __init__(
        self, code: grpc.StatusCode, details: str, reason: ErrorReason | None = None
    ) -> None:
        trailing = grpc.aio.Metadata((REASON_KEY, reason.value)) if reason else grpc.aio.Metadata()
        super().__init__(code, grpc.aio.Metadata(), trailing, details)


CASES = [
    # code, reason, original API status, LangCache status (and type when not the status's)
    (grpc.StatusCode.INVALID_ARGUMENT, ErrorReason.INVALID_INPUT, 400, 400, None),
    (grpc.StatusCode.NOT_FOUND, ErrorReason.NOT_FOUND, 404, 404, None),
    (grpc.StatusCode.RESOURCE_EXHAUSTED, ErrorReason.CACHE_LIMIT, 429, 403, None),
    (grpc.StatusCode.RESOURCE_EXHAUSTED, ErrorReason.STORE_FULL, 503, 424, OUT_OF_MEMORY_TYPE),
    (grpc.StatusCode.UNAVAILABLE, ErrorReason.EMBEDDER_UNAVAILABLE, 503, 424, None),
    (grpc.StatusCode.UNAVAILABLE, ErrorReason.UPSTREAM_FAILED, 503, 424, None),
    (grpc.StatusCode.UNAVAILABLE, ErrorReason.STORE_UNAVAILABLE, 503, 424, None),
    (grpc.StatusCode.UNAVAILABLE, ErrorReason.INTERRUPTED, 503, 424, None),
    (grpc.StatusCode.FAILED_PRECONDITION, ErrorReason.STORE_CONFLICT, 409, 424, None),
    (grpc.StatusCode.INTERNAL, ErrorReason.INTERNAL, 500, 500, None),
    (grpc.StatusCode.UNAVAILABLE, None, 503, 424, None),  # the cache server unreachable
    (grpc.StatusCode.DEADLINE_EXCEEDED, None, 504, 424, None),
    (grpc.StatusCode.CANCELLED, None, 503, 424, None),
    (grpc.StatusCode.UNAUTHENTICATED, None, 503, 424, None),  # the gateway's own credentials
]


@pytest.mark.parametrize(("code", "reason", "original", "langcache", "problem_type"), CASES)
def test_each_api_answers_in_its_own_terms(
    code: grpc.StatusCode,
    reason: ErrorReason | None,
    original: int,
    langcache: int,
    problem_type: str | None,
) -> None:
    error = FakeRpcError(code, INTERNAL_DETAIL, reason)
    assert from_grpc(error).status == original
    problem = from_grpc(error, langcache=True)
    assert problem.status == langcache
    assert (problem.problem_type or PROBLEM_TYPES[langcache]) == (
        problem_type or PROBLEM_TYPES[langcache]
    )
    # The LangCache SDK models exactly these.
    assert problem.status in (400, 401, 403, 404, 413, 424, 429, 500)


@pytest.mark.parametrize(("code", "reason"), [(c, r) for c, r, *_ in CASES])
def test_failures_behind_the_gateway_never_show_internal_addresses(
    code: grpc.StatusCode, reason: ErrorReason | None
) -> None:
    for langcache in (False, True):
        detail = from_grpc(FakeRpcError(code, INTERNAL_DETAIL, reason), langcache=langcache).detail
        if reason in (
            ErrorReason.INVALID_INPUT,
            ErrorReason.NOT_FOUND,
            ErrorReason.CACHE_LIMIT,
            ErrorReason.STORE_CONFLICT,
        ):
            continue  # about the caller's own request and cache, said back to them
        assert "10.0.0.7" not in detail and "ipv4" not in detail, detail


def test_messages_about_the_callers_input_pass_through() -> None:
    error = FakeRpcError(
        grpc.StatusCode.INVALID_ARGUMENT, "query has 9000 characters", ErrorReason.INVALID_INPUT
    )
    assert from_grpc(error).detail == "query has 9000 characters"


def test_every_mapped_client_error_has_a_problem_type() -> None:
    for status in GRPC_TO_HTTP.values():
        assert status in PROBLEM_TYPES
