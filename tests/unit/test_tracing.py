"""service_runtime.tracing: off (nothing installed, nothing loaded) unless an OTLP endpoint is
set; when on, spans with the right parents, links and statuses, in process with an in-memory
exporter (the three real processes: tests/integration/test_tracing.py)."""

from __future__ import annotations

import asyncio
import os
import subprocess
import sys
from collections.abc import AsyncIterator, Iterator
from typing import Any

import grpc
import pytest
from opentelemetry import trace
from opentelemetry.sdk.trace import ReadableSpan, TracerProvider
from opentelemetry.sdk.trace.export import SimpleSpanProcessor
from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter
from opentelemetry.trace import SpanKind, StatusCode

from service_runtime import tracing, tracing_grpc
from service_runtime.grpc_service import GrpcService, UnaryCallInterceptor
from service_runtime.tls import ClientTls
from tests.processes import REPO

ENDPOINT = {"OTEL_EXPORTER_OTLP_ENDPOINT": "http://127.0.0.1:4317"}


@pytest.mark.parametrize(
    ("env", "on"),
    [
        ({}, False),
        (ENDPOINT, True),
        ({"OTEL_EXPORTER_OTLP_TRACES_ENDPOINT": "http://collector:4317"}, True),
        (ENDPOINT | {"OTEL_SDK_DISABLED": "true"}, False),
        (ENDPOINT | {"OTEL_SDK_DISABLED": "TRUE"}, False),
        (ENDPOINT | {"OTEL_TRACES_EXPORTER": "none"}, False),
        (ENDPOINT | {"OTEL_TRACES_EXPORTER": "otlp"}, True),
        (ENDPOINT | {"OTEL_EXPORTER_OTLP_PROTOCOL": "grpc"}, True),
        (
            ENDPOINT
            | {
                "OTEL_EXPORTER_OTLP_PROTOCOL": "http/protobuf",
                "OTEL_EXPORTER_OTLP_TRACES_PROTOCOL": "grpc",
            },
            True,
        ),
    ],
)
def test_traces_are_wanted_only_with_an_endpoint(env: dict[str, str], on: bool) -> None:
    assert tracing.wanted(env) is on


@pytest.mark.parametrize(
    "env",
    [
        ENDPOINT | {"OTEL_EXPORTER_OTLP_PROTOCOL": "http/protobuf"},
        ENDPOINT | {"OTEL_TRACES_EXPORTER": "console"},
        {"OTEL_TRACES_EXPORTER": "zipkin"},
    ],
)
def test_settings_it_cannot_honour_are_refused(env: dict[str, str]) -> None:
    with pytest.raises(tracing.TracingConfigError):
        tracing.wanted(env)


async def test_off_installs_nothing(monkeypatch: pytest.MonkeyPatch) -> None:
    for name in [n for n in os.environ if n.startswith("OTEL_")]:
        monkeypatch.delenv(name)
    assert tracing.setup_tracing("cache_server") is False
    assert not tracing.enabled()
    assert not isinstance(trace.get_tracer_provider(), TracerProvider)
    service = GrpcService(host="127.0.0.1", port=0, service_names=[])
    assert [type(i) for i in service.interceptors] == [UnaryCallInterceptor]
    assert tracing_grpc.client_interceptors() == []
    # Every helper is the one shared do-nothing context manager.
    assert tracing.span("store.search", {"semcache.k": 1}) is tracing.span("other")
    assert tracing.batch_span("embedder.batch", iter(()), {}) is tracing.span("other")
    assert tracing.caller() is None
    tracing.flush()  # nothing to send


