"""The data and the stores of bench.scale_table: vectors for N entries at D dims, the embedded
store's SQLite file written in bulk, and Redis filled through RedisStore.put_many (the
import's bulk path), each measured.

Vectors. The first 101,500 of the 102,000 distinct QQP questions (MiniLM, 384 dims,
`bench.cache_bench.qqp_vectors`) are stored as they are; the last 500 are the queries, never
stored (novel questions). Beyond 101,500 entries, entry j is QQP vector j mod 101,500 plus
seeded isotropic Gaussian noise, renormalised, with per-component sigma
sqrt((1/0.85^2 - 1)/dims): the derived vector sits at cosine ~0.85 from its source (the
cache's default hit threshold, further than a typical paraphrase), so it is not a duplicate of
it, and its ~10 siblings are at ~0.72 from each other. Measured at 1M: the exact top-1 of
the 500 novel queries is a derived vector for none of them unscoped and 1% scoped (the noise
lowers a vector's similarity to everything), so at 1M the answer is still mostly a real QQP
question, to be found in a graph (or matrix) ten times larger and denser. 768 dims: every vector
(stored and queries) through one fixed seeded Gaussian projection 384 -> 768, renormalised.

Each entry i carries the attribute tenant = i mod 4; a scoped query i asks tenant i mod 4.
Prompts are the QQP question (derived ones suffixed " [j]"), responses the entry's number:
memory per entry is the index's and the bookkeeping's, not that of real answers.

`python -m bench.scale_stores DIR QUERIES.npy OUT.json [--probe]` is the embedded worker: one
fresh process opens the store over DIR (time, VmRSS growth), searches, closes.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import sqlite3
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any, Literal

import numpy as np
import numpy.typing as npt
import redis.asyncio as aioredis

from bench.cache_bench import qqp_vectors
from cache_server.entries import CacheEntry, entry_id, prompt_key
from cache_server.store.base import CacheStore
from cache_server.store.embedded import EmbeddedStore
from cache_server.store.redis_store import RedisStore
from tests.processes import RedisProcess

FloatArray = npt.NDArray[np.float32]
QQP_LIMIT = 102_000
QUERIES = 500
TENANTS = 4
SOURCE_COSINE = 0.85
SEED = 16
CACHE = "bench"
CHUNK = 100_000
FILL_BATCH = 1024  # entries per put_many call (an import call's most)
# redis-py times a whole pipelined send against the socket timeout, and Redis reads it only
# as fast as it indexes (a 1M-entry HNSW fill by pipelines of 1000 HSETs died of the 5 s
# default ~7 minutes in); put_many sends `put_batch` entries per round trip, and the bench's
# clients wait up to this long for any reply (a FLAT search of 1M vectors included).
CLIENT_TIMEOUT_S = 600.0


def noise_sigma(dims: int) -> float:
    """Per-component sigma that puts a derived vector at cosine ~SOURCE_COSINE from its source."""
    return float(np.sqrt((1.0 / SOURCE_COSINE**2 - 1.0) / dims))


def normalise(x: FloatArray) -> FloatArray:
    out: FloatArray = (x / np.linalg.norm(x, axis=1, keepdims=True)).astype(np.float32)
    return out


def grow(base: FloatArray, size: int, seed: int = SEED) -> FloatArray:
    """`size` vectors: `base` first, then its vectors plus noise (see the module docstring)."""
    if size <= len(base):
        return base[:size]
    out = np.empty((size, base.shape[1]), dtype=np.float32)
    out[: len(base)] = base
    rng = np.random.default_rng(seed)
    sigma = noise_sigma(base.shape[1])
    for start in range(len(base), size, CHUNK):
        stop = min(start + CHUNK, size)
        source = base[np.arange(start, stop) % len(base)]
        noise = rng.standard_normal(source.shape, dtype=np.float32) * np.float32(sigma)
        out[start:stop] = normalise(source + noise)
    return out


def project(vectors: FloatArray, dims: int, seed: int = SEED) -> FloatArray:
    """The vectors through a fixed seeded Gaussian projection to `dims`, renormalised."""
    if dims == vectors.shape[1]:
        return vectors
    rng = np.random.default_rng(seed)
    matrix = rng.standard_normal((vectors.shape[1], dims), dtype=np.float32)
    out = np.empty((len(vectors), dims), dtype=np.float32)
    for start in range(0, len(vectors), CHUNK):
        out[start : start + CHUNK] = normalise(vectors[start : start + CHUNK] @ matrix)
    return out


def dataset(size: int, dims: int) -> tuple[list[str], FloatArray, FloatArray]:
    """Prompts and vectors of `size` stored entries at `dims`, and the 500 queries."""
    texts, vectors = qqp_vectors(Path("models/default"), QQP_LIMIT)
    base, queries = vectors[:-QUERIES], vectors[-QUERIES:]
    n = len(base)
    prompts = [texts[i % n] if i < n else f"{texts[i % n]} [{i}]" for i in range(size)]
    return prompts, project(grow(base, size), dims), project(queries, dims)


def attributes(i: int) -> dict[str, str]:
    return {"tenant": str(i % TENANTS)}


def exact_top1(stored: FloatArray, queries: FloatArray, scoped: bool) -> list[int]:
    """Index of the nearest stored vector per query (scoped: within the query's tenant)."""
    best = np.full(len(queries), -np.inf, dtype=np.float32)
    found = np.zeros(len(queries), dtype=np.int64)
    query_tenant = np.arange(len(queries)) % TENANTS
    rows = np.arange(len(queries))
    for start in range(0, len(stored), CHUNK):
        scores = queries @ stored[start : start + CHUNK].T
        if scoped:
            row_tenant = np.arange(start, start + scores.shape[1]) % TENANTS
            scores[query_tenant[:, None] != row_tenant[None, :]] = -np.inf
        top = scores.argmax(axis=1)
        value = scores[rows, top]
        better = value > best
        best[better] = value[better]
        found[better] = start + top[better]
    return [int(i) for i in found]


def recall_at_1(
    stored: FloatArray, queries: FloatArray, found: list[int], truth: list[int], scoped: bool
) -> float:
    """Share of queries whose top-1 is the exact one, or ties with it (QQP holds a few
    questions with the same vector), and, scoped, lies in the query's tenant."""
    right = 0
    for i, (got, best) in enumerate(zip(found, truth, strict=True)):
        if got == best or (
            got >= 0
            and (not scoped or got % TENANTS == i % TENANTS)
            and float(stored[got] @ queries[i]) >= float(stored[best] @ queries[i]) - 1e-6
        ):
            right += 1
    return right / len(found)


async def probe(
    store: CacheStore, queries: FloatArray, scoped: bool
) -> tuple[list[int], list[float]]:
    """Top-1 entry number per query (-1: none) and each search's latency in seconds."""
    found, latencies = [], []
    for i, q in enumerate(queries):
        scope = attributes(i) if scoped else {}
        started = time.perf_counter()
        hits = await store.search(CACHE, q, 1, -1.0, scope, 2.0)
        latencies.append(time.perf_counter() - started)
        found.append(int(hits[0][0].response) if hits else -1)
    return found, latencies


def rss_kb() -> int:
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1])
    raise RuntimeError("no VmRSS in /proc/self/status")


