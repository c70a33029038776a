"""semcache_client's call plan, options and error mapping, without a server: which failures
are retried, where each try goes, how long it waits, what the caller finally sees."""

from __future__ import annotations

import inspect
import json
from collections.abc import AsyncIterator, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import grpc
import pytest

from semcache_client import (
    AsyncCacheClient,
    AsyncChatStream,
    AsyncEmbedderClient,
    CacheClient,
    ChatChunk,
    ChatCompletion,
    ChatHit,
    ChatStored,
    ChatStream,
    ChatUpstreamError,
    DeadlineExceeded,
    EmbedderClient,
    ErrorAccounting,
    ErrorReason,
    HitPolicy,
    InvalidArgument,
    SearchStrategy,
    SemcacheError,
    Unavailable,
)
from semcache_client import _cache_rpcs as cache_rpcs
from semcache_client import _embedding_rpcs as embedding_rpcs
from semcache_client._calls import AddressRotation, CallPlan, Rpc, check_request_id
from semcache_client.config import ClientConfig, RetryPolicy, Timeouts, TlsConfig, parse_addresses
from semcache_client.errors import REASON_KEY, error_class, reason_in


@dataclass
class Failure:
    """A failed call as grpc reports it."""

    status: grpc.StatusCode
    message: str = "failed"
    metadata: tuple[tuple[str, str], ...] = ()

    def code(self) -> grpc.StatusCode:
        return self.status

    def details(self) -> str | None:
        return self.message

    def trailing_metadata(self) -> object:
        return self.metadata


UNAVAILABLE = Failure(grpc.StatusCode.UNAVAILABLE, "connection refused")
NO_JITTER = RetryPolicy(max_attempts=3, initial_backoff_s=0.01, multiplier=2.0, jitter=0.0)


def plan(
    rpc: Rpc[Any, Any],
    addresses: tuple[str, ...] = ("a:1", "b:2", "c:3"),
    retry: RetryPolicy = NO_JITTER,
    timeout_s: float | None = 5.0,
    request_id: str | None = "rid-1",
) -> CallPlan:
    config = ClientConfig.build(list(addresses), retry=retry)
    return CallPlan(config, rpc, AddressRotation(addresses), timeout_s, request_id)


def test_an_idempotent_call_is_retried_on_unavailable_at_the_next_address_with_backoff() -> None:
    p = plan(cache_rpcs.SEARCH)
    tried = []
    waits = []
    for _ in range(2):
        index, remaining_s = p.next_try()
        tried.append(index)
        assert 0 < remaining_s <= 5.0
        waits.append(p.failed(UNAVAILABLE))
    index, _ = p.next_try()
    tried.append(index)
    assert tried == [0, 1, 2]  # every address once
    assert waits == [pytest.approx(0.01), pytest.approx(0.02)]
    with pytest.raises(Unavailable) as info:
        p.failed(UNAVAILABLE)  # the third try was the last
    assert info.value.attempts == 3 and info.value.address == "c:3"
    assert info.value.request_id == "rid-1" and info.value.method == "Search"


@pytest.mark.parametrize("rpc", [cache_rpcs.QUERY, cache_rpcs.SUBMIT_FEEDBACK])
def test_a_call_that_is_not_idempotent_is_never_retried(rpc: Rpc[Any, Any]) -> None:
    p = plan(rpc)
    p.next_try()
    with pytest.raises(Unavailable) as info:
        p.failed(UNAVAILABLE)
    assert info.value.attempts == 1


def test_only_unavailable_is_retried() -> None:
    p = plan(cache_rpcs.SEARCH)
    p.next_try()
    bad = Failure(grpc.StatusCode.INVALID_ARGUMENT, "bad", ((REASON_KEY, "invalid-input"),))
    with pytest.raises(InvalidArgument) as info:
        p.failed(bad)
    assert info.value.reason is ErrorReason.INVALID_INPUT and info.value.attempts == 1
    p = plan(cache_rpcs.SEARCH)
    p.next_try()
    with pytest.raises(SemcacheError) as other:
        p.failed(Failure(grpc.StatusCode.RESOURCE_EXHAUSTED, "queue full"))
    assert other.value.code == grpc.StatusCode.RESOURCE_EXHAUSTED