def test_off_loads_neither_the_tracing_sdk_nor_the_exporter() -> None:
    """Each service's start-up with no OTEL_* set, in a fresh interpreter. (redis-py loads
    the SDK's metrics part on import, wherever the SDK is installed: not ours to skip.)"""
    script = (
        "import sys\n"
        "from service_runtime.settings import start_service\n"
        "from cache_server.settings import CacheSettings\n"
        "from embedder.settings import EmbedderSettings\n"
        "from gateway.settings import GatewaySettings\n"
        "import gateway.app, cache_server.server, embedder.server\n"
        "for cls, name in [(CacheSettings, 'cache_server'), (EmbedderSettings, 'embedder'),"
        " (GatewaySettings, 'gateway')]:\n"
        "    assert start_service(cls, [], name) is not None\n"
        "loaded = [m for m in sys.modules if m.startswith(('opentelemetry.sdk.trace', "
        "'opentelemetry.exporter'))]\n"
        "assert not loaded, loaded\n"
    )
    env = {k: v for k, v in os.environ.items() if not k.startswith("OTEL_")}
    done = subprocess.run(
        [sys.executable, "-c", script], cwd=REPO, env=env, capture_output=True, text=True
    )
    assert done.returncode == 0, done.stderr


@pytest.fixture()
def exported() -> Iterator[InMemorySpanExporter]:
    """Tracing on, in this process, into memory (the global provider left alone)."""
    exporter = InMemorySpanExporter()
    provider = TracerProvider()
    provider.add_span_processor(SimpleSpanProcessor(exporter))
    tracing.install(provider)
    yield exporter
    tracing.uninstall()
    provider.shutdown()


def named(exporter: InMemorySpanExporter, name: str) -> ReadableSpan:
    [span] = [s for s in exporter.get_finished_spans() if s.name == name]
    return span


def test_a_span_records_what_escapes_it(exported: InMemorySpanExporter) -> None:
    with pytest.raises(ValueError), tracing.span("outer", {"semcache.k": 3}) as outer:
        assert outer is not None and trace.get_current_span() is outer
        with tracing.span("inner"):
            raise ValueError("boom")
    inner, outer_span = named(exported, "inner"), named(exported, "outer")
    assert inner.parent is not None and inner.parent.span_id == outer_span.context.span_id
    assert outer_span.attributes == {"semcache.k": 3}
    assert outer_span.status.status_code is StatusCode.ERROR
    assert [e.name for e in inner.events] == ["exception"]


async def test_an_async_span_never_becomes_current(exported: InMemorySpanExporter) -> None:
    async def chunks() -> AsyncIterator[int]:
        async with tracing.async_span("chat demo", kind=SpanKind.CLIENT) as streaming:
            assert trace.get_current_span() is not streaming
            yield 1
            yield 2

    with tracing.span("request"):
        assert [c async for c in chunks()] == [1, 2]
    stream = named(exported, "chat demo")
    assert stream.kind is SpanKind.CLIENT and stream.status.status_code is StatusCode.UNSET


def test_a_batch_links_the_requests_it_serves(exported: InMemorySpanExporter) -> None:
    with tracing.span("first") as first, tracing.span("second") as second:
        callers = [tracing.caller(), tracing.caller(), None]
        assert callers[0] is second and first is not None
        with tracing.span("third"):
            callers.append(tracing.caller())
        with tracing.batch_span("embedder.batch", iter(callers), {"semcache.batch.texts": 4}):
            pass
    batch = named(exported, "embedder.batch")
    assert batch.parent is None  # a trace of its own
    assert batch.attributes == {"semcache.batch.texts": 4, "semcache.batch.requests": 2}
    linked = {link.context.span_id for link in batch.links}
    assert linked == {
        named(exported, "second").context.span_id,
        named(exported, "third").context.span_id,
    }
    third = named(exported, "third")
    assert third.events == ()  # ended before the batch: no event on it
    [event] = named(exported, "second").events
    assert event.name == "embedder.batch"
    assert event.attributes is not None
    assert event.attributes["semcache.batch.span_id"] == trace.format_span_id(batch.context.span_id)


async def _echo(request: bytes, context: grpc.aio.ServicerContext[Any, Any]) -> bytes:
    if request == b"fail":
        await context.abort(grpc.StatusCode.INTERNAL, "failed on purpose")
    if request == b"missing":
        await context.abort(grpc.StatusCode.NOT_FOUND, "no such thing")
    return request


