"""Real embedder and cache-server processes over real sockets, a real HTTP upstream."""

from __future__ import annotations

import asyncio
import time
from collections.abc import Iterator
from pathlib import Path

import grpc
import pytest

from bench.qqp import QuestionPair
from protos.semcache.cache.v1 import cache_pb2 as pb
from protos.semcache.cache.v1 import cache_pb2_grpc as pb_grpc
from tests.fake_llm import FakeLLM
from tests.processes import ServiceProcess, cache_server_process, free_port

pytestmark = pytest.mark.slow


def cache_server(data_dir: Path, embedder: str, *args: str) -> ServiceProcess:
    return cache_server_process(data_dir, embedder, "--embedder-timeout-s", "2", *args)


@pytest.fixture()
def llm() -> Iterator[FakeLLM]:
    with FakeLLM() as server:
        yield server


@pytest.fixture()
def stub(tmp_path: Path, embedder_process: str, llm: FakeLLM) -> Iterator[pb_grpc.CacheServiceStub]:
    with cache_server(tmp_path, embedder_process, "--upstream-base-url", llm.base_url) as server:
        yield pb_grpc.CacheServiceStub(grpc.insecure_channel(server.address))


def test_qqp_paraphrase_hits_after_its_twin_is_stored_and_a_non_paraphrase_misses(
    stub: pb_grpc.CacheServiceStub, qqp_pairs: list[QuestionPair], llm: FakeLLM
) -> None:
    twin = next(p for p in qqp_pairs if p.duplicate and len(p.text_a) < 80)
    other = next(p for p in qqp_pairs if not p.duplicate and len(p.text_a) < 80)
    first = stub.Query(pb.QueryRequest(query=twin.text_a, similarity_threshold=0.7), timeout=10)
    assert not first.cache_hit and first.response == f"LLM answer to: {twin.text_a}"
    hit = stub.Query(pb.QueryRequest(query=twin.text_b, similarity_threshold=0.7), timeout=10)
    assert hit.cache_hit, (twin, hit)
    assert hit.response == first.response
    assert hit.cached_data.cached_query == twin.text_a
    assert 0.7 <= hit.cached_data.similarity_score < 1.0
    assert hit.cached_data.cache_timestamp > time.time() - 60
    assert hit.embedding_dimension == 384
    stub.Set(pb.SetRequest(prompt=other.text_a, response="stored"), timeout=10)
    miss = stub.Query(pb.QueryRequest(query=other.text_b), timeout=10)
    assert not miss.cache_hit
    assert llm.calls == 2


def test_per_request_threshold_and_search_order(stub: pb_grpc.CacheServiceStub) -> None:
    stub.Set(
        pb.SetRequest(prompt="How can I learn to play the guitar?", response="practice"), timeout=10
    )
    stub.Set(
        pb.SetRequest(prompt="How do I learn to play the piano?", response="scales"), timeout=10
    )
    query = "What is the best way to learn guitar?"
    loose = stub.Search(
        pb.SearchRequest(prompt=query, similarity_threshold=0.3, max_results=5), timeout=10
    )
    sims = [h.similarity for h in loose.hits]
    assert len(sims) == 2 and sims == sorted(sims, reverse=True)
    assert loose.hits[0].entry.response == "practice"
    strict = stub.Search(pb.SearchRequest(prompt=query, similarity_threshold=0.99), timeout=10)
    assert list(strict.hits) == []
    with pytest.raises(grpc.RpcError) as info:
        stub.Search(pb.SearchRequest(prompt=query, similarity_threshold=-0.1), timeout=10)
    assert info.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    exact = stub.Search(
        pb.SearchRequest(
            prompt="How do I learn to play the piano?",
            strategies=[pb.SEARCH_STRATEGY_EXACT, pb.SEARCH_STRATEGY_SEMANTIC],
        ),
        timeout=10,
    )
    assert exact.hits[0].strategy == pb.SEARCH_STRATEGY_EXACT and exact.hits[0].similarity == 1.0


