"""Traces across the three real processes, exported over OTLP/gRPC to an in-memory receiver
(tests/otlp_receiver.py): one trace per REST request spans the gateway, the cache server and
the embedder, parent to child across each hop; a miss has the upstream call in it, a hit the
store search and no upstream call. And spans still held when a process is stopped are sent."""

from __future__ import annotations

import os
import secrets
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest

from bench.qqp import QuestionPair
from tests.fake_llm import FakeLLM
from tests.otlp_receiver import CLIENT, INTERNAL, SERVER, OtlpReceiver, ReceivedSpan
from tests.processes import GatewayProcess, ServiceProcess, cache_server_process, free_port

pytestmark = pytest.mark.slow

GATEWAY, CACHE, EMBEDDER = "semcache-gateway", "semcache-cache-server", "semcache-embedder"
QUERY_RPC = "semcache.cache.v1.CacheService/Query"
EMBED_RPC = "semcache.embedding.v1.EmbeddingService/Embed"


def traced_env(receiver: OtlpReceiver, delay_ms: int = 100) -> dict[str, str]:
    """What turns traces on: the endpoint, and a short export delay (the default is 5 s)."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("OTEL_")}
    return env | {
        "OTEL_EXPORTER_OTLP_ENDPOINT": receiver.endpoint,
        "OTEL_BSP_SCHEDULE_DELAY": str(delay_ms),
    }


@pytest.fixture(scope="module")
def receiver() -> Iterator[OtlpReceiver]:
    with OtlpReceiver() as running:
        yield running


@pytest.fixture(scope="module")
def traced_gateway(
    receiver: OtlpReceiver,
    minilm_dir: Path,
    tmp_path_factory: pytest.TempPathFactory,
    llm: FakeLLM,
) -> Iterator[str]:
    env = traced_env(receiver)
    model = ("--model-dir", str(minilm_dir), "--intra-op-threads", "2")
    with ServiceProcess("embedder", *model, env=env) as embedder:
        data = tmp_path_factory.mktemp("traced")
        with (
            cache_server_process(
                data, embedder.address, "--upstream-base-url", llm.base_url, env=env
            ) as cache,
            GatewayProcess(cache.address, env=env) as gateway,
        ):
            yield gateway.url


def ask(url: str, query: str) -> tuple[str, str, dict[str, object]]:
    """POST /query as a traced client would: with its own `traceparent`. Returns the trace id,
    the client's span id (the gateway span's parent) and the answer."""
    trace_id, parent = secrets.token_hex(16), secrets.token_hex(8)
    reply = httpx.post(
        f"{url}/query",
        json={"query": query, "similarity_threshold": 0.7},
        headers={"traceparent": f"00-{trace_id}-{parent}-01"},
        timeout=30,
    )
    assert reply.status_code == 200, reply.text
    return trace_id, parent, reply.json()


def one(spans: list[ReceivedSpan], service: str, name: str, kind: int) -> ReceivedSpan:
    found = [s for s in spans if (s.service, s.name, s.kind) == (service, name, kind)]
    assert len(found) == 1, f"{service} {name}: {len(found)} spans in {spans}"
    return found[0]


def descends(span: ReceivedSpan, ancestor: ReceivedSpan, spans: list[ReceivedSpan]) -> bool:
    by_id = {s.span_id: s for s in spans}
    at: ReceivedSpan | None = span
    while at is not None:
        if at.parent_id == ancestor.span_id:
            return True
        at = by_id.get(at.parent_id)
    return False


def check_trace(
    receiver: OtlpReceiver, trace_id: str, client_span: str, *, miss: bool
) -> list[ReceivedSpan]:
    """The spans of one /query, checked hop by hop; returns them."""

    def complete(spans: list[ReceivedSpan]) -> bool:
        names = {(s.service, s.name) for s in spans if s.trace_id == trace_id}
        wanted = {
            (GATEWAY, "POST /query"),
            (GATEWAY, QUERY_RPC),
            (CACHE, QUERY_RPC),
            (CACHE, EMBED_RPC),
            (CACHE, "store.search"),
            (EMBEDDER, EMBED_RPC),
        }
        upstream = any(name.startswith("chat ") for _, name in names)
        return wanted <= names and upstream == miss

    receiver.wait_for(complete)
    spans = receiver.trace(trace_id)
    assert {GATEWAY, CACHE, EMBEDDER} <= {s.service for s in spans}

    rest = one(spans, GATEWAY, "POST /query", SERVER)
    assert rest.parent_id == client_span  # the caller's traceparent header
    assert rest.attributes["http.route"] == "/query"
    assert rest.attributes["http.response.status_code"] == 200
    query_call = one(spans, GATEWAY, QUERY_RPC, CLIENT)
    assert query_call.parent_id == rest.span_id
    query = one(spans, CACHE, QUERY_RPC, SERVER)
    assert query.parent_id == query_call.span_id  # the context came in the call's metadata
    assert query.attributes["rpc.grpc.status_code"] == 0
    embed_call = one(spans, CACHE, EMBED_RPC, CLIENT)
    assert descends(embed_call, query, spans)
    embed = one(spans, EMBEDDER, EMBED_RPC, SERVER)
    assert embed.parent_id == embed_call.span_id
    # Every span but the gateway's hangs off another span of this trace.
    ids = {s.span_id for s in spans}
    assert all(s.parent_id in ids for s in spans if s is not rest)

    search = one(spans, CACHE, "store.search", INTERNAL)
    assert descends(search, query, spans)
    assert search.attributes["semcache.store.found"] == (0 if miss else 1)
    upstream = [s for s in spans if s.attributes.get("gen_ai.operation.name") == "chat"]
    if miss:
        assert len(upstream) == 1 and upstream[0].kind == CLIENT
        assert descends(upstream[0], query, spans) and upstream[0].service == CACHE
    else:
        assert upstream == []

    # The embedding ran in a batch: its own span, linked to the request it served, and an
    # event on the request's span that names it.
    batch = receiver.wait_for(
        lambda received: any((trace_id, embed.span_id) in s.links for s in received)
    )
    [batch_span] = [s for s in batch if (trace_id, embed.span_id) in s.links]
    assert batch_span.name == "embedder.batch" and batch_span.service == EMBEDDER
    assert batch_span.trace_id != trace_id and batch_span.attributes["semcache.batch.texts"] >= 1
    [named] = [attributes for name, attributes in embed.events if name == "embedder.batch"]
    assert named["semcache.batch.span_id"] == batch_span.span_id
    return spans


def test_one_trace_spans_the_three_processes_for_a_miss_and_a_hit(
    traced_gateway: str, receiver: OtlpReceiver, qqp_pairs: list[QuestionPair], llm: FakeLLM
) -> None:
    pair = next(p for p in qqp_pairs if p.duplicate and 30 < len(p.text_a) < 70)
    calls = llm.calls

    trace_id, client_span, answer = ask(traced_gateway, pair.text_a)
    assert answer["cache_hit"] is False and llm.calls == calls + 1
    check_trace(receiver, trace_id, client_span, miss=True)

    # A paraphrase: a semantic hit, so the embedder is asked again.
    trace_id, client_span, answer = ask(traced_gateway, pair.text_b)
    assert answer["cache_hit"] is True and llm.calls == calls + 1
    check_trace(receiver, trace_id, client_span, miss=False)


def test_spans_still_held_are_sent_when_a_process_stops(
    receiver: OtlpReceiver, tmp_path: Path
) -> None:
    """Spans wait a minute to be sent here: only the flush at shutdown (SIGTERM) sends them."""
    env = traced_env(receiver, delay_ms=60_000)
    nowhere = f"127.0.0.1:{free_port()}"  # no embedder: GetStats needs none
    with cache_server_process(tmp_path / "data", nowhere, env=env) as cache:
        gateway = GatewayProcess(cache.address, env=env).start()
        trace_id = secrets.token_hex(16)
        headers = {"traceparent": f"00-{trace_id}-{secrets.token_hex(8)}-01"}
        assert httpx.get(f"{gateway.url}/cache/stats", headers=headers).status_code == 200
        assert receiver.trace(trace_id) == []
        gateway.stop()
        assert cache.terminate() == 0
    spans = receiver.wait_for(
        lambda received: {GATEWAY, CACHE} <= {s.service for s in received if s.trace_id == trace_id}
    )
    assert any(s.name == "GET /cache/stats" for s in spans if s.trace_id == trace_id)
