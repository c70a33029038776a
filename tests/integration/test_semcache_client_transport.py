"""semcache-client's transport against real servers on real sockets: balancing over several
cache servers, retries on UNAVAILABLE for idempotent calls only (one request id for all
tries), deadlines, request ids in the server's log, dns:/// names."""

from __future__ import annotations

import asyncio
import logging
import time
import uuid
from collections import Counter
from collections.abc import Callable, Iterator
from concurrent.futures import ThreadPoolExecutor

import grpc
import pytest

from protos.semcache.cache.v1 import cache_pb2
from semcache_client import (
    AsyncCacheClient,
    CacheClient,
    DeadlineExceeded,
    ErrorReason,
    InvalidArgument,
    RetryPolicy,
    Unavailable,
)
from tests.fake_llm import FakeLLM
from tests.processes import ServiceProcess, cache_server_process, free_port

pytestmark = pytest.mark.slow


class RefusingServer:
    """A real gRPC server whose every CacheService method answers UNAVAILABLE (reason
    `embedder-unavailable`, as a cache server whose embedder is down), counting calls per
    method and keeping the request id of each."""

    def __init__(self) -> None:
        self.calls: Counter[str] = Counter()
        self.request_ids: list[str] = []
        service = cache_pb2.DESCRIPTOR.services_by_name["CacheService"]
        handlers = {
            m.name: grpc.unary_unary_rpc_method_handler(
                self._refuse(m.name),
                request_deserializer=lambda data: data,
                response_serializer=lambda data: data,
            )
            for m in service.methods
            if not m.server_streaming
        }
        self.server = grpc.server(ThreadPoolExecutor(4))
        self.server.add_generic_rpc_handlers(
            (grpc.method_handlers_generic_handler(service.full_name, handlers),)
        )
        self.port = self.server.add_insecure_port("127.0.0.1:0")

    def _refuse(self, method: str) -> Callable[[bytes, grpc.ServicerContext], bytes]:
        def refuse(request: bytes, context: grpc.ServicerContext) -> bytes:
            self.calls[method] += 1
            self.request_ids.append(str(dict(context.invocation_metadata())["x-request-id"]))
            context.set_trailing_metadata((("semcache-error-reason", "embedder-unavailable"),))
            context.abort(grpc.StatusCode.UNAVAILABLE, "embedder unavailable (on purpose)")

        return refuse

    @property
    def address(self) -> str:
        return f"127.0.0.1:{self.port}"


@pytest.fixture()
def refusing() -> Iterator[RefusingServer]:
    server = RefusingServer()
    server.server.start()
    yield server
    server.server.stop(0)


@pytest.fixture(scope="module")
def second_server(
    tmp_path_factory: pytest.TempPathFactory, embedder_process: str, llm: FakeLLM
) -> Iterator[ServiceProcess]:
    data = tmp_path_factory.mktemp("second")
    server = cache_server_process(data, embedder_process, "--upstream-base-url", llm.base_url)
    server.start()
    yield server
    server.stop()


def sizes(cache_id: str, *servers: ServiceProcess) -> list[int]:
    result = []
    for server in servers:
        with CacheClient(server.address, cache_id=cache_id) as one:
            result.append(one.get_stats().cache_size)
    return result


def wait_for_log(server: ServiceProcess, text: str, timeout_s: float = 5.0) -> str:
    deadline = time.monotonic() + timeout_s
    while text not in server.log():
        if time.monotonic() > deadline:
            raise AssertionError(f"{text!r} not in the server's log:\n{server.log()[-3000:]}")
        time.sleep(0.05)
    return next(line for line in server.log().splitlines() if text in line)


def test_calls_are_spread_over_every_cache_server(
    cache_server: ServiceProcess, second_server: ServiceProcess
) -> None:
    cache_id = f"balance-{uuid.uuid4().hex[:8]}"
    addresses = f"{cache_server.address},{second_server.address}"
    with CacheClient(addresses, cache_id=cache_id) as both:
        for i in range(8):
            both.set(f"question number {i}?", f"answer {i}")
    assert sizes(cache_id, cache_server, second_server) == [4, 4]


async def test_async_calls_are_spread_over_every_cache_server(
    cache_server: ServiceProcess, second_server: ServiceProcess
) -> None:
    cache_id = f"balance-{uuid.uuid4().hex[:8]}"
    async with AsyncCacheClient(
        [cache_server.address, second_server.address], cache_id=cache_id
    ) as both:
        await asyncio.gather(*(both.set(f"question {i}?", f"answer {i}") for i in range(10)))
    assert sizes(cache_id, cache_server, second_server) == [5, 5]


def test_an_idempotent_call_is_retried_on_the_next_server_with_the_same_request_id(
    refusing: RefusingServer, cache_server: ServiceProcess
) -> None:
    with CacheClient([refusing.address, cache_server.address]) as client:
        stats = client.get_stats(request_id="retry-trace-1")
    assert stats.max_cache_size > 0
    assert refusing.calls == Counter({"GetStats": 1}) and refusing.request_ids == ["retry-trace-1"]
    line = wait_for_log(cache_server, "retry-trace-1")
    assert "GetStats OK" in line