def test_scoping_by_cache_and_attributes(stub: pb_grpc.CacheServiceStub) -> None:
    prompt = "How do I reset my password?"
    stub.Set(
        pb.SetRequest(
            cache_id="acme", prompt=prompt, response="acme way", attributes={"user": "u1"}
        ),
        timeout=10,
    )
    for cache_id, attributes, expected in [
        ("acme", {}, ["acme way"]),
        ("acme", {"user": "u1"}, ["acme way"]),
        ("acme", {"user": "u2"}, []),
        ("globex", {}, []),
        ("", {}, []),
    ]:
        reply = stub.Search(
            pb.SearchRequest(cache_id=cache_id, prompt=prompt, attributes=attributes), timeout=10
        )
        assert [h.entry.response for h in reply.hits] == expected, (cache_id, attributes)
    deleted = stub.DeleteEntries(
        pb.DeleteEntriesRequest(cache_id="acme", attributes={"user": "u1"}), timeout=10
    )
    assert deleted.deleted_count == 1


def test_lru_eviction_and_stats(tmp_path: Path, embedder_process: str) -> None:
    with cache_server(tmp_path, embedder_process, "--max-cache-size", "3") as server:
        stub = pb_grpc.CacheServiceStub(grpc.insecure_channel(server.address))
        ids = [
            stub.Set(pb.SetRequest(prompt=p, response=p.upper()), timeout=10).entry_id
            for p in ["first question", "second question", "third question"]
        ]
        assert stub.Query(pb.QueryRequest(query="first question"), timeout=10).cache_hit
        stub.Set(pb.SetRequest(prompt="fourth question", response="4"), timeout=10)
        with pytest.raises(grpc.RpcError) as info:
            stub.Delete(pb.DeleteRequest(entry_id=ids[1]), timeout=10)  # evicted already
        assert info.value.code() == grpc.StatusCode.NOT_FOUND
        stats = stub.GetStats(pb.GetStatsRequest(), timeout=10)
        assert (stats.cache_size, stats.max_cache_size, stats.evictions) == (3, 3, 1)
        assert stats.hits == 1 and stats.current_threshold == pytest.approx(0.85)
        assert stats.lookups_measured == 1 and stats.lookup_p99_ms > 0
        info_reply = stub.GetServerInfo(pb.GetServerInfoRequest(), timeout=10)
        assert info_reply.demo_responder and info_reply.upstream == "demo"
        demo = stub.Query(pb.QueryRequest(query="a brand new question"), timeout=10)
        assert "demo responder" in demo.response


def test_made_up_cache_ids_are_bounded(tmp_path: Path, embedder_process: str) -> None:
    # A caller inventing cache ids can neither open caches without end nor leave state behind.
    with cache_server(tmp_path, embedder_process, "--max-caches", "2") as server:
        stub = pb_grpc.CacheServiceStub(grpc.insecure_channel(server.address))
        for cache in ("alpha", "beta"):
            stub.Set(pb.SetRequest(cache_id=cache, prompt="q", response=cache), timeout=10)
        with pytest.raises(grpc.RpcError) as info:
            stub.Set(pb.SetRequest(cache_id="gamma", prompt="q", response="g"), timeout=10)
        assert info.value.code() == grpc.StatusCode.RESOURCE_EXHAUSTED
        assert "at most 2 caches (max_caches)" in str(info.value.details())
        # A miss under a new cache id would store its answer: refused before the LLM is asked.
        with pytest.raises(grpc.RpcError) as info:
            stub.Query(pb.QueryRequest(cache_id="delta", query="new question"), timeout=10)
        assert info.value.code() == grpc.StatusCode.RESOURCE_EXHAUSTED
        # Existing caches take more entries; look-ups anywhere still answer.
        stub.Set(pb.SetRequest(cache_id="alpha", prompt="another", response="a2"), timeout=10)
        for i in range(20):
            found = stub.Search(pb.SearchRequest(cache_id=f"ghost-{i}", prompt="q"), timeout=10)
            assert not found.hits
        ghost = stub.GetStats(pb.GetStatsRequest(cache_id="ghost-3"), timeout=10)
        assert (ghost.cache_size, ghost.hits, ghost.misses) == (0, 0, 0)
        # Flushing a cache makes room for another.
        stub.Flush(pb.FlushRequest(cache_id="beta"), timeout=10)
        stub.Set(pb.SetRequest(cache_id="gamma", prompt="q", response="g"), timeout=10)
        first = stub.Query(
            pb.QueryRequest(cache_id="alpha", query="brand new question"), timeout=10
        )
        assert not first.cache_hit
        stats = stub.GetStats(pb.GetStatsRequest(cache_id="alpha"), timeout=10)
        assert stats.misses == 1 and stats.cache_size == 3