def test_no_retry_starts_when_its_backoff_would_pass_the_deadline() -> None:
    slow = RetryPolicy(max_attempts=5, initial_backoff_s=10.0, max_backoff_s=10.0, jitter=0.0)
    p = plan(cache_rpcs.GET_STATS, retry=slow, timeout_s=0.5)
    p.next_try()
    with pytest.raises(DeadlineExceeded) as info:
        p.failed(UNAVAILABLE)
    assert "connection refused" in info.value.message
    assert isinstance(info.value.__cause__, Unavailable)


def test_idempotency_of_each_method() -> None:
    streams = {cache_rpcs.CHAT.name, cache_rpcs.REINDEX.name, cache_rpcs.EXPORT_ENTRIES.name}
    never = {cache_rpcs.QUERY.name, cache_rpcs.SUBMIT_FEEDBACK.name, *streams}
    rpcs = [v for v in vars(cache_rpcs).values() if isinstance(v, Rpc)]
    rpcs += [v for v in vars(embedding_rpcs).values() if isinstance(v, Rpc)]
    assert len(rpcs) == 20
    for rpc in rpcs:
        assert rpc.idempotent == (rpc.name not in never), rpc.name
        assert rpc.server_streaming == (rpc.name in streams), rpc.name
    with pytest.raises(ValueError, match="never retried"):
        Rpc("s", "M", Failure, Failure, idempotent=True, server_streaming=True)  # type: ignore[type-var]


def test_a_failed_stream_is_never_retried() -> None:
    p = plan(cache_rpcs.CHAT)
    p.next_try()
    error = p.error(UNAVAILABLE)
    assert isinstance(error, Unavailable) and error.attempts == 1 and error.method == "Chat"
    with pytest.raises(Unavailable):
        p.failed(UNAVAILABLE)


def test_default_deadlines_by_kind_of_call() -> None:
    timeouts = Timeouts(default_s=3.0, query_s=40.0, bulk_s=20.0)
    config = ClientConfig.build("a:1", timeouts=timeouts)
    rotation = AddressRotation(["a:1"])
    cases: list[tuple[Rpc[Any, Any], float]] = [
        (cache_rpcs.QUERY, 40.0),
        (cache_rpcs.CHAT, 40.0),
        (cache_rpcs.FLUSH, 20.0),
        (cache_rpcs.DELETE_ENTRIES, 20.0),
        (cache_rpcs.SEARCH, 3.0),
        (embedding_rpcs.EMBED, 3.0),
    ]
    for rpc, expected in cases:
        _, remaining_s = CallPlan(config, rpc, rotation, None, None).next_try()
        assert expected - 0.5 < remaining_s <= expected, rpc.name
    with pytest.raises(ValueError, match="timeout"):
        CallPlan(config, cache_rpcs.SEARCH, rotation, 0.0, None)


def test_request_ids_given_made_by_the_factory_or_generated() -> None:
    rotation = AddressRotation(["a:1"])
    config = ClientConfig.build("a:1")
    given = CallPlan(config, cache_rpcs.SEARCH, rotation, None, "trace-7")
    assert given.request_id == "trace-7"
    assert ("x-request-id", "trace-7") in given.metadata
    generated = CallPlan(config, cache_rpcs.SEARCH, rotation, None, None).request_id
    assert len(generated) == 32 and int(generated, 16) >= 0
    from_factory = ClientConfig.build("a:1", request_id_factory=lambda: "incoming-9")
    assert CallPlan(from_factory, cache_rpcs.SEARCH, rotation, None, None).request_id == (
        "incoming-9"
    )
    nothing = ClientConfig.build("a:1", request_id_factory=lambda: None)
    assert len(CallPlan(nothing, cache_rpcs.SEARCH, rotation, None, None).request_id) == 32
    for bad in ["", "x" * 129, 'quo"te', "tab\there", "é"]:
        with pytest.raises(ValueError):
            check_request_id(bad)
    with pytest.raises(ValueError, match="per call"):
        ClientConfig.build("a:1", metadata=[("X-Request-Id", "fixed")])


