"""Several cache servers sharing one real Redis (with RediSearch), behind one gateway."""

from __future__ import annotations

import time
import uuid
from collections.abc import Iterator
from pathlib import Path

import grpc
import httpx
import pytest

from protos.semcache.cache.v1 import cache_pb2 as pb
from protos.semcache.cache.v1 import cache_pb2_grpc as pb_grpc
from tests.processes import GatewayProcess, RedisProcess, redis_cache_server

pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def redis_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[RedisProcess]:
    server = RedisProcess(tmp_path_factory.mktemp("redis")).start()
    yield server
    server.stop()


@pytest.fixture()
def replicas(
    tmp_path: Path, embedder_process: str, redis_server: RedisProcess
) -> Iterator[tuple[pb_grpc.CacheServiceStub, pb_grpc.CacheServiceStub, list[str]]]:
    prefix = f"t-{uuid.uuid4().hex[:8]}"
    with (
        redis_cache_server(
            tmp_path, embedder_process, redis_server.url, prefix, "--max-cache-size", "5"
        ) as one,
        redis_cache_server(
            tmp_path, embedder_process, redis_server.url, prefix, "--max-cache-size", "5"
        ) as two,
    ):
        yield (
            pb_grpc.CacheServiceStub(grpc.insecure_channel(one.address)),
            pb_grpc.CacheServiceStub(grpc.insecure_channel(two.address)),
            [one.address, two.address],
        )


def test_an_entry_set_through_one_replica_is_found_through_the_other_at_once(
    replicas: tuple[pb_grpc.CacheServiceStub, pb_grpc.CacheServiceStub, list[str]],
) -> None:
    one, two, _ = replicas
    entry_id = one.Set(
        pb.SetRequest(
            prompt="How do I make sourdough bread?",
            response="feed the starter",
            attributes={"lang": "en"},
        ),
        timeout=10,
    ).entry_id
    found = two.Search(
        pb.SearchRequest(
            prompt="What is the way to bake sourdough bread?",
            similarity_threshold=0.6,
            attributes={"lang": "en"},
        ),
        timeout=10,
    )
    assert [h.entry.id for h in found.hits] == [entry_id]
    hit = two.Query(pb.QueryRequest(query="How do I make sourdough bread?"), timeout=10)
    assert hit.cache_hit and hit.cached_data.similarity_score == 1.0
    # Stats live in Redis: both replicas report the same.
    s1 = one.GetStats(pb.GetStatsRequest(), timeout=10)
    s2 = two.GetStats(pb.GetStatsRequest(), timeout=10)
    assert (s1.cache_size, s1.hits) == (s2.cache_size, s2.hits) == (1, 2)
    two.Delete(pb.DeleteRequest(entry_id=entry_id), timeout=10)
    assert (
        list(one.Search(pb.SearchRequest(prompt="How do I make sourdough bread?"), timeout=10).hits)
        == []
    )
    for i in range(3):
        one.Set(pb.SetRequest(prompt=f"flush question {i}", response="x"), timeout=10)
    assert two.Flush(pb.FlushRequest(), timeout=10).deleted_count == 3
    assert one.GetStats(pb.GetStatsRequest(), timeout=10).cache_size == 0
    info = one.GetServerInfo(pb.GetServerInfoRequest(), timeout=10)
    assert info.store_backend == "redis"


def test_the_size_cap_holds_across_replicas(
    replicas: tuple[pb_grpc.CacheServiceStub, pb_grpc.CacheServiceStub, list[str]],
) -> None:
    one, two, _ = replicas
    for i in range(12):
        stub = one if i % 2 else two
        stub.Set(pb.SetRequest(prompt=f"capped question number {i}", response=str(i)), timeout=10)
    s1 = one.GetStats(pb.GetStatsRequest(), timeout=10)
    assert s1.cache_size == 5 and s1.evictions == 7
    survivors = one.Search(
        pb.SearchRequest(prompt="capped question number 11", strategies=[pb.SEARCH_STRATEGY_EXACT]),
        timeout=10,
    )
    assert survivors.hits  # the newest stays


def test_ttl_through_redis_expiry(
    replicas: tuple[pb_grpc.CacheServiceStub, pb_grpc.CacheServiceStub, list[str]],
) -> None:
    one, two, _ = replicas
    one.Set(pb.SetRequest(prompt="short lived question", response="x", ttl_seconds=1), timeout=10)
    assert two.Search(pb.SearchRequest(prompt="short lived question"), timeout=10).hits
    time.sleep(1.8)
    assert list(two.Search(pb.SearchRequest(prompt="short lived question"), timeout=10).hits) == []
    stats = one.GetStats(pb.GetStatsRequest(), timeout=10)
    assert stats.cache_size == 0 and stats.expirations == 1  # counted once, by one replica


