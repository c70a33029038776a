"""Nothing internal in an error: no internal address, exception text, stack trace or upstream
credential message reaches a client, in a REST body or a gRPC status detail. Over the real
processes, with a fake upstream LLM that refuses the key, and one that cannot be reached.

Every process the suites start is also scanned when it stops (tests.processes.answer_leaks):
each error a process answered is logged with a fixed marker, and each of those lines is
checked for leaks.
"""

from __future__ import annotations

import json
import time
import uuid
from collections.abc import Callable, Iterator
from pathlib import Path

import grpc
import httpx
import openai
import pytest
from openai import OpenAI

from protos.semcache.cache.v1 import cache_pb2 as pb
from protos.semcache.cache.v1 import cache_pb2_grpc as pb_grpc
from tests.fake_llm import FakeLLM
from tests.processes import (
    ANSWERED_MARKER,
    GatewayProcess,
    ServiceProcess,
    answer_leaks,
    cache_server_process,
    free_port,
)

pytestmark = pytest.mark.slow

MODEL = "gpt-4o-mini"  # the upstream_model: offered by every cache server
CREDENTIALS_REFUSED = "the upstream refused the gateway's credentials"
RATE_LIMITED = "the upstream LLM is rate limiting; retry later"
UNREACHABLE = "the upstream LLM is unreachable"
# What OpenAI answers when the operator's own key is wrong: the masked key is in it.
KEY_REFUSED = {
    "error": {
        "message": "Incorrect API key provided: sk-proj-************************wxyz. You can "
        "find your API key at https://platform.openai.com/account/api-keys.",
        "type": "invalid_request_error",
        "param": None,
        "code": "invalid_api_key",
    }
}


def chat_body(question: str, *, stream: bool = False) -> dict[str, object]:
    return {"model": MODEL, "messages": [{"role": "user", "content": question}], "stream": stream}


def new_question() -> str:
    return f"A question never asked before {uuid.uuid4().hex[:8]}?"


def eventually(check: Callable[[], bool], timeout: float = 5.0) -> bool:
    deadline = time.monotonic() + timeout
    while not check():
        if time.monotonic() > deadline:
            return False
        time.sleep(0.05)
    return True


def assert_nothing_internal(text: str) -> None:
    for internal in ("127.0.0.1", "localhost", "sk-", "Incorrect API key", "Traceback", "Errno"):
        assert internal not in text, text
    for kind in ("ConnectError", "ConnectTimeout", "HTTPStatusError", "UpstreamError"):
        assert kind not in text, text


@pytest.fixture
def refusing_llm(llm: FakeLLM) -> Iterator[FakeLLM]:
    """The module's fake LLM refusing the operator's key, put back as it was afterwards."""
    llm.fail_status, llm.fail_body = 401, json.dumps(KEY_REFUSED).encode()
    yield llm
    llm.fail_status, llm.fail_body = None, b'{"error": "failed on purpose"}'


@pytest.fixture
def stub(cache_server: ServiceProcess) -> Iterator[pb_grpc.CacheServiceStub]:
    with cache_server.channel() as channel:
        yield pb_grpc.CacheServiceStub(channel)


# -- (a) an upstream that refuses the operator's key ---------------------------------------------


@pytest.mark.parametrize("status", [401, 403])
@pytest.mark.parametrize("stream", [False, True])
def test_an_upstream_refusing_the_key_is_a_502_on_the_openai_route(
    gateway: str, cache_server: ServiceProcess, refusing_llm: FakeLLM, status: int, stream: bool
) -> None:
    refusing_llm.fail_status = status
    question = new_question()
    with (
        OpenAI(base_url=f"{gateway}/v1", api_key="unused", max_retries=0) as client,
        pytest.raises(openai.APIStatusError) as raised,
    ):
        client.chat.completions.create(
            model=MODEL,
            messages=[{"role": "user", "content": question}],
            stream=stream,
            extra_body={"semcache": {"cache_id": "leaks"}},
        )
    error = raised.value
    assert error.status_code == 502, error.response.text
    assert error.response.json() == {
        "error": {
            "message": CREDENTIALS_REFUSED,
            "type": "server_error",
            "param": None,
            "code": "upstream_auth_failed",
        }
    }
    assert_nothing_internal(error.response.text)
    # The operator is told what the upstream said, in the cache server's log.
    assert eventually(lambda: f"HTTP {status}" in cache_server.log())
    assert "Incorrect API key provided" in cache_server.log()