def test_round_robin_starts_each_call_on_the_next_address_and_puts_failing_ones_last() -> None:
    rotation = AddressRotation(["a:1", "b:2", "c:3"], cooldown_s=60.0)
    assert [rotation.order()[0] for _ in range(4)] == [0, 1, 2, 0]
    rotation.record(1, unavailable=True)
    for _ in range(3):
        assert rotation.order()[-1] == 1
    rotation.record(1, unavailable=False)
    assert sorted(rotation.order()[0] for _ in range(3)) == [0, 1, 2]
    expired = AddressRotation(["a:1", "b:2"], cooldown_s=0.0)
    expired.record(0, unavailable=True)
    assert expired.order()[0] == 0  # the cooldown is over: its turn again


def test_addresses() -> None:
    assert parse_addresses("a:1, b:2,") == ["a:1", "b:2"]
    assert parse_addresses(["a:1", "dns:///cache:50051"]) == ["a:1", "dns:///cache:50051"]
    assert parse_addresses("ipv4:10.0.0.1:1,10.0.0.2:1") == ["ipv4:10.0.0.1:1,10.0.0.2:1"]
    assert parse_addresses("[::1]:50051") == ["[::1]:50051"]
    for bad in ["", " , ", "cache-server"]:
        with pytest.raises(ValueError):
            parse_addresses(bad)


def test_retry_policy_backoff_grows_to_its_cap_with_bounded_jitter() -> None:
    exact = RetryPolicy(initial_backoff_s=0.1, max_backoff_s=0.5, multiplier=3.0, jitter=0.0)
    assert [exact.backoff_s(n) for n in (1, 2, 3)] == [
        pytest.approx(0.1),
        pytest.approx(0.3),
        pytest.approx(0.5),
    ]
    jittered = RetryPolicy(initial_backoff_s=1.0, max_backoff_s=1.0, jitter=0.2)
    assert all(0.8 <= jittered.backoff_s(1) <= 1.2 for _ in range(100))
    for bad in [{"max_attempts": 0}, {"multiplier": 0.5}, {"jitter": 1.0}]:
        with pytest.raises(ValueError):
            RetryPolicy(**bad)  # type: ignore[arg-type]
    with pytest.raises(ValueError):
        Timeouts(default_s=0)


def test_tls_options(tmp_path: Path) -> None:
    (tmp_path / "ca.pem").write_bytes(b"CA")
    tls = TlsConfig.from_files(ca_file=tmp_path / "ca.pem", server_name="cache-server")
    assert tls.ca_cert == b"CA"
    config = ClientConfig.build("a:1", tls=tls, channel_options=[("grpc.lb_policy_name", "x")])
    options = dict(config.all_channel_options())
    assert options["grpc.ssl_target_name_override"] == "cache-server"
    assert options["grpc.lb_policy_name"] == "x"  # the caller's option replaces the default
    with pytest.raises(ValueError, match="go together"):
        TlsConfig(client_cert=b"cert")
    with pytest.raises(FileNotFoundError):
        TlsConfig.from_files(ca_file=tmp_path / "missing.pem")


def test_status_codes_map_to_exception_classes_and_reasons_are_read() -> None:
    assert error_class(grpc.StatusCode.INVALID_ARGUMENT) is InvalidArgument
    assert error_class(grpc.StatusCode.UNAVAILABLE) is Unavailable
    assert error_class(grpc.StatusCode.DEADLINE_EXCEEDED) is DeadlineExceeded
    for code in grpc.StatusCode:
        if code is not grpc.StatusCode.OK:
            assert issubclass(error_class(code), SemcacheError), code
    assert reason_in(((REASON_KEY, "store-full"),)) is ErrorReason.STORE_FULL
    assert reason_in(((REASON_KEY, "a-reason-from-the-future"),)) is None
    assert reason_in(None) is None and reason_in(()) is None
    error = Unavailable(
        grpc.StatusCode.UNAVAILABLE,
        "down",
        reason=ErrorReason.EMBEDDER_UNAVAILABLE,
        request_id="rid-5",
        method="Search",
        address="a:1",
        attempts=3,
    )
    assert (
        "rid-5" in str(error) and "embedder-unavailable" in str(error) and "3 tries" in str(error)
    )


