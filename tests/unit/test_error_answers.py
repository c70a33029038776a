"""What a client is told of an error: the upstream's failures worded by the cache server (the
owner of the upstream call), an unforeseen error answered with the request id only, in the
cache server and in the gateway. Their full text stays in the log."""

from __future__ import annotations

import json
import logging
import time
from collections.abc import Awaitable, Callable
from typing import Any

import grpc
import httpx
import pytest
from fastapi.testclient import TestClient

from cache_server.embedder_client import EmbedderUnavailableError
from cache_server.statuses import abort_failed
from cache_server.store.base import StoreFullError, StoreUnavailableError
from cache_server.upstream import OpenAICompatibleUpstream, UpstreamError, UpstreamHTTPError
from gateway.app import create_app
from gateway.settings import GatewaySettings
from service_runtime.logs import request_id
from tests.processes import answer_leaks

KEY_REFUSED = json.dumps(
    {
        "error": {
            "message": "Incorrect API key provided: sk-proj-****wxyz.",
            "type": "invalid_request_error",
            "param": None,
            "code": "invalid_api_key",
        }
    }
)


@pytest.mark.parametrize(
    ("status", "body", "client_status", "message"),
    [
        (401, KEY_REFUSED, 502, "the upstream refused the gateway's credentials"),
        (403, "Forbidden", 502, "the upstream refused the gateway's credentials"),
        (429, KEY_REFUSED, 429, "the upstream LLM is rate limiting; retry later"),
        (500, "Traceback (most recent call last)", 502, "the upstream LLM failed (HTTP 500)"),
        (502, "<html>10.0.0.7</html>", 502, "the upstream LLM failed (HTTP 502)"),
        (402, KEY_REFUSED, 502, "the upstream LLM refused the request (HTTP 402)"),
        (404, "Not Found", 502, "the upstream LLM refused the request (HTTP 404)"),
        (400, KEY_REFUSED, 502, "the upstream LLM refused the request (HTTP 400)"),  # a key
        (
            400,
            json.dumps({"error": {"message": "too long", "code": "context_length_exceeded"}}),
            400,
            "the upstream LLM refused the request (HTTP 400): too long",
        ),
    ],
)
def test_the_cache_server_words_the_upstreams_errors_for_clients(
    status: int, body: str, client_status: int, message: str
) -> None:
    error = UpstreamHTTPError(status, body)
    assert (error.client_status, str(error)) == (client_status, message)
    told = json.loads(error.client_body)["error"]
    assert set(told) == {"message", "type", "param", "code"}
    assert "sk-" not in error.client_body and "10.0.0.7" not in error.client_body
    assert "Traceback" not in error.client_body
    if client_status == 400:
        assert told == {
            "message": "too long",
            "type": "invalid_request_error",
            "param": None,
            "code": "context_length_exceeded",
        }
    else:
        assert told["message"] == message
    # The log is told everything the upstream said.
    assert f"HTTP {status}" in error.detail and body in error.detail


@pytest.mark.parametrize(
    ("raised", "message", "streamed"),
    [
        (
            httpx.ConnectError("[Errno 111] Connection refused"),
            "the upstream LLM is unreachable",
            "",
        ),
        (httpx.ConnectTimeout("timed out"), "the upstream LLM timed out", ""),
        (
            httpx.RemoteProtocolError("peer closed"),
            "the upstream LLM broke off the connection",
            "the upstream LLM stream broke off",
        ),
    ],
)
async def test_an_upstream_that_cannot_be_asked_is_told_in_fixed_words(
    raised: httpx.HTTPError, message: str, streamed: str
) -> None:
    def fail(request: httpx.Request) -> httpx.Response:
        raised.request = request
        raise raised

    upstream = OpenAICompatibleUpstream("http://10.0.0.7:8443/v1", "gpt-test")
    await upstream.close()
    upstream._client = httpx.AsyncClient(
        base_url="http://10.0.0.7:8443/v1", transport=httpx.MockTransport(fail)
    )
    body = {"model": "gpt-test", "messages": [{"role": "user", "content": "hi"}]}
    asks: list[tuple[Callable[[], Awaitable[object]], str]] = [
        (lambda: upstream.chat(body), message),
        (lambda: _drain(upstream.chat_stream(body)), streamed or message),
        (lambda: upstream.complete("hi"), message),
    ]
    for ask, told in asks:
        with pytest.raises(UpstreamError) as caught:
            await ask()
        assert str(caught.value) == told
        # The log keeps the cause: its type, its text and the URL asked.
        assert type(raised).__name__ in caught.value.detail
        assert "10.0.0.7:8443/v1/chat/completions" in caught.value.detail
    await upstream.close()


