"""End to end over three real processes: gateway (HTTP) -> cache server -> embedder, with a
real HTTP upstream LLM; the LangCache SDK itself as a client."""

from __future__ import annotations

import time
from pathlib import Path

import httpx
import pytest
from langcache import LangCache
from langcache import errors as lc_errors
from langcache.models import SearchStrategy

from bench.qqp import QuestionPair
from tests.fake_llm import FakeLLM
from tests.integration.conftest import API_KEY, start_cache_server
from tests.processes import GatewayProcess, ServiceProcess, cache_server_process

pytestmark = pytest.mark.slow


def test_the_original_flow_a_miss_then_a_paraphrase_hit(
    gateway: str, qqp_pairs: list[QuestionPair], llm: FakeLLM
) -> None:
    pair = next(p for p in qqp_pairs if p.duplicate and 30 < len(p.text_a) < 70)
    calls = llm.calls
    miss = httpx.post(f"{gateway}/query", json={"query": pair.text_a, "similarity_threshold": 0.7})
    assert miss.status_code == 200
    body = miss.json()
    assert set(body) == {
        "query",
        "response",
        "cache_hit",
        "cached_data",
        "embedding_dimension",
        "processing_time",
    }
    assert body["cache_hit"] is False and body["cached_data"] is None
    assert body["response"] == f"LLM answer to: {pair.text_a}"
    assert body["embedding_dimension"] == 384 and body["processing_time"] > 0
    hit = httpx.post(
        f"{gateway}/query", json={"query": pair.text_b, "similarity_threshold": 0.7}
    ).json()
    assert hit["cache_hit"] is True
    assert set(hit["cached_data"]) == {
        "cached_response",
        "similarity_score",
        "cached_query",
        "cache_timestamp",
    }
    assert hit["cached_data"]["cached_query"] == pair.text_a
    assert hit["response"] == body["response"] == hit["cached_data"]["cached_response"]
    assert 0.7 <= hit["cached_data"]["similarity_score"] <= 1.0
    assert llm.calls == calls + 1
    fresh = httpx.post(f"{gateway}/query", json={"query": pair.text_b, "use_cache": False})
    assert fresh.json()["cache_hit"] is False and llm.calls == calls + 2


def test_stats_and_docs(gateway: str) -> None:
    httpx.post(f"{gateway}/query", json={"query": "stats question one"})
    httpx.post(f"{gateway}/query", json={"query": "stats question one"})
    stats = httpx.get(f"{gateway}/cache/stats").json()
    for field in (
        "cache_size",
        "max_cache_size",
        "current_threshold",
        "hits",
        "misses",
        "hit_rate",
    ):
        assert field in stats
    assert stats["max_cache_size"] == 1000 and stats["current_threshold"] == 0.85
    assert stats["hits"] >= 1 and stats["misses"] >= 1 and 0 < stats["hit_rate"] < 1
    assert httpx.get(f"{gateway}/docs").status_code == 200
    schema = httpx.get(f"{gateway}/openapi.json").json()
    assert "/query" in schema["paths"] and "/v1/caches/{cacheId}/entries/search" in schema["paths"]
    metrics = httpx.get(f"{gateway}/metrics").text
    assert 'semcache_gateway_requests_total{method="POST",route="/query",status="200"}' in metrics
    assert 'semcache_gateway_lookups_total{outcome="hit"}' in metrics
    assert "semcache_gateway_request_seconds_bucket" in metrics


def test_metrics_are_labelled_by_route_template_not_by_path(gateway: str) -> None:
    # One series per route, however many entry ids are asked for: a label per path would
    # grow the gateway's memory with every request (and flood Prometheus).
    ids = [f"{i:032x}" for i in range(1, 41)]
    for entry_id in ids:
        reply = httpx.delete(f"{gateway}/v1/caches/metrics-test/entries/{entry_id}")
        assert reply.status_code == 404
    httpx.post(f"{gateway}/v1/caches/metrics-test/entries/search", json={"prompt": "anything"})
    metrics = httpx.get(f"{gateway}/metrics").text
    assert not any(entry_id in metrics for entry_id in ids)
    assert "metrics-test" not in metrics
    by_id = 'route="/v1/caches/{cacheId}/entries/{entryId}",status="404"'
    assert f'semcache_gateway_requests_total{{method="DELETE",{by_id}}} ' in metrics
    line = next(
        m
        for m in metrics.splitlines()
        if by_id in m and m.startswith("semcache_gateway_requests_total")
    )
    assert float(line.rsplit(" ", 1)[1]) >= 40
    assert 'method="POST",route="/v1/caches/{cacheId}/entries/search",status="200"' in metrics
    unknown = httpx.get(f"{gateway}/no/such/path/{ids[0]}")
    assert unknown.status_code == 404
    assert 'route="unmatched"' in httpx.get(f"{gateway}/metrics").text