def test_ttl_expiry(stub: pb_grpc.CacheServiceStub) -> None:
    stub.Set(
        pb.SetRequest(prompt="a fleeting question", response="gone soon", ttl_seconds=1), timeout=10
    )
    assert stub.Search(pb.SearchRequest(prompt="a fleeting question"), timeout=10).hits
    time.sleep(1.6)
    assert list(stub.Search(pb.SearchRequest(prompt="a fleeting question"), timeout=10).hits) == []
    stats = stub.GetStats(pb.GetStatsRequest(), timeout=10)
    assert stats.expirations == 1 and stats.cache_size == 0


def test_exact_match_survives_the_embedder_going_away_and_recovery(
    tmp_path: Path, minilm_dir: Path
) -> None:
    port = free_port()
    embedder = ServiceProcess("embedder", "--model-dir", str(minilm_dir), "--port", str(port))
    embedder.start()
    with cache_server(tmp_path / "data", f"127.0.0.1:{port}") as server:
        stub = pb_grpc.CacheServiceStub(grpc.insecure_channel(server.address))
        stored = stub.Query(pb.QueryRequest(query="Where is the Eiffel Tower?"), timeout=10)
        embedder.stop()
        again = stub.Query(pb.QueryRequest(query="Where is the Eiffel Tower?"), timeout=10)
        assert again.cache_hit and again.cached_data.similarity_score == 1.0
        assert again.response == stored.response
        started = time.monotonic()
        with pytest.raises(grpc.RpcError) as info:
            stub.Query(pb.QueryRequest(query="In which city is the Eiffel Tower?"), timeout=30)
        assert info.value.code() == grpc.StatusCode.UNAVAILABLE
        assert "embedder unavailable" in (info.value.details() or "")
        assert time.monotonic() - started < 15
        embedder = ServiceProcess(
            "embedder", "--model-dir", str(minilm_dir), "--port", str(port)
        ).start()
        try:
            deadline = time.monotonic() + 20
            while True:
                try:
                    reply = stub.Query(
                        pb.QueryRequest(
                            query="In which city is the Eiffel Tower?", similarity_threshold=0.6
                        ),
                        timeout=10,
                    )
                    break
                except grpc.RpcError:
                    assert time.monotonic() < deadline, "no recovery after the embedder returned"
                    time.sleep(0.2)
            assert reply.cache_hit
        finally:
            embedder.stop()


def test_every_acknowledged_set_survives_kill_9(tmp_path: Path, embedder_process: str) -> None:
    server = cache_server(tmp_path, embedder_process).start()
    stub = pb_grpc.CacheServiceStub(grpc.insecure_channel(server.address))
    prompts = [f"durable question number {i}" for i in range(25)]
    ids = [
        stub.Set(
            pb.SetRequest(prompt=p, response=f"answer {i}", attributes={"n": str(i)}), timeout=10
        ).entry_id
        for i, p in enumerate(prompts)
    ]
    assert server.process is not None
    server.process.kill()  # SIGKILL: no chance to flush anything
    server.process.wait(10)
    server.stop()
    with cache_server(tmp_path, embedder_process) as restarted:
        stub = pb_grpc.CacheServiceStub(grpc.insecure_channel(restarted.address))
        assert stub.GetStats(pb.GetStatsRequest(), timeout=10).cache_size == 25
        for i, (prompt, entry_id) in enumerate(zip(prompts, ids, strict=True)):
            reply = stub.Search(
                pb.SearchRequest(
                    prompt=prompt, attributes={"n": str(i)}, similarity_threshold=0.99
                ),
                timeout=10,
            )
            assert [h.entry.id for h in reply.hits] == [entry_id]
            assert reply.hits[0].entry.response == f"answer {i}"