def test_an_upstream_refusing_the_key_over_grpc(
    stub: pb_grpc.CacheServiceStub, refusing_llm: FakeLLM, gateway: str
) -> None:
    for stream in (False, True):
        question = new_question()
        request = pb.ChatRequest(
            cache_id="leaks",
            cacheable=True,
            body_json=json.dumps(chat_body(question)),
            stream=stream,
        )
        (event,) = list(stub.Chat(request, timeout=10))
        failure = event.upstream_error
        assert (failure.status, failure.message) == (502, CREDENTIALS_REFUSED)
        assert json.loads(failure.body)["error"]["message"] == CREDENTIALS_REFUSED
        assert_nothing_internal(str(failure))

    # The Query RPC (the original API) calls the same upstream.
    with pytest.raises(grpc.RpcError) as raised:
        stub.Query(pb.QueryRequest(query=new_question(), cache_id="leaks"), timeout=10)
    assert raised.value.code() == grpc.StatusCode.UNAVAILABLE
    assert raised.value.details() == CREDENTIALS_REFUSED
    reply = httpx.post(f"{gateway}/query", json={"query": new_question()}, timeout=10)
    assert reply.status_code == 503, reply.text
    assert_nothing_internal(reply.text)


@pytest.mark.parametrize(
    ("upstream_status", "upstream_body", "status", "message"),
    [
        (429, KEY_REFUSED, 429, RATE_LIMITED),
        (500, {"error": "Traceback (most recent call last): KeyError"}, 502, None),
        (503, b"<html>upstream 10.1.2.3:8080 down</html>", 502, None),
        (402, KEY_REFUSED, 502, None),
        # About the caller's request: the upstream's own message (not its body) passes on.
        (
            400,
            {"error": {"message": "max_tokens is too large", "type": "x", "code": "bad_max"}},
            400,
            "max_tokens is too large",
        ),
        (404, {"error": {"message": "The model `gpt-x` does not exist"}}, 404, None),
        (400, b"not json: sk-abcdef", 502, None),
    ],
)
def test_other_upstream_errors_say_only_what_a_client_needs(
    gateway: str,
    llm: FakeLLM,
    upstream_status: int,
    upstream_body: object,
    status: int,
    message: str | None,
) -> None:
    raw = upstream_body if isinstance(upstream_body, bytes) else json.dumps(upstream_body).encode()
    llm.fail_status, llm.fail_body = upstream_status, raw
    try:
        reply = httpx.post(
            f"{gateway}/v1/chat/completions", json=chat_body(new_question()), timeout=10
        )
    finally:
        llm.fail_status, llm.fail_body = None, b'{"error": "failed on purpose"}'
    assert reply.status_code == status, reply.text
    error = reply.json()["error"]
    assert set(error) == {"message", "type", "param", "code"}
    if message is not None:
        assert error["message"] == message
    if upstream_status == 404:
        assert error["message"] == "The model `gpt-x` does not exist"
    if status == 502:
        assert error["message"].startswith("the upstream LLM")
    assert_nothing_internal(reply.text)
    assert "10.1.2.3" not in reply.text and "<html>" not in reply.text


# -- (b) an upstream that cannot be reached -------------------------------------------------------


@pytest.fixture(scope="module")
def unreachable(
    tmp_path_factory: pytest.TempPathFactory, embedder_process: str
) -> Iterator[tuple[ServiceProcess, GatewayProcess]]:
    closed = f"http://127.0.0.1:{free_port()}/v1"  # nothing listens there
    data: Path = tmp_path_factory.mktemp("unreachable")
    with (
        cache_server_process(data, embedder_process, "--upstream-base-url", closed) as server,
        GatewayProcess(server.address) as gateway,
    ):
        yield server, gateway