# -- embedded ------------------------------------------------------------------------------


def _rows(prompts: list[str], vectors: FloatArray) -> Iterator[tuple[Any, ...]]:
    for i, (prompt, vector) in enumerate(zip(prompts, vectors, strict=True)):
        attrs = attributes(i)
        yield (
            CACHE,
            entry_id(CACHE, prompt, attrs),
            prompt,
            prompt_key(prompt),
            str(i),
            json.dumps(attrs, ensure_ascii=False),
            1.0,  # created_at
            None,  # expires_at: never
            1.0,  # last_access
            vector.astype("<f4").tobytes(),
        )


def write_embedded(data_dir: Path, prompts: list[str], vectors: FloatArray) -> None:
    """The SQLite file `EmbeddedStore.put` would leave for these entries, written in bulk: the
    store creates its schema, then the rows go in as `_put` writes them, in one transaction."""

    async def create() -> None:
        store = EmbeddedStore(data_dir)
        await store.open()
        await store.close()

    asyncio.run(create())
    db = sqlite3.connect(data_dir / "semcache.sqlite3", isolation_level=None)
    db.execute("PRAGMA synchronous=OFF")
    db.execute("BEGIN")
    db.executemany(
        "INSERT INTO entries (cache_id, id, prompt, prompt_key, response, attributes, "
        "created_at, expires_at, last_access, vector) VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?)",
        _rows(prompts, vectors),
    )
    db.execute("COMMIT")
    db.execute("PRAGMA wal_checkpoint(TRUNCATE)")
    db.close()


def embedded_worker(data_dir: Path, queries_path: Path, probe_too: bool) -> dict[str, Any]:
    """In a fresh process: open the store over `data_dir` (time and RSS growth), optionally
    search, close cleanly."""
    queries = np.load(queries_path)

    async def run() -> dict[str, Any]:
        store = EmbeddedStore(data_dir)
        before = rss_kb()
        started = time.perf_counter()
        await store.open()
        out: dict[str, Any] = {"open_s": time.perf_counter() - started}
        out["rss_growth_kb"] = rss_kb() - before
        if probe_too:
            for scoped in (False, True):
                found, latencies = await probe(store, queries, scoped)
                out["scoped" if scoped else "all"] = {"found": found, "latencies": latencies}
        started = time.perf_counter()
        await store.close()
        out["close_s"] = time.perf_counter() - started
        return out

    return asyncio.run(run())