def test_the_client_knows_every_reason_the_server_sends() -> None:
    from service_runtime import error_reasons

    assert REASON_KEY == error_reasons.REASON_KEY
    assert {r.value for r in ErrorReason} == {r.value for r in error_reasons.ErrorReason}


@pytest.mark.parametrize(
    ("sync", "asynchronous"),
    [(CacheClient, AsyncCacheClient), (EmbedderClient, AsyncEmbedderClient)],
)
def test_the_sync_and_async_clients_offer_the_same_methods(
    sync: type[object], asynchronous: type[object]
) -> None:
    def public(cls: type[object]) -> dict[str, inspect.Signature]:
        return {
            name: inspect.signature(member)
            for name, member in vars(cls).items()
            if callable(member) and not name.startswith("_")
        }

    sync_methods, async_methods = public(sync), public(asynchronous)
    # Streams: a plain method returning an iterator, or (asyncio) an async iterator.
    streams = {"chat": ("ChatStream", "AsyncChatStream")} if sync is CacheClient else {}
    for name, (sync_type, async_type) in streams.items():
        assert sync_methods[name].return_annotation == sync_type
        assert async_methods[name].return_annotation == async_type
        assert not inspect.iscoroutinefunction(getattr(asynchronous, name))
        for methods in (sync_methods, async_methods):
            methods[name] = methods[name].replace(return_annotation="a stream")
    assert sync_methods == async_methods
    for name in async_methods:
        if name not in streams:
            assert inspect.iscoroutinefunction(getattr(asynchronous, name)), name
    assert issubclass(ChatStream, Iterator) and issubclass(AsyncChatStream, AsyncIterator)
    assert not issubclass(ChatStream, AsyncIterator) and not issubclass(AsyncChatStream, Iterator)


def test_the_client_uses_the_repositorys_stubs_so_one_process_holds_one_copy() -> None:
    from protos.semcache.cache.v1 import cache_pb2
    from protos.semcache.embedding.v1 import embedding_pb2
    from semcache_client import _stubs

    assert _stubs.cache_pb is cache_pb2 and _stubs.embedding_pb is embedding_pb2
    assert _stubs.CACHE_SERVICE == "semcache.cache.v1.CacheService"
    # Every method of the service has a client method, streams as streams.
    service = cache_pb2.DESCRIPTOR.services_by_name["CacheService"]
    methods = {m.name: m.server_streaming for m in service.methods}
    assert methods == {
        v.name: v.server_streaming for v in vars(cache_rpcs).values() if isinstance(v, Rpc)
    }
    assert not any(m.client_streaming for m in service.methods)