def test_an_unreachable_upstream_shows_no_address(
    unreachable: tuple[ServiceProcess, GatewayProcess],
) -> None:
    server, gateway = unreachable
    query = httpx.post(f"{gateway.url}/query", json={"query": new_question()}, timeout=10)
    assert query.status_code == 503, query.text
    assert_nothing_internal(query.text)

    for stream in (False, True):
        chat = httpx.post(
            f"{gateway.url}/v1/chat/completions",
            json=chat_body(new_question(), stream=stream),
            timeout=10,
        )
        assert chat.status_code == 502, chat.text
        assert chat.json()["error"]["message"] == UNREACHABLE
        assert_nothing_internal(chat.text)

    with server.channel() as channel:
        stub = pb_grpc.CacheServiceStub(channel)
        with pytest.raises(grpc.RpcError) as raised:
            stub.Query(pb.QueryRequest(query=new_question()), timeout=10)
        assert raised.value.code() == grpc.StatusCode.UNAVAILABLE
        assert raised.value.details() == UNREACHABLE
        request = pb.ChatRequest(cacheable=True, body_json=json.dumps(chat_body(new_question())))
        (event,) = list(stub.Chat(request, timeout=10))
        assert event.upstream_error.status == 0
        assert event.upstream_error.message == UNREACHABLE
        assert_nothing_internal(str(event))

    # The operator is told where: the log keeps the cause.
    assert eventually(lambda: "ConnectError" in server.log())
    # What each process told its clients is logged, for operators and for the scan.
    assert eventually(lambda: f"{ANSWERED_MARKER}UNAVAILABLE {UNREACHABLE}" in server.log())
    assert eventually(lambda: f"{ANSWERED_MARKER}502 " in gateway.log())


def test_an_upstream_host_that_does_not_resolve_shows_no_os_error(
    tmp_path: Path, embedder_process: str
) -> None:
    unknown = "http://no-such-host.invalid:8443/v1"  # httpx says "[Errno -2] Name or ..."
    with (
        cache_server_process(tmp_path, embedder_process, "--upstream-base-url", unknown) as server,
        server.channel() as channel,
    ):
        stub = pb_grpc.CacheServiceStub(channel)
        with pytest.raises(grpc.RpcError) as raised:
            stub.Query(pb.QueryRequest(query=new_question()), timeout=10)
        assert raised.value.details() == UNREACHABLE
        assert eventually(lambda: "no-such-host.invalid" in server.log())


# -- the scan itself ---------------------------------------------------------------------------


def test_the_scan_finds_what_leaks_and_passes_what_does_not() -> None:
    leaking = [
        f"2025 INFO [gateway] gateway [r1]: {ANSWERED_MARKER}503 upstream at 10.0.0.7:443 down",
        f"x: {ANSWERED_MARKER}UNAVAILABLE embedder ipv4:10.0.0.7:50052 failed",
        f"x: {ANSWERED_MARKER}500 internal error: KeyError",
        f'x: {ANSWERED_MARKER}UNAVAILABLE Traceback (most recent call last):\\n  File "x.py"',
        f"x: {ANSWERED_MARKER}401 Incorrect API key provided: sk-proj-****wxyz",
        f"x: {ANSWERED_MARKER}502 [Errno 111] Connection refused",
        f"x: {ANSWERED_MARKER}503 redis at localhost:6379 unreachable",
        json.dumps({"message": f"{ANSWERED_MARKER}500 ConnectError: [::1]:8000", "level": "INFO"}),
    ]
    clean = [
        f"x: {ANSWERED_MARKER}502 the upstream refused the gateway's credentials",
        f"x: {ANSWERED_MARKER}500 internal error (request id 0123abcd)",
        f"x: {ANSWERED_MARKER}422 similarity_threshold: Input should be less than or equal to 1",
        f"x: {ANSWERED_MARKER}404 no route /no/such/route",
        "x: a line without the marker may say 10.0.0.7:443 (the log is the operator's)",
        json.dumps({"message": f"{ANSWERED_MARKER}400 query has 9000 characters"}),
    ]
    assert answer_leaks("\n".join(leaking + clean)) == leaking
