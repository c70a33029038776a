"""Scale-out benchmark.

Part 1, the stores (in process, real QQP embeddings): look-up latency and recall@1 against
exact search, embedded (numpy/HNSW) vs Redis (RediSearch FLAT and HNSW), unscoped and scoped
to one of four tenants by an attribute.
Part 2, over gRPC: Query throughput at 16 concurrent clients with 1 and 2 cache servers on
Redis, and 1 and 2 embedders. On 2 cores, more processes cannot add cores: the figures show
what the fan-out costs here, not what it gains on a bigger machine.

Run: python -m bench.scale_bench [--sizes 10000,100000]
"""

from __future__ import annotations

import argparse
import asyncio
import tempfile
import time
from pathlib import Path
from typing import Any

import grpc
import numpy as np

from bench.cache_bench import qqp_vectors
from bench.qqp import load_pairs
from bench.timing import p50_p99_ms
from cache_server.entries import CacheEntry, entry_id
from cache_server.store.base import CacheStore
from cache_server.store.embedded import EmbeddedStore
from cache_server.store.redis_store import RedisStore
from protos.semcache.cache.v1 import cache_pb2 as pb
from protos.semcache.cache.v1 import cache_pb2_grpc as pb_grpc
from tests.processes import RedisProcess, ServiceProcess, redis_cache_server

RESULTS = Path("bench/results")
TENANTS = 4


async def fill(store: CacheStore, texts: list[str], vectors: np.ndarray) -> None:
    for i, (text, vector) in enumerate(zip(texts, vectors, strict=True)):
        attributes = {"tenant": str(i % TENANTS)}
        entry = CacheEntry(
            "bench", entry_id("bench", text, attributes), text, str(i), attributes, created_at=1.0
        )
        await store.put(entry, vector, 10**9, 1.0, max_caches=1)


async def probe(
    store: CacheStore, queries: np.ndarray, scoped: bool
) -> tuple[list[str], list[float]]:
    found, latencies = [], []
    for i, q in enumerate(queries):
        attributes = {"tenant": str(i % TENANTS)} if scoped else {}
        started = time.perf_counter()
        hits = await store.search("bench", q, 1, -1.0, attributes, 2.0)
        latencies.append(time.perf_counter() - started)
        found.append(hits[0][0].prompt if hits else "")
    return found, latencies


def exact_answers(
    texts: list[str], vectors: np.ndarray, queries: np.ndarray, scoped: bool
) -> list[str]:
    tenant = np.arange(len(texts)) % TENANTS
    out = []
    for i, q in enumerate(queries):
        scores = vectors @ q
        if scoped:
            scores = np.where(tenant == i % TENANTS, scores, -np.inf)
        out.append(texts[int(np.argmax(scores))])
    return out


async def store_rows(size: int, redis_url: str) -> list[dict[str, Any]]:
    texts, vectors = qqp_vectors(Path("models/default"), size + 1000)
    stored_texts, stored = texts[:size], vectors[:size]
    queries = vectors[size : size + 500]  # novel questions, the harder case for ANN
    rows = []
    with tempfile.TemporaryDirectory() as data:
        stores: list[tuple[str, CacheStore]] = [
            ("embedded", EmbeddedStore(Path(data))),
            ("redis FLAT", RedisStore(redis_url, prefix=f"flat{size}", algorithm="FLAT")),
            (
                "redis HNSW ef64",
                RedisStore(redis_url, prefix=f"hnsw{size}", algorithm="HNSW", hnsw_ef_runtime=64),
            ),
        ]
        for name, store in stores:
            await store.open()
            started = time.perf_counter()
            await fill(store, stored_texts, stored)
            load_s = time.perf_counter() - started
            for scoped in (False, True):
                truth = exact_answers(stored_texts, stored, queries, scoped)
                found, latencies = await probe(store, queries, scoped)
                p50, p99 = p50_p99_ms(latencies)
                recall = sum(a == b for a, b in zip(found, truth, strict=True)) / len(truth)
                rows.append(
                    {
                        "entries": size,
                        "store": name,
                        "scoped": scoped,
                        "p50_ms": p50,
                        "p99_ms": p99,
                        "recall_at_1": recall,
                        "load_s": load_s,
                    }
                )
                print(rows[-1], flush=True)
            await store.close()
    return rows