async def _count(request: bytes, context: grpc.aio.ServicerContext[Any, Any]) -> Any:
    for i in range(int(request)):
        yield str(i).encode()


async def test_grpc_calls_carry_the_trace_context(exported: InMemorySpanExporter) -> None:
    service = GrpcService(host="127.0.0.1", port=0, service_names=["semcache.test.v1.Echo"])
    assert isinstance(service.interceptors[0], tracing_grpc.TracingServerInterceptor)
    handler = grpc.method_handlers_generic_handler(
        "semcache.test.v1.Echo",
        {
            "Say": grpc.unary_unary_rpc_method_handler(_echo),
            "Count": grpc.unary_stream_rpc_method_handler(_count),
        },
    )
    service.server.add_generic_rpc_handlers((handler,))
    await service.start()
    channel = ClientTls().channel(f"127.0.0.1:{service.port}")
    try:
        say: grpc.aio.UnaryUnaryMultiCallable[bytes, bytes] = channel.unary_unary(
            "/semcache.test.v1.Echo/Say"
        )
        count: grpc.aio.UnaryStreamMultiCallable[bytes, bytes] = channel.unary_stream(
            "/semcache.test.v1.Echo/Count"
        )
        with tracing.span("request"):
            assert await say(b"hi", timeout=5) == b"hi"
            with pytest.raises(grpc.aio.AioRpcError):
                await say(b"fail", timeout=5)
            with pytest.raises(grpc.aio.AioRpcError):
                await say(b"missing", timeout=5)
            assert [r async for r in count(b"3", timeout=5)] == [b"0", b"1", b"2"]
        await asyncio.sleep(0.1)  # client spans end once their call's status is read
    finally:
        await channel.close()
        await service.stop(0)
    spans = exported.get_finished_spans()
    request = named(exported, "request")
    clients = [s for s in spans if s.kind is SpanKind.CLIENT]
    servers = [s for s in spans if s.kind is SpanKind.SERVER]
    assert len(clients) == len(servers) == 4
    assert {s.name for s in servers} == {
        "semcache.test.v1.Echo/Say",
        "semcache.test.v1.Echo/Count",
    }
    for client in clients:
        assert client.parent is not None and client.parent.span_id == request.context.span_id
        [server] = [s for s in servers if s.parent and s.parent.span_id == client.context.span_id]
        assert server.context.trace_id == request.context.trace_id
        assert server.attributes is not None and client.attributes is not None
        code = server.attributes["rpc.grpc.status_code"]
        assert client.attributes["rpc.grpc.status_code"] == code
        # A client span fails on any status but OK; a server span only on a server's fault.
        assert (client.status.status_code is StatusCode.ERROR) is (code != 0)
        server_fault = code == grpc.StatusCode.INTERNAL.value[0]
        assert (server.status.status_code is StatusCode.ERROR) is server_fault
    # Health checks are not traced.
    assert not [s for s in spans if "Health" in s.name]


async def test_the_verifier_call_is_a_span(exported: InMemorySpanExporter) -> None:
    from cache_server.cross_encoder_band import Verifier, VerifierSettings
    from tests.unit.test_verification import FakeScorer, model

    for scorer in (FakeScorer({"grey": 0.9}), FakeScorer({}, fail=True)):
        verifier = Verifier(VerifierSettings(), scorer)
        band = verifier.band(model(), 0.85)
        assert band is not None
        await verifier.keep("asked", [("grey", 0.8)], band)
    asked, failed = [s for s in exported.get_finished_spans() if s.name == "verifier.score"]
    assert asked.attributes == {"semcache.verifier.model": "verifier", "semcache.verifier.pairs": 1}
    assert asked.status.status_code is StatusCode.UNSET
    assert failed.status.status_code is StatusCode.ERROR  # the embedder could not be reached
