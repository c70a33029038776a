"""The pure logic of bench.scale_table / bench.scale_stores: derived vectors, the bulk-written
SQLite file read back by the real EmbeddedStore, exact top-1 and recall, the table."""

from __future__ import annotations

import asyncio
from pathlib import Path
from typing import Any

import numpy as np

from bench import scale_stores as ss
from bench.scale_table import format_table, rows_of
from cache_server.entries import entry_id
from cache_server.store.embedded import EmbeddedStore


def _unit(n: int, dims: int, seed: int = 0) -> ss.FloatArray:
    return ss.normalise(np.random.default_rng(seed).standard_normal((n, dims)).astype(np.float32))


def test_grow_keeps_the_base_and_derives_unit_vectors_deterministically() -> None:
    base = _unit(200, 384)
    grown = ss.grow(base, 1000, seed=3)
    assert grown.shape == (1000, 384) and grown.dtype == np.float32
    assert np.array_equal(grown[:200], base)
    assert np.allclose(np.linalg.norm(grown, axis=1), 1.0, atol=1e-5)
    assert np.array_equal(grown, ss.grow(base, 1000, seed=3))
    assert not np.array_equal(grown[200:], ss.grow(base, 1000, seed=4)[200:])
    # Each derived vector sits at ~SOURCE_COSINE from its source, not on it.
    cosine = np.sum(grown[200:] * base[np.arange(200, 1000) % 200], axis=1)
    assert abs(float(cosine.mean()) - ss.SOURCE_COSINE) < 0.02 and cosine.max() < 0.95
    assert np.array_equal(ss.grow(base, 150), base[:150])


def test_project_to_768_keeps_shape_norm_and_neighbours() -> None:
    vectors = _unit(300, 384)
    projected = ss.project(vectors, 768, seed=5)
    assert projected.shape == (300, 768) and projected.dtype == np.float32
    assert np.allclose(np.linalg.norm(projected, axis=1), 1.0, atol=1e-5)
    assert np.array_equal(projected, ss.project(vectors, 768, seed=5))
    assert ss.project(vectors, 384) is vectors
    # A random projection roughly keeps inner products (error ~ 1/sqrt(768)).
    error = np.abs(projected[:50] @ projected[50:].T - vectors[:50] @ vectors[50:].T)
    assert float(error.mean()) < 0.05


def test_bulk_written_file_opens_in_the_real_embedded_store(tmp_path: Path) -> None:
    vectors = _unit(60, 16, seed=1)
    prompts = [f"question {i}?" for i in range(60)]
    ss.write_embedded(tmp_path, prompts, vectors)

    async def check() -> None:
        store = EmbeddedStore(tmp_path)
        await store.open()
        try:
            assert await store.count(ss.CACHE, 2.0) == 60
            hits = await store.search(ss.CACHE, vectors[7], 1, -1.0, {}, 2.0)
            entry, similarity = hits[0]
            assert entry.response == "7" and similarity > 0.999
            assert entry.id == entry_id(ss.CACHE, prompts[7], {"tenant": "3"})
            assert dict(entry.attributes) == {"tenant": "3"} and entry.expires_at is None
            scoped = await store.search(ss.CACHE, vectors[7], 3, -1.0, {"tenant": "2"}, 2.0)
            assert [int(e.response) % 4 for e, _ in scoped] == [2, 2, 2]
            assert await store.find_exact(ss.CACHE, prompts[9], {}, 2.0) is not None
        finally:
            await store.close()

    asyncio.run(check())


def test_exact_top1_and_recall_scoped_and_ties() -> None:
    stored = _unit(40, 8, seed=2)
    queries = stored[[5, 6, 7, 9]] + 0.01
    assert ss.exact_top1(stored, queries, False) == [5, 6, 7, 9]
    scoped = ss.exact_top1(stored, queries, True)
    assert [s % 4 for s in scoped] == [0, 1, 2, 3]
    assert scoped[1] == 5 + 0 or scoped[1] % 4 == 1
    # A tie (the same vector stored twice) counts as found.
    tied = np.vstack([stored, stored[5:6]])
    assert ss.recall_at_1(tied, queries, [40, 6, 7, -1], [5, 6, 7, 9], False) == 0.75


def test_table_rows_and_left_out() -> None:
    raw: dict[str, Any] = {
        "all": {"latencies": [0.001, 0.002, 0.003]},
        "scoped": {"latencies": [0.004] * 3},
        "memory_bytes": 2_000_000,
        "vector_index_bytes": None,
        "start_cold_s": None,
        "start_clean_s": 1.25,
        "fill_s": 3.0,
    }
    rows = rows_of(1000, 384, "redis-flat", raw, {"all": 1.0, "scoped": 0.5})
    assert [r["scope"] for r in rows] == ["all", "one tenant"]
    assert rows[0]["p50_ms"] == 2.0 and rows[0]["memory_bytes_per_entry"] == 2000
    left = [{"entries": 10**6, "dims": 768, "store": "redis-hnsw", "reason": "too slow"}]
    text = format_table(rows, left)
    lines = text.splitlines()
    assert lines[0].startswith("| entries | dims | store | scope | search p50 ms")
    assert lines[2] == (
        "| 1000 | 384 | redis FLAT | all | 2.00 | 2.98 | 1.000 | 2000 | - | - | 1.25 | 3.0 |"
    )
    assert "- 1000000 entries, 768 dims, redis HNSW ef64: too slow" in lines