def test_concurrent_misses_call_the_upstream_once(tmp_path: Path, embedder_process: str) -> None:
    with (
        FakeLLM(delay_s=0.5) as llm,
        cache_server(tmp_path, embedder_process, "--upstream-base-url", llm.base_url) as server,
    ):

        async def ask_many() -> list[pb.QueryResponse]:
            async with grpc.aio.insecure_channel(server.address) as channel:
                aio = pb_grpc.CacheServiceStub(channel)
                request = pb.QueryRequest(query="Why is the sky blue?")
                return list(
                    await asyncio.gather(*(aio.Query(request, timeout=10) for _ in range(8)))
                )

        replies = asyncio.run(ask_many())
        assert llm.calls == 1
        assert {r.response for r in replies} == {"LLM answer to: Why is the sky blue?"}


def test_failing_upstream_is_unavailable_and_stores_nothing(
    tmp_path: Path, embedder_process: str
) -> None:
    with (
        FakeLLM() as llm,
        cache_server(tmp_path, embedder_process, "--upstream-base-url", llm.base_url) as server,
    ):
        stub = pb_grpc.CacheServiceStub(grpc.insecure_channel(server.address))
        llm.fail_status = 500
        with pytest.raises(grpc.RpcError) as info:
            stub.Query(pb.QueryRequest(query="Will this be cached?"), timeout=10)
        assert info.value.code() == grpc.StatusCode.UNAVAILABLE
        assert "HTTP 500" in (info.value.details() or "")
        assert stub.GetStats(pb.GetStatsRequest(), timeout=10).cache_size == 0


@pytest.mark.parametrize(
    ("request_", "code"),
    [
        (pb.QueryRequest(query=""), grpc.StatusCode.INVALID_ARGUMENT),
        (pb.QueryRequest(query="x" * 9000), grpc.StatusCode.INVALID_ARGUMENT),
        (pb.QueryRequest(query="ok", cache_id="no spaces"), grpc.StatusCode.INVALID_ARGUMENT),
        (
            pb.QueryRequest(query="ok", attributes={"bad key": "v"}),
            grpc.StatusCode.INVALID_ARGUMENT,
        ),
        (
            pb.QueryRequest(query="ok", similarity_threshold=float("nan")),
            grpc.StatusCode.INVALID_ARGUMENT,
        ),
    ],
)
def test_bad_queries_are_refused_clearly(
    stub: pb_grpc.CacheServiceStub, request_: pb.QueryRequest, code: grpc.StatusCode
) -> None:
    with pytest.raises(grpc.RpcError) as info:
        stub.Query(request_, timeout=10)
    assert info.value.code() == code
    assert info.value.details()
    assert stub.GetStats(pb.GetStatsRequest(), timeout=10).cache_size == 0


def test_delete_flush_and_unknown_ids(stub: pb_grpc.CacheServiceStub) -> None:
    entry_id = stub.Set(pb.SetRequest(prompt="to be deleted", response="x"), timeout=10).entry_id
    assert len(entry_id) == 32 and int(entry_id, 16) >= 0
    stub.Delete(pb.DeleteRequest(entry_id=entry_id), timeout=10)
    for bad, code in [
        (entry_id, grpc.StatusCode.NOT_FOUND),
        ("not-an-id", grpc.StatusCode.NOT_FOUND),  # an id that cannot exist is not found
        ("0b8e4f2c-6a3d-4e1b-9f7a-2c5d8e1f3a6b", grpc.StatusCode.NOT_FOUND),
        ("", grpc.StatusCode.INVALID_ARGUMENT),
        ("x" * 300, grpc.StatusCode.INVALID_ARGUMENT),
    ]:
        with pytest.raises(grpc.RpcError) as info:
            stub.Delete(pb.DeleteRequest(entry_id=bad), timeout=10)
        assert info.value.code() == code
    for i in range(3):
        stub.Set(pb.SetRequest(prompt=f"flush me {i}", response="x"), timeout=10)
    assert stub.Flush(pb.FlushRequest(), timeout=10).deleted_count == 3
    assert stub.GetStats(pb.GetStatsRequest(), timeout=10).cache_size == 0