def test_two_replicas_behind_one_gateway(
    replicas: tuple[pb_grpc.CacheServiceStub, pb_grpc.CacheServiceStub, list[str]],
) -> None:
    _, _, addresses = replicas
    with GatewayProcess(",".join(addresses)) as gateway:
        first = httpx.post(f"{gateway.url}/query", json={"query": "Why do cats purr?"}).json()
        assert first["cache_hit"] is False
        for _ in range(4):  # round robin: both replicas answer, from the shared store
            again = httpx.post(
                f"{gateway.url}/query", json={"query": "Why do cats purr at all?"}
            ).json()
            assert again["cache_hit"] is True
        assert httpx.get(f"{gateway.url}/cache/stats").json()["cache_size"] == 1


def test_redis_down_is_unavailable_then_recovers_and_keeps_acknowledged_entries(
    tmp_path: Path, embedder_process: str
) -> None:
    redis = RedisProcess(tmp_path / "redis").start()
    with redis_cache_server(tmp_path, embedder_process, redis.url, "outage") as server:
        stub = pb_grpc.CacheServiceStub(grpc.insecure_channel(server.address))
        ids = [
            stub.Set(
                pb.SetRequest(prompt=f"kept question {i}", response=str(i)), timeout=10
            ).entry_id
            for i in range(5)
        ]
        redis.stop()  # SIGTERM: Redis writes its AOF and exits
        with pytest.raises(grpc.RpcError) as info:
            stub.Set(pb.SetRequest(prompt="during the outage", response="x"), timeout=10)
        assert info.value.code() == grpc.StatusCode.UNAVAILABLE
        # The caller is told the store is down, not where it is; the log says which and why.
        assert "cache store is unavailable" in (info.value.details() or "")
        assert "127.0.0.1" not in (info.value.details() or "") and "Redis at" in server.log()
        with GatewayProcess(server.address) as gateway:
            health = httpx.get(f"{gateway.url}/health")
            assert health.status_code == 503 and health.json()["down"] == ["store"]
            down = httpx.post(f"{gateway.url}/query", json={"query": "is redis there?"})
            # The gateway names the failing dependency, not its internal address.
            assert down.status_code == 503 and "store is unavailable" in down.json()["detail"]
        redis = RedisProcess(tmp_path / "redis", port=redis.port).start()
        try:
            deadline = time.monotonic() + 20
            while True:
                try:
                    stats = stub.GetStats(pb.GetStatsRequest(), timeout=5)
                    break
                except grpc.RpcError:
                    assert time.monotonic() < deadline, "no recovery after Redis returned"
                    time.sleep(0.2)
            assert stats.cache_size == 5
            for i, entry_id in enumerate(ids):
                reply = stub.Search(
                    pb.SearchRequest(prompt=f"kept question {i}", similarity_threshold=0.99),
                    timeout=10,
                )
                assert [h.entry.id for h in reply.hits] == [entry_id]
        finally:
            redis.stop()


def test_kill_9_of_a_cache_server_on_redis_loses_nothing(
    tmp_path: Path, embedder_process: str, redis_server: RedisProcess
) -> None:
    prefix = f"k9-{uuid.uuid4().hex[:8]}"
    server = redis_cache_server(tmp_path, embedder_process, redis_server.url, prefix).start()
    stub = pb_grpc.CacheServiceStub(grpc.insecure_channel(server.address))
    ids = [
        stub.Set(
            pb.SetRequest(prompt=f"durable redis question {i}", response=str(i)), timeout=10
        ).entry_id
        for i in range(10)
    ]
    assert server.process is not None
    server.process.kill()
    server.process.wait(10)
    server.stop()
    with redis_cache_server(tmp_path, embedder_process, redis_server.url, prefix) as again:
        stub = pb_grpc.CacheServiceStub(grpc.insecure_channel(again.address))
        assert stub.GetStats(pb.GetStatsRequest(), timeout=10).cache_size == 10
        for i, entry_id in enumerate(ids):
            reply = stub.Search(
                pb.SearchRequest(
                    prompt=f"durable redis question {i}", strategies=[pb.SEARCH_STRATEGY_EXACT]
                ),
                timeout=10,
            )
            assert [h.entry.id for h in reply.hits] == [entry_id]
