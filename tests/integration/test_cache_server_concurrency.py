"""Concurrency over real gRPC: callers that give up mid-flight, and many clients at once."""

from __future__ import annotations

import asyncio
import random
import time
import uuid
from collections import Counter
from collections.abc import Iterator
from pathlib import Path
from typing import TYPE_CHECKING

import grpc
import pytest

from cache_server.entries import entry_id
from protos.semcache.cache.v1 import cache_pb2 as pb
from protos.semcache.cache.v1 import cache_pb2_grpc as pb_grpc
from tests.fake_llm import FakeLLM
from tests.processes import RedisProcess, cache_server_process, redis_cache_server

if TYPE_CHECKING:
    from protos.semcache.cache.v1.cache_pb2_grpc import CacheServiceAsyncStub

pytestmark = pytest.mark.slow


async def test_a_caller_that_gives_up_does_not_hang_the_others_on_the_same_miss(
    tmp_path: Path, embedder_process: str
) -> None:
    with (
        FakeLLM(delay_s=0.5) as llm,
        cache_server_process(
            tmp_path, embedder_process, "--upstream-base-url", llm.base_url
        ) as server,
    ):
        async with grpc.aio.insecure_channel(server.address) as channel:
            stub = pb_grpc.CacheServiceStub(channel)
            request = pb.QueryRequest(query="What is the boiling point of water?")
            leader = asyncio.ensure_future(stub.Query(request, timeout=0.15))
            await asyncio.sleep(0.05)
            started = time.monotonic()
            follower = asyncio.ensure_future(stub.Query(request, timeout=10))
            with pytest.raises(grpc.aio.AioRpcError) as gave_up:
                await leader
            assert gave_up.value.code() is grpc.StatusCode.DEADLINE_EXCEEDED
            answer = await follower
            assert time.monotonic() - started < 3, "the follower waited on the leader's fate"
            assert not answer.cache_hit and answer.response.startswith("LLM answer to:")
            assert llm.calls == 1
            # Its answer was stored: the next caller hits.
            again = await stub.Query(request, timeout=10)
            assert again.cache_hit and llm.calls == 1


# -- many clients at once, on both stores ------------------------------------------------------

CAP = 12  # entries per cache: small, so eviction runs all along
CACHES = ("t1", "t2:x", "t2")  # "t2" is a prefix of "t2:x": their key spaces must not meet
PROMPTS = [f"Question number {i} about topic {i % 7}?" for i in range(30)]
RUN_S = 8.0
CLIENTS = 12
ALLOWED = {
    "Query": {grpc.StatusCode.OK, grpc.StatusCode.DEADLINE_EXCEEDED},
    "Set": {grpc.StatusCode.OK, grpc.StatusCode.DEADLINE_EXCEEDED},
    "Search": {grpc.StatusCode.OK, grpc.StatusCode.DEADLINE_EXCEEDED},
    "Delete": {grpc.StatusCode.OK, grpc.StatusCode.NOT_FOUND, grpc.StatusCode.DEADLINE_EXCEEDED},
    "Flush": {grpc.StatusCode.OK, grpc.StatusCode.DEADLINE_EXCEEDED},
}


@pytest.fixture(params=["embedded", "redis"])
def busy_server(
    request: pytest.FixtureRequest, tmp_path: Path, embedder_process: str
) -> Iterator[tuple[str, RedisProcess | None, str]]:
    """A cache server on each store, a slow-ish LLM (so that flights overlap)."""
    with FakeLLM(delay_s=0.05) as llm:
        args = ("--upstream-base-url", llm.base_url, "--max-cache-size", str(CAP))
        if request.param == "embedded":
            with cache_server_process(tmp_path, embedder_process, *args) as server:
                yield server.address, None, ""
            return
        redis_server = RedisProcess(tmp_path / "redis").start()
        prefix = f"c-{uuid.uuid4().hex[:8]}"
        try:
            with redis_cache_server(
                tmp_path, embedder_process, redis_server.url, prefix, *args
            ) as server:
                yield server.address, redis_server, prefix
        finally:
            redis_server.stop()


async def _visible(stub: CacheServiceAsyncStub, cache_id: str) -> dict[str, str]:
    """Every entry of a cache that a look-up can find (all prompts come from PROMPTS)."""
    found: dict[str, str] = {}
    for prompt in PROMPTS:
        reply = await stub.Search(
            pb.SearchRequest(
                cache_id=cache_id,
                prompt=prompt,
                strategies=[pb.SEARCH_STRATEGY_EXACT],
                max_results=1,
            ),
            timeout=10,
        )
        for hit in reply.hits:
            assert hit.entry.prompt == prompt, (cache_id, prompt, hit.entry.prompt)
            found[hit.entry.id] = hit.entry.prompt
    return found