def test_requests_carry_on_when_one_of_two_embedders_dies(
    tmp_path: Path, minilm_dir: Path, embedder_process: str
) -> None:
    doomed = ServiceProcess("embedder", "--model-dir", str(minilm_dir)).start()
    addresses = f"{doomed.address},{embedder_process}"
    with cache_server(tmp_path, addresses, "--embedder-retries", "2") as server:
        stub = pb_grpc.CacheServiceStub(grpc.insecure_channel(server.address))
        for i in range(6):  # round robin: both embedders serve
            stub.Set(pb.SetRequest(prompt=f"question {i} before", response="x"), timeout=10)
        doomed.stop()
        for i in range(12):  # every call still succeeds: a failed try moves to the other
            reply = stub.Set(pb.SetRequest(prompt=f"question {i} after", response="y"), timeout=10)
            assert len(reply.entry_id) == 32
        assert stub.GetStats(pb.GetStatsRequest(), timeout=10).cache_size == 18


def test_the_stack_starts_all_services_and_one_interrupt_stops_them(
    tmp_path: Path, minilm_dir: Path
) -> None:
    import os
    import signal
    import subprocess
    import sys

    import httpx
    from grpc_health.v1 import health_pb2, health_pb2_grpc

    from tests.processes import REPO

    embedder_port, cache_port, gateway_port = free_port(), free_port(), free_port()
    env = {
        **os.environ,
        "EMBEDDER_PORT": str(embedder_port),
        "EMBEDDER_HOST": "127.0.0.1",
        "CACHE_PORT": str(cache_port),
        "CACHE_HOST": "127.0.0.1",
        "CACHE_DATA_DIR": str(tmp_path / "data"),
        "GATEWAY_PORT": str(gateway_port),
        "GATEWAY_HOST": "127.0.0.1",
        "EMBEDDER_METRICS_PORT": str(free_port()),
        "CACHE_METRICS_PORT": str(free_port()),
    }
    stack = subprocess.Popen(
        [sys.executable, "-m", "service_runtime.stack", "--model-dir", str(minilm_dir)],
        cwd=REPO,
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
    )
    try:
        stub = pb_grpc.CacheServiceStub(grpc.insecure_channel(f"127.0.0.1:{cache_port}"))
        health = health_pb2_grpc.HealthStub(grpc.insecure_channel(f"127.0.0.1:{embedder_port}"))
        deadline = time.monotonic() + 60
        while True:
            try:
                if health.Check(health_pb2.HealthCheckRequest(), timeout=1).status == 1:
                    reply = httpx.post(
                        f"http://127.0.0.1:{gateway_port}/query", json={"query": "hello stack"}
                    ).json()
                    break
            except (grpc.RpcError, httpx.HTTPError):
                pass
            assert time.monotonic() < deadline, "the stack never came up"
            time.sleep(0.2)
        assert "demo responder" in reply["response"]
        stack.send_signal(signal.SIGINT)
        output = stack.communicate(timeout=60)[0].decode()
    finally:
        if stack.poll() is None:
            stack.send_signal(signal.SIGINT)
            try:
                stack.wait(30)
            except subprocess.TimeoutExpired:
                stack.kill()
    assert stack.returncode == 0, output
    assert "embedder     | " in output and "cache_server | " in output
    assert "gateway      | " in output
    assert f"stack: console: http://127.0.0.1:{gateway_port}/console" in output
    assert "stack: stopped" in output
    with pytest.raises(grpc.RpcError):
        stub.GetStats(pb.GetStatsRequest(), timeout=2)