async def _drain(chunks: Any) -> None:
    async for _ in chunks:
        pass


class _Aborted(Exception):
    pass


class _Context:
    def __init__(self) -> None:
        self.told: tuple[grpc.StatusCode, str] | None = None

    async def abort(self, code: grpc.StatusCode, message: str, trailing_metadata: Any = ()) -> None:
        self.told = (code, message)
        raise _Aborted


async def test_an_unforeseen_error_in_the_cache_server_is_answered_with_the_request_id(
    caplog: pytest.LogCaptureFixture,
) -> None:
    context = _Context()
    token = request_id.set("rid-7")
    caplog.set_level(logging.INFO, "cache_server")
    try:
        raise KeyError("redis://10.0.0.7:6379 entry")
    except KeyError as exc:
        with pytest.raises(_Aborted):
            await abort_failed("Query", exc, context, time.perf_counter())  # type: ignore[arg-type]
    finally:
        request_id.reset(token)
    assert context.told == (grpc.StatusCode.INTERNAL, "internal error (request id rid-7)")
    assert any(r.exc_info and "Query failed" in r.getMessage() for r in caplog.records)
    answered = [r.getMessage() for r in caplog.records if "error answered" in r.getMessage()]
    assert answered == ["error answered: INTERNAL internal error (request id rid-7)"]
    assert answer_leaks("\n".join(answered)) == []


async def test_the_cause_of_a_foreseen_error_is_logged_not_told(
    caplog: pytest.LogCaptureFixture,
) -> None:
    context = _Context()
    caplog.set_level(logging.INFO, "cache_server")
    try:
        try:
            raise httpx.ConnectError("[Errno 111] Connection refused to 10.0.0.7:8443")
        except httpx.ConnectError as cause:
            raise UpstreamError("the upstream LLM is unreachable") from cause
    except UpstreamError as exc:
        with pytest.raises(_Aborted):
            await abort_failed("Query", exc, context, time.perf_counter())  # type: ignore[arg-type]
    assert context.told == (grpc.StatusCode.UNAVAILABLE, "the upstream LLM is unreachable")
    logged = "\n".join(r.getMessage() for r in caplog.records)
    assert "ConnectError" in logged and "10.0.0.7:8443" in logged


def test_an_unforeseen_error_in_the_gateway_is_answered_with_the_request_id(
    caplog: pytest.LogCaptureFixture,
) -> None:
    app = create_app(GatewaySettings())

    @app.get("/boom")
    async def boom() -> None:
        raise KeyError("redis://10.0.0.7:6379")

    caplog.set_level(logging.INFO, "gateway")
    with TestClient(app, raise_server_exceptions=False) as client:
        reply = client.get("/boom", headers={"X-Request-ID": "rid-8"})
    assert reply.status_code == 500
    assert reply.json()["detail"] == "internal error (request id rid-8)"
    assert "KeyError" not in reply.text and "10.0.0.7" not in reply.text
    assert any(r.exc_info and "unexpected error" in r.getMessage() for r in caplog.records)
    assert "error answered: 500 internal error (request id rid-8)" in caplog.text


@pytest.mark.parametrize(
    ("raised", "told"),
    [
        (
            EmbedderUnavailableError("embedder unavailable (10.0.0.7:50052): ipv4:10.0.0.7:50052"),
            "embedder unavailable; retry shortly",
        ),
        (
            StoreUnavailableError("Redis at redis://10.0.0.7:6379/0 is unreachable: Error 111"),
            "the cache store is unavailable; retry shortly",
        ),
        (
            StoreFullError("Redis at redis://10.0.0.7:6379/0 is out of memory"),
            "the cache store is out of memory; nothing was stored",
        ),
    ],
)
async def test_a_dependency_that_fails_is_told_in_fixed_words(
    raised: Exception, told: str, caplog: pytest.LogCaptureFixture
) -> None:
    context = _Context()
    token = request_id.set("rid-9")
    caplog.set_level(logging.INFO, "cache_server")
    try:
        with pytest.raises(_Aborted):
            await abort_failed("Set", raised, context, time.perf_counter())  # type: ignore[arg-type]
    finally:
        request_id.reset(token)
    assert context.told is not None
    assert context.told[1] == f"{told} (the cache server's log says why: request id rid-9)"
    assert "10.0.0.7" in caplog.text  # the log keeps where