async def test_many_clients_mixing_everything_leave_a_consistent_cache(
    busy_server: tuple[str, RedisProcess | None, str],
) -> None:
    address, redis_server, prefix = busy_server
    outcomes: dict[str, Counter[grpc.StatusCode]] = {m: Counter() for m in ALLOWED}
    hung: list[str] = []
    sizes: list[int] = []
    rng = random.Random(11)

    async with grpc.aio.insecure_channel(address) as channel:
        stub = pb_grpc.CacheServiceStub(channel)

        async def one_call(method: str, request: object, deadline_s: float) -> None:
            try:
                call = getattr(stub, method)(request, timeout=deadline_s)
                await asyncio.wait_for(call, deadline_s + 5)
                outcomes[method][grpc.StatusCode.OK] += 1
            except grpc.aio.AioRpcError as error:
                outcomes[method][error.code()] += 1
            except TimeoutError:
                hung.append(method)

        async def client(seed: int) -> None:
            local = random.Random(seed)
            stop = time.monotonic() + RUN_S
            while time.monotonic() < stop:
                cache_id, prompt = local.choice(CACHES), local.choice(PROMPTS)
                # Some callers give up mid-flight; others wait.
                timeout = local.choice([0.03, 0.1, 5.0, 5.0])
                roll = local.random()
                if roll < 0.45:
                    await one_call(
                        "Query", pb.QueryRequest(cache_id=cache_id, query=prompt), timeout
                    )
                elif roll < 0.7:
                    request = pb.SetRequest(cache_id=cache_id, prompt=prompt, response="set")
                    if local.random() < 0.3:
                        request.ttl_seconds = 0.4  # expires while the others keep going
                    await one_call("Set", request, timeout)
                elif roll < 0.85:
                    await one_call(
                        "Search",
                        pb.SearchRequest(cache_id=cache_id, prompt=prompt, max_results=3),
                        timeout,
                    )
                elif roll < 0.98:
                    known = entry_id(cache_id, prompt, {})
                    await one_call(
                        "Delete", pb.DeleteRequest(cache_id=cache_id, entry_id=known), timeout
                    )
                else:
                    await one_call("Flush", pb.FlushRequest(cache_id=cache_id), 5.0)

        async def watch_sizes() -> None:
            stop = time.monotonic() + RUN_S
            while time.monotonic() < stop:
                for cache_id in CACHES:
                    stats = await stub.GetStats(pb.GetStatsRequest(cache_id=cache_id), timeout=10)
                    sizes.append(stats.cache_size)
                await asyncio.sleep(0.05)

        await asyncio.gather(watch_sizes(), *(client(rng.randrange(10**9)) for _ in range(CLIENTS)))

        # Every call was answered with a status, and only with the expected ones.
        assert not hung, f"calls that never got a status: {Counter(hung)}"
        for method, seen in outcomes.items():
            unexpected = {c.name: n for c, n in seen.items() if c not in ALLOWED[method]}
            assert not unexpected, f"{method}: {unexpected} (all: {seen})"
        assert sum(outcomes["Query"].values()) > 50 and outcomes["Query"][grpc.StatusCode.OK] > 20
        assert sizes and max(sizes) <= CAP, f"cap {CAP} exceeded: {max(sizes)}"

        await asyncio.sleep(1.0)  # entries with a TTL of 0.4 s expire and get purged
        for cache_id in CACHES:
            visible = await _visible(stub, cache_id)
            stats = await stub.GetStats(pb.GetStatsRequest(cache_id=cache_id), timeout=10)
            # What the cache says it holds is what a look-up finds: no ghost, no orphan.
            assert stats.cache_size == len(visible) <= CAP, (cache_id, stats, visible)

        # Deleted, expired and flushed entries are gone for good.
        cache_id, prompt = CACHES[0], PROMPTS[0]
        stored = await stub.Set(
            pb.SetRequest(cache_id=cache_id, prompt=prompt, response="brief", ttl_seconds=0.3),
            timeout=10,
        )
        await asyncio.sleep(1.0)
        assert stored.entry_id not in await _visible(stub, cache_id)
        for cache_id in CACHES:
            await stub.Flush(pb.FlushRequest(cache_id=cache_id), timeout=10)
            assert await _visible(stub, cache_id) == {}
            stats = await stub.GetStats(pb.GetStatsRequest(cache_id=cache_id), timeout=10)
            assert stats.cache_size == 0 and stats.hits == stats.misses == 0

    if redis_server is not None:
        # Nothing of any entry is left in Redis: no entry hash, no index of a flushed cache.
        redis_client = redis_server.client()
        leftovers = [
            key
            for key in redis_client.scan_iter(match=f"{prefix}*", count=1000)
            if redis_client.type(key) == b"hash" and redis_client.hexists(key, "prompt")
        ]
        assert not leftovers, leftovers[:10]
        indexes = [i.decode() for i in redis_client.execute_command("FT._LIST")]
        assert not [i for i in indexes if i.startswith(prefix)], indexes