@pytest.mark.parametrize("method", ["query", "submit_feedback"])
def test_a_call_that_is_not_idempotent_is_not_retried(
    refusing: RefusingServer, cache_server: ServiceProcess, method: str
) -> None:
    client = CacheClient([refusing.address, cache_server.address])
    with client, pytest.raises(Unavailable) as info:
        if method == "query":
            client.query("What is the capital of France?")
        else:
            client.submit_feedback("0" * 32, "What is the capital of France?", True)
    assert info.value.attempts == 1 and info.value.address == refusing.address
    assert info.value.reason is ErrorReason.EMBEDDER_UNAVAILABLE
    assert sum(refusing.calls.values()) == 1


def test_retries_stop_after_max_attempts_and_the_last_error_is_raised(
    refusing: RefusingServer,
) -> None:
    retry = RetryPolicy(max_attempts=4, initial_backoff_s=0.01)
    with CacheClient(refusing.address, retry=retry) as client:
        started = time.monotonic()
        with pytest.raises(Unavailable) as info:
            client.search("anything")
    assert refusing.calls == Counter({"Search": 4}) and info.value.attempts == 4
    assert set(refusing.request_ids) == {info.value.request_id}  # one id for every try
    assert info.value.message == "embedder unavailable (on purpose)"
    assert time.monotonic() - started < 2.0


async def test_async_retries_the_same_way(refusing: RefusingServer) -> None:
    async with AsyncCacheClient(refusing.address, retry=RetryPolicy(max_attempts=3)) as client:
        with pytest.raises(Unavailable) as info:
            await client.get_cache_policy()
        with pytest.raises(Unavailable):
            await client.query("never retried")
    assert refusing.calls == Counter({"GetCachePolicy": 3, "Query": 1})
    assert info.value.attempts == 3


def test_a_dead_address_costs_a_retry_not_a_failure(
    cache_server: ServiceProcess, caplog: pytest.LogCaptureFixture
) -> None:
    dead = f"127.0.0.1:{free_port()}"  # nothing listens there
    caplog.set_level(logging.DEBUG, logger="semcache_client")
    with CacheClient([dead, cache_server.address]) as client:
        for _ in range(6):
            assert client.get_stats().max_cache_size > 0
    retries = [r for r in caplog.records if "retry" in r.getMessage()]
    assert retries and dead in retries[0].getMessage()
    caplog.clear()
    with CacheClient(dead) as only_dead, pytest.raises(Unavailable) as info:
        only_dead.query("Is anyone there?")
    assert info.value.attempts == 1 and info.value.reason is None  # not the cache server's
    assert not [r for r in caplog.records if "retry" in r.getMessage()]


def test_a_deadline_that_passes_raises_deadline_exceeded(
    cache_server: ServiceProcess, llm: FakeLLM
) -> None:
    llm.delay_s = 3.0
    try:
        with CacheClient(cache_server.address) as client:
            started = time.monotonic()
            with pytest.raises(DeadlineExceeded) as info:
                client.query(f"A slow question {uuid.uuid4().hex}?", timeout_s=0.5)
            assert time.monotonic() - started < 2.0
    finally:
        llm.delay_s = 0.0
    assert info.value.method == "Query" and info.value.attempts == 1


async def test_the_deadline_covers_every_retry(refusing: RefusingServer) -> None:
    patient = RetryPolicy(max_attempts=1000, initial_backoff_s=0.05, max_backoff_s=0.05)
    async with AsyncCacheClient(refusing.address, retry=patient) as client:
        started = time.monotonic()
        with pytest.raises(DeadlineExceeded) as info:
            await client.get_stats(timeout_s=0.4)
    assert time.monotonic() - started < 1.0
    assert 2 <= info.value.attempts < 20 and refusing.calls["GetStats"] == info.value.attempts


def test_request_ids_reach_the_server_and_come_back_in_errors(
    cache_server: ServiceProcess,
) -> None:
    with CacheClient(cache_server.address) as client:
        with pytest.raises(InvalidArgument) as given:
            client.search("x", similarity_threshold=2.0, request_id="caller-trace-42")
        assert given.value.request_id == "caller-trace-42"
        assert given.value.reason is ErrorReason.INVALID_INPUT
        assert "similarity_threshold" in given.value.message
        assert "Search INVALID_ARGUMENT" in wait_for_log(cache_server, "caller-trace-42")
        with pytest.raises(InvalidArgument) as generated:
            client.search("x", similarity_threshold=2.0)
        assert len(generated.value.request_id) == 32
        wait_for_log(cache_server, generated.value.request_id)
    incoming = f"incoming-{uuid.uuid4().hex[:8]}"
    with CacheClient(cache_server.address, request_id_factory=lambda: incoming) as client:
        client.get_stats()
    assert "GetStats OK" in wait_for_log(cache_server, incoming)


def test_dns_names_and_address_lists(cache_server: ServiceProcess) -> None:
    port = cache_server.address.rsplit(":", 1)[1]
    # localhost resolves to 127.0.0.1 (and perhaps ::1, where nothing listens): round robin
    # over the name's addresses skips the one that refuses.
    with CacheClient(f"dns:///localhost:{port}") as by_name:
        for _ in range(4):
            assert by_name.get_stats().max_cache_size > 0
    with CacheClient(f"ipv4:127.0.0.1:{port}") as by_ip:
        assert by_ip.get_server_info().embedding_dimension == 384


def test_a_closed_client_says_so(cache_server: ServiceProcess) -> None:
    client = CacheClient(cache_server.address)
    client.close()
    with pytest.raises(RuntimeError, match="closed"):
        client.get_stats()