def test_health_up(gateway: str) -> None:
    reply = httpx.get(f"{gateway}/health")
    assert reply.status_code == 200
    body = reply.json()
    assert body["status"] == "healthy" and body["down"] == [] and body["timestamp"] > 0
    assert body["embedder_model"] == "sentence-transformers/all-MiniLM-L6-v2"


def test_health_names_what_is_down(tmp_path: Path, minilm_dir: Path) -> None:
    with FakeLLM() as llm:
        embedder = ServiceProcess("embedder", "--model-dir", str(minilm_dir)).start()
        cache = start_cache_server(tmp_path, embedder.address, llm)
        try:
            with GatewayProcess(cache.address) as gw:
                assert httpx.get(f"{gw.url}/health").status_code == 200
                embedder.stop()
                reply = httpx.get(f"{gw.url}/health")
                assert reply.status_code == 503
                assert reply.json()["status"] == "unhealthy"
                assert reply.json()["down"] == ["embedder"]
                cache.stop()
                reply = httpx.get(f"{gw.url}/health")
                assert reply.status_code == 503 and reply.json()["down"] == ["cache_server"]
                query = httpx.post(f"{gw.url}/query", json={"query": "anyone there?"})
                assert query.status_code == 503
                assert query.json()["type"] == "/errors/service-unavailable"
        finally:
            embedder.stop()
            cache.stop()


def test_every_langcache_sdk_call(gateway: str) -> None:
    with LangCache(server_url=gateway, cache_id="sdk-tests", api_key="unused") as lc:
        first = lc.set(
            prompt="How tall is Mount Everest?", response="8,849 m", attributes={"topic": "geo"}
        )
        assert len(first.entry_id) == 32 and first.entry_id == first.entry_id.lower()
        second = lc.set(
            prompt="How long is the river Nile?",
            response="6,650 km",
            attributes={"topic": "geo", "lang": "en"},
            ttl_millis=60_000,
        )
        lc.set(prompt="Who wrote Hamlet?", response="Shakespeare", attributes={"topic": "lit"})

        found = lc.search(prompt="What is the height of Mount Everest?", similarity_threshold=0.6)
        assert [e.id for e in found.data] == [first.entry_id]
        entry = found.data[0]
        assert entry.response == "8,849 m" and entry.attributes == {"topic": "geo"}
        assert entry.search_strategy == SearchStrategy.SEMANTIC and 0.6 <= entry.similarity < 1

        exact = lc.search(
            prompt="How long is the river Nile?",
            search_strategies=[SearchStrategy.EXACT, SearchStrategy.SEMANTIC],
        )
        assert exact.data[0].search_strategy == SearchStrategy.EXACT
        assert exact.data[0].similarity == 1.0
        scoped = lc.search(
            prompt="Who wrote Hamlet?", attributes={"topic": "geo"}, similarity_threshold=0.9
        )
        assert scoped.data == []
        many = lc.search(
            prompt="geography question",
            similarity_threshold=0.0,
            max_results=3,
            attributes={"topic": "geo"},
        )
        assert {e.id for e in many.data} == {first.entry_id, second.entry_id}

        assert lc.delete_query(attributes={"lang": "en"}).deleted_entries_count == 1
        lc.delete_by_id(entry_id=first.entry_id)
        with pytest.raises(lc_errors.NotFoundErrorResponseContent):
            lc.delete_by_id(entry_id=first.entry_id)
        with pytest.raises(lc_errors.BadRequestErrorResponseContent) as bad:
            lc.search(prompt="")
        assert bad.value.data.type == "/errors/invalid-data"
        lc.flush()
        assert lc.search(prompt="Who wrote Hamlet?").data == []
        assert lc.delete_query(attributes={}).deleted_entries_count == 0


def test_api_key(secured: str, gateway: str) -> None:
    assert httpx.get(f"{secured}/health").status_code == 200  # open to load balancers
    for headers in (
        {},
        {"Authorization": "Bearer wrong-key-0123456789"},
        {"Authorization": f"Basic {API_KEY}"},
    ):
        reply = httpx.post(f"{secured}/query", json={"query": "let me in"}, headers=headers)
        assert reply.status_code == 401
        assert reply.json()["type"] == "/errors/authentication-failed"
        assert reply.headers["www-authenticate"] == "Bearer"
    for path in ("/cache/stats", "/docs", "/metrics"):
        assert httpx.get(f"{secured}{path}").status_code == 401
    ok = httpx.get(f"{secured}/cache/stats", headers={"Authorization": f"Bearer {API_KEY}"})
    assert ok.status_code == 200
    with LangCache(server_url=secured, cache_id="keyed", api_key=API_KEY) as lc:
        assert lc.set(prompt="keyed question", response="keyed answer").entry_id
    with (
        LangCache(server_url=secured, cache_id="keyed", api_key="nope") as lc,
        pytest.raises(lc_errors.AuthenticationErrorResponseContent),
    ):
        lc.search(prompt="keyed question")
    assert httpx.get(f"{gateway}/cache/stats").status_code == 200  # no key configured: open