def run_worker(data_dir: Path, queries_path: Path, probe_too: bool) -> dict[str, Any]:
    """The worker in a child process (inherits this one's nice level)."""
    out_path = data_dir.parent / f"worker-{time.time_ns()}.json"
    command = [sys.executable, "-m", "bench.scale_stores", str(data_dir), str(queries_path)]
    command += [str(out_path), *(["--probe"] if probe_too else [])]
    subprocess.run(command, check=True)
    result: dict[str, Any] = json.loads(out_path.read_text())
    out_path.unlink()
    return result


# -- Redis ---------------------------------------------------------------------------------


def _ft_info(reply: Any) -> dict[str, Any]:
    """FT.INFO's reply (a dict from redis-py's parser, or a flat list) with str keys."""
    pairs = reply.items() if isinstance(reply, dict) else zip(reply[::2], reply[1::2], strict=True)
    return {(k.decode() if isinstance(k, bytes) else str(k)): v for k, v in pairs}


async def index_info(client: aioredis.Redis, index: str) -> dict[str, Any]:
    return _ft_info(await client.execute_command("FT.INFO", index))  # type: ignore[no-untyped-call]


async def wait_indexed(client: aioredis.Redis, index: str) -> dict[str, Any]:
    """Polls FT.INFO until the index is complete (indexing 0, percent_indexed 1)."""
    while True:
        info = await index_info(client, index)
        if int(info.get("indexing", 0)) == 0 and float(info.get("percent_indexed", 1)) >= 1.0:
            return info
        await asyncio.sleep(0.05)


async def used_memory(client: aioredis.Redis) -> int:
    return int((await client.info("memory"))["used_memory"])


async def fill_redis(store: RedisStore, prompts: list[str], vectors: FloatArray) -> None:
    """Every entry through `RedisStore.put_many`, FILL_BATCH per call: the product's bulk path
    (what an import stores a batch with), the PUT script per entry, `put_batch` per round trip.
    The first entry creates the index, meta and registry, as any cache's first put does."""
    for start in range(0, len(prompts), FILL_BATCH):
        items = []
        for i in range(start, min(start + FILL_BATCH, len(prompts))):
            attrs = attributes(i)
            key = entry_id(CACHE, prompts[i], attrs)
            items.append((CacheEntry(CACHE, key, prompts[i], str(i), attrs, 1.0), vectors[i]))
        results = await store.put_many(items, 10**9, 1.0, max_caches=1)
        refused = [r for r in results if isinstance(r, Exception)]
        if refused:
            raise RuntimeError(f"{len(refused)} entries refused from {start}: {refused[0]}")


async def measure_redis(
    redis_dir: Path,
    algorithm: Literal["FLAT", "HNSW"],
    prompts: list[str],
    stored: FloatArray,
    queries: FloatArray,
) -> dict[str, Any]:
    """A fresh redis-server: fill, wait for the index, memory, searches; then a clean stop
    (after BGREWRITEAOF: the AOF's base is an RDB) and the time a fresh redis-server takes to
    load it until the index is complete."""
    server = RedisProcess(redis_dir).start()
    out: dict[str, Any] = {}
    try:
        client = aioredis.Redis.from_url(server.url, socket_timeout=CLIENT_TIMEOUT_S)
        store = RedisStore(
            server.url, prefix=CACHE, algorithm=algorithm, timeout_s=CLIENT_TIMEOUT_S
        )
        await store.open()
        index = store.layout.cache(CACHE).index
        before = await used_memory(client)
        started = time.perf_counter()
        await fill_redis(store, prompts, stored)
        info = await wait_indexed(client, index)
        out["fill_s"] = time.perf_counter() - started
        out["memory_bytes"] = await used_memory(client) - before
        out["vector_index_bytes"] = float(info.get("vector_index_sz_mb", b"nan")) * 2**20
        for scoped in (False, True):
            found, latencies = await probe(store, queries, scoped)
            out["scoped" if scoped else "all"] = {"found": found, "latencies": latencies}
        await client.execute_command("BGREWRITEAOF")  # type: ignore[no-untyped-call]
        while True:
            persistence = await client.info("persistence")
            if (
                not persistence["aof_rewrite_in_progress"]
                and not persistence["aof_rewrite_scheduled"]
            ):
                break
            await asyncio.sleep(0.1)
        await store.close()
        await client.aclose()
    finally:
        server.stop()
    started = time.perf_counter()
    server = RedisProcess(redis_dir, server.port).start(timeout=3600)
    try:
        client = aioredis.Redis.from_url(server.url, socket_timeout=CLIENT_TIMEOUT_S)
        info = await wait_indexed(client, index)
        out["start_s"] = time.perf_counter() - started
        out["docs_after_start"] = int(info["num_docs"])
        await client.aclose()
    finally:
        server.stop()
    return out


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("data_dir", type=Path)
    parser.add_argument("queries", type=Path)
    parser.add_argument("out", type=Path)
    parser.add_argument("--probe", action="store_true")
    args = parser.parse_args()
    args.out.write_text(json.dumps(embedded_worker(args.data_dir, args.queries, args.probe)))


if __name__ == "__main__":
    main()