def test_chat_requests_and_events_are_typed_both_ways() -> None:
    from protos.semcache.cache.v1 import cache_pb2 as pb

    def request(body: Any, stream: bool | None) -> Any:
        return cache_rpcs.chat_request(
            "p",
            body,
            cache_id="c",
            attributes=None,
            stream=stream,
            cacheable=True,
            use_cache=True,
            similarity_threshold=None,
            ttl_seconds=None,
        )

    asks = request({"stream": True, "text": "café"}, None)
    assert asks.stream and json.loads(asks.body_json) == {"stream": True, "text": "café"}
    assert not request({"stream": False}, None).stream and request({}, True).stream
    assert not request(["not", "an", "object"], None).stream  # the server refuses it
    assert asks.HasField("use_cache") and not asks.HasField("ttl_seconds")
    with pytest.raises(ValueError):
        request({"temperature": float("nan")}, None)  # not JSON

    entry = pb.Entry(id="e" * 32, prompt="q", response="a", created_at=1.0)
    hit = pb.ChatHit(entry=entry, similarity=0.9, strategy=pb.SEARCH_STRATEGY_SEMANTIC)
    failure = pb.ChatUpstreamError(status=429, body="{}", message="HTTP 429")
    cases: list[tuple[Any, object]] = [
        (pb.ChatEvent(hit=hit), ChatHit(cache_rpcs.entry(entry), 0.9, SearchStrategy.SEMANTIC)),
        (pb.ChatEvent(chunk_json='{"a": 1}'), ChatChunk('{"a": 1}')),
        (pb.ChatEvent(completion_json="{}"), ChatCompletion("{}")),
        (pb.ChatEvent(upstream_error=failure), ChatUpstreamError(429, "{}", "HTTP 429")),
        (pb.ChatEvent(stored=pb.ChatStored(entry_id="e" * 32)), ChatStored("e" * 32)),
        (pb.ChatEvent(stored=pb.ChatStored()), ChatStored(None)),
        (pb.ChatEvent(), None),  # a kind this client does not know: skipped
    ]
    for message, expected in cases:
        assert cache_rpcs.chat_event(message) == expected
    assert ChatChunk('{"a": 1}').data == {"a": 1}
    event = cache_rpcs.chat_event(pb.ChatEvent(hit=hit))
    assert isinstance(event, ChatHit) and event.entry.expires_at is None


def test_policy_arguments_and_error_accounting_reach_the_requests() -> None:
    from protos.semcache.cache.v1 import cache_pb2 as pb

    def query(accounting: ErrorAccounting | str | None) -> Any:
        return cache_rpcs.query_request(
            "q",
            cache_id="c",
            use_cache=True,
            similarity_threshold=None,
            attributes=None,
            ttl_seconds=None,
            policy=HitPolicy.VERIFIED,
            max_error_rate=0.05,
            error_accounting=accounting,
        )

    def search(accounting: ErrorAccounting | str | None) -> Any:
        return cache_rpcs.search_request(
            "q",
            cache_id="c",
            similarity_threshold=None,
            max_results=1,
            attributes=None,
            strategies=(),
            policy="verified",
            max_error_rate=None,
            error_accounting=accounting,
        )

    def policy(accounting: ErrorAccounting | str | None) -> Any:
        return cache_rpcs.policy_request(
            HitPolicy.VERIFIED, cache_id="c", max_error_rate=0.1, error_accounting=accounting
        )

    expected = [
        (None, pb.ERROR_ACCOUNTING_UNSPECIFIED),
        (ErrorAccounting.HITS, pb.ERROR_ACCOUNTING_HITS),
        ("hits", pb.ERROR_ACCOUNTING_HITS),
        (ErrorAccounting.REQUESTS, pb.ERROR_ACCOUNTING_REQUESTS),
        ("requests", pb.ERROR_ACCOUNTING_REQUESTS),
    ]
    for build in (query, search, policy):
        for given, wire in expected:
            request = build(given)
            assert request.error_accounting == wire
            assert request.policy == pb.HIT_POLICY_VERIFIED
        with pytest.raises(ValueError):
            build("misses")  # unknown: refused before the call, as an unknown policy is
    assert query(None).max_error_rate == 0.05 and not search(None).HasField("max_error_rate")

    # What the server reports back.
    reply = pb.CachePolicy(
        cache_id="c",
        policy="verified",
        max_error_rate=0.1,
        source="cache",
        error_accounting="requests",
    )
    assert cache_rpcs.cache_policy(reply).error_accounting == ErrorAccounting.REQUESTS
    learned = pb.LearnedThresholds(
        entries=2,
        serving_level=0.25,
        prior="calibrated",
        shift=-0.5,
        window_requests=40,
        window_candidates=12,
    )
    stats = cache_rpcs.cache_stats(
        pb.GetStatsResponse(cache_id="c", error_accounting="hits", learned=learned)
    )
    assert stats.error_accounting == "hits" and stats.learned is not None
    assert (stats.learned.serving_level, stats.learned.prior, stats.learned.shift) == (
        0.25,
        "calibrated",
        -0.5,
    )
    assert (stats.learned.window_requests, stats.learned.window_candidates) == (40, 12)