def test_rate_limit_per_key(tmp_path: Path, embedder_process: str) -> None:
    """The cache server limits each key (here the single key's holder); the gateway answers
    its refusal as a 429 with Retry-After."""
    env = {"SEMCACHE_API_KEY": API_KEY}
    with (
        cache_server_process(
            tmp_path,
            embedder_process,
            "--rate-limit-per-s",
            "0.5",
            "--rate-limit-burst",
            "3",
            env=env,
        ) as cache,
        GatewayProcess(cache.address, env=env) as gw,
    ):
        auth = {"Authorization": f"Bearer {API_KEY}"}
        codes = [httpx.get(f"{gw.url}/cache/stats", headers=auth).status_code for _ in range(4)]
        assert codes == [200, 200, 200, 429]
        refused = httpx.get(f"{gw.url}/cache/stats", headers=auth)
        assert refused.status_code == 429
        assert refused.json()["type"] == "/errors/too-many-requests"
        assert int(refused.headers["retry-after"]) >= 1
        assert httpx.get(f"{gw.url}/health").status_code == 200  # never limited
        # A wrong key is refused as unauthenticated, not counted against the real key's bucket.
        assert httpx.get(f"{gw.url}/cache/stats").status_code == 401


def test_request_id_travels_through_all_three_services_in_json_logs(
    tmp_path: Path, minilm_dir: Path
) -> None:
    import json

    secret_question = "What is the airspeed velocity of an unladen swallow?"
    with (
        FakeLLM() as llm,
        ServiceProcess(
            "embedder",
            "--model-dir",
            str(minilm_dir),
            "--log-level",
            "DEBUG",
            "--log-format",
            "json",
        ) as embedder,
        cache_server_process(
            tmp_path, embedder.address, "--upstream-base-url", llm.base_url, "--log-format", "json"
        ) as cache,
        GatewayProcess(cache.address, "--log-level", "INFO", "--log-format", "json") as gw,
    ):
        reply = httpx.post(
            f"{gw.url}/query",
            json={"query": secret_question},
            headers={"X-Request-ID": "req-trace-42"},
        )
        assert reply.status_code == 200
        assert reply.headers["x-request-id"] == "req-trace-42"
        generated = httpx.get(f"{gw.url}/cache/stats").headers["x-request-id"]
        assert len(generated) == 32  # made up when the client sends none
        time.sleep(0.3)
        logs = {"gateway": gw.log(), "cache_server": cache.log(), "embedder": embedder.log()}
    for service, text in logs.items():
        records = [json.loads(line) for line in text.splitlines() if line.startswith("{")]
        assert records, f"{service} wrote no JSON lines"
        traced = [r for r in records if r["request_id"] == "req-trace-42"]
        assert traced, f"{service} logged nothing with the request id"
        assert all(r["service"] == service for r in records)
    # Prompts stay out of the logs unless log_prompts is switched on.
    assert secret_question not in logs["cache_server"]
    assert secret_question not in logs["gateway"]


def test_kill_9_of_the_embedder_under_load_gives_fast_503s_then_recovers(
    tmp_path: Path, minilm_dir: Path
) -> None:
    import asyncio

    from tests.processes import free_port

    port = free_port()
    embedder = ServiceProcess("embedder", "--model-dir", str(minilm_dir), "--port", str(port))
    embedder.start()
    with FakeLLM() as llm:
        cache = start_cache_server(tmp_path, embedder.address, llm)
        try:
            with GatewayProcess(cache.address) as gw:

                async def load() -> list[tuple[int, float]]:
                    async with httpx.AsyncClient(base_url=gw.url, timeout=30) as http:

                        async def one(i: int) -> tuple[int, float]:
                            if i == 20:
                                assert embedder.process is not None
                                embedder.process.kill()  # SIGKILL mid-load
                            started = time.monotonic()
                            reply = await http.post("/query", json={"query": f"load {i} q"})
                            return reply.status_code, time.monotonic() - started

                        limit = asyncio.Semaphore(8)

                        async def bounded(i: int) -> tuple[int, float]:
                            async with limit:
                                return await one(i)

                        return list(await asyncio.gather(*(bounded(i) for i in range(80))))

                results = asyncio.run(load())
                codes = {code for code, _ in results}
                assert codes <= {200, 503}, codes
                assert 503 in codes
                assert max(seconds for _, seconds in results) < 15  # deadlines, no hangs
                embedder.stop()
                embedder = ServiceProcess(
                    "embedder", "--model-dir", str(minilm_dir), "--port", str(port)
                ).start()
                deadline = time.monotonic() + 20
                while httpx.post(f"{gw.url}/query", json={"query": "back?"}).status_code != 200:
                    assert time.monotonic() < deadline, "no recovery"
                    time.sleep(0.2)
        finally:
            cache.stop()
            embedder.stop()