async def query_load(addresses: list[str], texts: list[str], clients: int) -> float:
    channels = [grpc.aio.insecure_channel(a) for a in addresses]
    stubs = [pb_grpc.CacheServiceStub(c) for c in channels]
    queue = list(texts)

    async def client(n: int) -> None:
        stub = stubs[n % len(stubs)]
        while queue:
            text = queue.pop()
            await stub.Query(pb.QueryRequest(query=text, similarity_threshold=0.0), timeout=60)

    started = time.perf_counter()
    await asyncio.gather(*(client(n) for n in range(clients)))
    elapsed = time.perf_counter() - started
    for c in channels:
        await c.close()
    return len(texts) / elapsed


def throughput_rows(redis_url: str) -> list[dict[str, Any]]:
    pairs = [p for p in load_pairs(1200) if p.text_a != p.text_b][:400]
    rows = []
    for embedders, servers in ((1, 1), (1, 2), (2, 1), (2, 2)):
        prefix = f"tp{embedders}{servers}{time.time_ns()}"
        embedder_procs = [
            ServiceProcess(
                "embedder", "--model-dir", "models/default", "--log-level", "WARNING"
            ).start()
            for _ in range(embedders)
        ]
        addresses = ",".join(e.address for e in embedder_procs)
        with tempfile.TemporaryDirectory() as data:
            caches = [
                redis_cache_server(
                    Path(data),
                    addresses,
                    redis_url,
                    prefix,
                    "--log-level",
                    "WARNING",
                    "--max-cache-size",
                    "100000",
                    "--purge-interval-s",  # the default, over the helper's test setting
                    "5",
                ).start()
                for _ in range(servers)
            ]
            try:
                stub = pb_grpc.CacheServiceStub(grpc.insecure_channel(caches[0].address))
                for p in pairs:
                    stub.Set(pb.SetRequest(prompt=p.text_a, response="x"), timeout=60)
                per_s = asyncio.run(
                    query_load([c.address for c in caches], [p.text_b for p in pairs], 16)
                )
                rows.append({"embedders": embedders, "cache_servers": servers, "per_s": per_s})
                print(rows[-1], flush=True)
            finally:
                for c in caches:
                    c.stop()
                for e in embedder_procs:
                    e.stop()
    return rows


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--sizes", default="10000,100000")
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as redis_dir:
        redis = RedisProcess(Path(redis_dir)).start()
        try:
            stores: list[dict[str, Any]] = []
            for size in (int(s) for s in args.sizes.split(",")):
                stores += asyncio.run(store_rows(size, redis.url))
            tp = throughput_rows(redis.url)
        finally:
            redis.stop()
    lines = [
        "| entries | store | scope | search p50 ms | p99 ms | recall@1 vs exact | load s |",
        "|---:|---|---|---:|---:|---:|---:|",
        *(
            f"| {r['entries']} | {r['store']} | {'one tenant' if r['scoped'] else 'all'} | "
            f"{r['p50_ms']:.2f} | {r['p99_ms']:.2f} | {r['recall_at_1']:.3f} | {r['load_s']:.0f} |"
            for r in stores
        ),
        "",
        "| embedders | cache servers (Redis) | Query hits/s, 16 clients | vs 1+1 |",
        "|---:|---:|---:|---:|",
        *(
            f"| {r['embedders']} | {r['cache_servers']} | {r['per_s']:.0f} | "
            f"{r['per_s'] / tp[0]['per_s']:.2f}x |"
            for r in tp
        ),
    ]
    text = "\n".join(lines)
    print(text)
    RESULTS.mkdir(parents=True, exist_ok=True)
    (RESULTS / "scale.md").write_text(text + "\n")


if __name__ == "__main__":
    main()