def test_cache_server_and_embedder_expose_prometheus_metrics(
    tmp_path: Path, minilm_dir: Path
) -> None:
    import httpx

    embedder_metrics, cache_metrics = free_port(), free_port()
    with (
        ServiceProcess(
            "embedder", "--model-dir", str(minilm_dir), "--metrics-port", str(embedder_metrics)
        ) as embedder,
        cache_server(tmp_path, embedder.address, "--metrics-port", str(cache_metrics)) as server,
    ):
        stub = pb_grpc.CacheServiceStub(grpc.insecure_channel(server.address))
        stub.Query(pb.QueryRequest(query="metrics question"), timeout=10)
        stub.Query(pb.QueryRequest(query="metrics question"), timeout=10)
        with pytest.raises(grpc.RpcError):
            stub.Query(pb.QueryRequest(query=""), timeout=10)
        cache_text = httpx.get(f"http://127.0.0.1:{cache_metrics}/metrics").text
        assert 'semcache_cache_lookups_total{outcome="hit"} 1.0' in cache_text
        assert 'semcache_cache_lookups_total{outcome="miss"} 1.0' in cache_text
        assert 'semcache_cache_rpcs_total{code="INVALID_ARGUMENT",method="Query"} 1.0' in cache_text
        assert 'semcache_cache_upstream_calls_total{outcome="ok"} 1.0' in cache_text
        assert "semcache_cache_lookup_seconds_bucket" in cache_text
        embedder_text = httpx.get(f"http://127.0.0.1:{embedder_metrics}/metrics").text
        assert 'semcache_embedder_requests_total{code="OK"}' in embedder_text
        assert "semcache_embedder_batch_texts_bucket" in embedder_text
        assert "semcache_embedder_queued_texts 0.0" in embedder_text


def test_killing_one_of_three_embedders_under_load_loses_no_request(
    tmp_path: Path, minilm_dir: Path
) -> None:
    embedders = [
        ServiceProcess("embedder", "--model-dir", str(minilm_dir)).start() for _ in range(3)
    ]
    try:
        addresses = ",".join(e.address for e in embedders)
        with cache_server(
            tmp_path, addresses, "--embedder-retries", "3", "--max-cache-size", "1000"
        ) as server:

            async def load() -> list[str]:
                async with grpc.aio.insecure_channel(server.address) as channel:
                    stub = pb_grpc.CacheServiceStub(channel)

                    async def one(i: int) -> str:
                        if i == 40:
                            embedders[0].stop()  # killed while requests are in flight
                        reply = await stub.Set(
                            pb.SetRequest(prompt=f"load question {i}", response=str(i)),
                            timeout=30,
                        )
                        return reply.entry_id

                    limit = asyncio.Semaphore(8)

                    async def bounded(i: int) -> str:
                        async with limit:
                            return await one(i)

                    return list(await asyncio.gather(*(bounded(i) for i in range(120))))

            ids = asyncio.run(load())
            assert len(set(ids)) == 120
            stub = pb_grpc.CacheServiceStub(grpc.insecure_channel(server.address))
            assert stub.GetStats(pb.GetStatsRequest(), timeout=10).cache_size == 120
    finally:
        for e in embedders:
            e.stop()


def test_malformed_cache_requests_are_invalid_argument(
    tmp_path: Path, embedder_process: str
) -> None:
    with cache_server(tmp_path, embedder_process) as server:
        raw = grpc.insecure_channel(server.address).unary_unary(
            "/semcache.cache.v1.CacheService/Query",
            request_serializer=lambda b: b,
            response_deserializer=lambda b: b,
        )
        with pytest.raises(grpc.RpcError) as info:
            raw(bytes([0x12, 2, 0xFF, 0xFE]), timeout=10)  # query is not UTF-8
        assert info.value.code() == grpc.StatusCode.INVALID_ARGUMENT
        assert "bad UTF-8" in (info.value.details() or "")


def test_slow_upstream_times_out_clearly_and_stores_nothing(
    tmp_path: Path, embedder_process: str
) -> None:
    with (
        FakeLLM(delay_s=3.0) as llm,
        cache_server(
            tmp_path,
            embedder_process,
            "--upstream-base-url",
            llm.base_url,
            "--upstream-read-timeout-s",
            "0.5",
        ) as server,
    ):
        stub = pb_grpc.CacheServiceStub(grpc.insecure_channel(server.address))
        started = time.monotonic()
        with pytest.raises(grpc.RpcError) as info:
            stub.Query(pb.QueryRequest(query="Will the slow LLM answer?"), timeout=10)
        assert time.monotonic() - started < 2.5  # the timeout, not the LLM's 3 s
        assert info.value.code() == grpc.StatusCode.UNAVAILABLE
        assert "timed out" in (info.value.details() or "")
        assert stub.GetStats(pb.GetStatsRequest(), timeout=10).cache_size == 0
