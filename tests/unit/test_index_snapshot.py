"""HNSW snapshots of the embedded store (cache_server/store/index_snapshot.py): a reopen loads
the graph instead of rebuilding it, SQLite stays the truth after a crash, and a snapshot that
does not fit is ignored. Real hnswlib, real SQLite, a low ann_threshold."""

from __future__ import annotations

import hashlib
import json
import logging
import shutil
from collections.abc import Callable
from pathlib import Path

import hnswlib
import numpy as np
import pytest

from cache_server import vector_graph
from cache_server.entries import CacheEntry
from cache_server.store import index_snapshot
from cache_server.store.embedded import EmbeddedStore
from cache_server.vector_graph import GraphLabels, fingerprint
from cache_server.vector_index import FloatArray, VectorIndex
from cache_server.vector_load import GraphAdopter, SnapshotMismatch

THRESHOLD = 100
DIM = 32
SNAPSHOT_LOG = "cache_server.store.index_snapshot"


def unit_vectors(n: int, dim: int = DIM, seed: int = 0) -> FloatArray:
    v = np.random.default_rng(seed).standard_normal((n, dim)).astype(np.float32)
    return np.asarray(v / np.linalg.norm(v, axis=1, keepdims=True), dtype=np.float32)


def eid(i: int) -> str:
    return f"{i:032x}"


async def open_store(
    data: Path, *, ann_threshold: int = THRESHOLD, hnsw_m: int = 16
) -> EmbeddedStore:
    store = EmbeddedStore(data, ann_threshold=ann_threshold, hnsw_m=hnsw_m)
    await store.open()
    return store


async def put(store: EmbeddedStore, cache_id: str, first: int, vectors: FloatArray) -> None:
    for i, vector in enumerate(vectors, first):
        entry = CacheEntry(cache_id=cache_id, id=eid(i), prompt=f"prompt {i}", response=f"r{i}")
        await store.put(entry, vector, 10**6, 1.0, max_caches=100)


async def nearest(
    store: EmbeddedStore, cache_id: str, queries: FloatArray, k: int = 5
) -> list[list[tuple[str, float]]]:
    out = []
    for query in queries:
        found = await store.search(cache_id, query, k, -1.0, {}, 1.0)
        out.append([(entry.id, round(similarity, 5)) for entry, similarity in found])
    return out


async def top_ids(store: EmbeddedStore, cache_id: str, vectors: FloatArray) -> list[str | None]:
    found = await nearest(store, cache_id, vectors, k=1)
    return [f[0][0] if f and f[0][1] > 0.999 else None for f in found]


def snapshot_files(data: Path) -> list[str]:
    folder = data / "semcache.sqlite3.hnsw"
    return sorted(p.name for p in folder.iterdir()) if folder.exists() else []


def digest(cache_id: str) -> str:
    return hashlib.sha256(cache_id.encode()).hexdigest()[:32]


def crash_copy(data: Path, to: Path) -> Path:
    """The files as a process killed now would leave them (the store is never closed)."""
    shutil.copytree(data, to, ignore=shutil.ignore_patterns("*-shm"))
    return to


@pytest.fixture()
def builds(monkeypatch: pytest.MonkeyPatch) -> list[int]:
    """The size of each HNSW graph built from scratch (made empty, for that many rows)."""
    built: list[int] = []
    original = vector_graph.new

    def counting(dimension: int, count: int, m: int, ef_construction: int) -> hnswlib.Index:
        built.append(count)
        return original(dimension, count, m, ef_construction)

    monkeypatch.setattr(vector_graph, "new", counting)
    return built


async def test_a_reopen_loads_the_graph_and_searches_the_same(
    tmp_path: Path, builds: list[int], caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.INFO, logger=SNAPSHOT_LOG)
    vectors, queries = unit_vectors(300), unit_vectors(30, seed=1)
    store = await open_store(tmp_path)
    await put(store, "team:a", 0, vectors)  # ':' is fine: files are named by a digest
    await put(store, "small", 0, vectors[:20])  # searched exactly: no graph, no snapshot
    before = await nearest(store, "team:a", queries)
    await store.close()
    assert builds == [THRESHOLD]
    assert snapshot_files(tmp_path) == [f"{digest('team:a')}.graph", f"{digest('team:a')}.map"]

    again = await open_store(tmp_path)
    try:
        assert builds == [THRESHOLD]  # not rebuilt
        assert again._snapshots.loaded == ["team:a"]
        assert any("loaded from its snapshot" in r.getMessage() for r in caplog.records)
        assert await nearest(again, "team:a", queries) == before
        assert await top_ids(again, "team:a", vectors) == [eid(i) for i in range(300)]
        assert await top_ids(again, "small", vectors[:20]) == [eid(i) for i in range(20)]
        await put(again, "team:a", 300, unit_vectors(5, seed=2))  # the loaded graph grows
        assert await again.count("team:a", 1.0) == 305
    finally:
        await again.close()


async def test_changes_after_the_snapshot_survive_a_crash(
    tmp_path: Path, builds: list[int], caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.INFO, logger=SNAPSHOT_LOG)
    vectors, later = unit_vectors(300), unit_vectors(40, seed=3)
    store = await open_store(tmp_path / "live")
    try:
        await put(store, "c", 0, vectors)
        await store.purge_expired(1.0)  # the periodic tick snapshots the new graph
        assert len(snapshot_files(tmp_path / "live")) == 2
        await put(store, "c", 300, later)  # after the snapshot: added,
        for i in range(0, 60, 2):
            assert await store.delete("c", eid(i))  # deleted,
        await put(store, "c", 1, vectors[250:251])  # and one vector replaced
        crashed = crash_copy(tmp_path / "live", tmp_path / "crashed")
    finally:
        await store.close()

    reopened = await open_store(crashed)
    try:
        assert reopened._snapshots.loaded == ["c"]
        assert builds == [THRESHOLD]
        assert await reopened.count("c", 1.0) == 340 - 30
        assert await top_ids(reopened, "c", later) == [eid(i) for i in range(300, 340)]
        gone = await nearest(reopened, "c", vectors[0:60:2], k=3)
        assert not {i for found in gone for i, _ in found} & {eid(i) for i in range(0, 60, 2)}
        # entry 1 now stands where entry 250 does, and no longer where it stood
        assert {i for i, _ in (await nearest(reopened, "c", vectors[250:251], k=2))[0]} == {
            eid(1),
            eid(250),
        }
        assert eid(1) not in [i for i, _ in (await nearest(reopened, "c", vectors[1:2], k=3))[0]]
        kept = [i for i in range(60, 300) if i != 250]
        assert await top_ids(reopened, "c", vectors[kept]) == [eid(i) for i in kept]
    finally:
        await reopened.close()


def _truncate_graph(folder: Path, cache_id: str) -> None:
    graph = folder / f"{digest(cache_id)}.graph"
    graph.write_bytes(graph.read_bytes()[: graph.stat().st_size // 2])


def _flip_a_graph_byte(folder: Path, cache_id: str) -> None:
    graph = folder / f"{digest(cache_id)}.graph"
    data = bytearray(graph.read_bytes())
    data[len(data) // 2] ^= 0xFF
    graph.write_bytes(bytes(data))


def _garble_the_header(folder: Path, cache_id: str) -> None:
    (folder / f"{digest(cache_id)}.map").write_bytes(b"\x00not json\n[]")


def _truncate_the_mapping(folder: Path, cache_id: str) -> None:
    mapping = folder / f"{digest(cache_id)}.map"
    mapping.write_bytes(mapping.read_bytes()[:-100])


def _shuffle_the_mapping(folder: Path, cache_id: str) -> None:
    """Valid checksums, wrong ids: only comparing the vectors with SQLite's catches it."""
    mapping = folder / f"{digest(cache_id)}.map"
    header_line, body = mapping.read_bytes().split(b"\n", 1)
    header, pairs = json.loads(header_line), json.loads(body)
    pairs["ids"] = pairs["ids"][1:] + pairs["ids"][:1]  # fingerprints left in place
    new_body = json.dumps(pairs).encode()
    header["mapping_sha256"] = hashlib.sha256(new_body).hexdigest()
    mapping.write_bytes(json.dumps(header).encode() + b"\n" + new_body)


def _take_another_caches_snapshot(folder: Path, cache_id: str) -> None:
    for suffix in ("graph", "map"):
        shutil.copy(folder / f"{digest('other')}.{suffix}", folder / f"{digest(cache_id)}.{suffix}")


@pytest.mark.parametrize(
    "damage",
    [
        _truncate_graph,
        _flip_a_graph_byte,
        _garble_the_header,
        _truncate_the_mapping,
        _shuffle_the_mapping,
        _take_another_caches_snapshot,
    ],
)
async def test_a_damaged_snapshot_is_ignored_and_the_graph_rebuilt(
    tmp_path: Path,
    builds: list[int],
    caplog: pytest.LogCaptureFixture,
    damage: Callable[[Path, str], None],
) -> None:
    vectors = unit_vectors(200)
    store = await open_store(tmp_path)
    await put(store, "c", 0, vectors)
    await put(store, "other", 1000, unit_vectors(150, seed=4))
    await store.close()
    damage(tmp_path / "semcache.sqlite3.hnsw", "c")
    builds.clear()

    again = await open_store(tmp_path)
    try:
        assert again._snapshots.loaded == ["other"]
        assert builds == [200]  # c rebuilt
        assert any(r.levelno == logging.WARNING and "'c'" in r.getMessage() for r in caplog.records)
        assert await top_ids(again, "c", vectors) == [eid(i) for i in range(200)]
    finally:
        await again.close()  # writes c's snapshot anew
    third = await open_store(tmp_path)
    await third.close()
    assert sorted(third._snapshots.loaded) == ["c", "other"]


async def test_a_snapshot_of_other_index_settings_is_ignored(
    tmp_path: Path, builds: list[int], caplog: pytest.LogCaptureFixture
) -> None:
    def warned(text: str) -> bool:
        return any(r.levelno == logging.WARNING and text in r.getMessage() for r in caplog.records)

    store = await open_store(tmp_path)
    await put(store, "c", 0, unit_vectors(150))
    await store.close()
    builds.clear()
    again = await open_store(tmp_path, hnsw_m=8)
    await again.close()
    assert again._snapshots.loaded == [] and builds == [150]
    assert warned("m 16, expected 8")

    # The cache flushed and filled again with another model's 16-dim vectors, and a crash
    # before any tick: the 32-dim snapshot is still there.
    small = unit_vectors(120, dim=16)
    other = await open_store(tmp_path / "other", hnsw_m=8)
    await put(other, "c", 0, small)
    crashed = crash_copy(tmp_path / "other", tmp_path / "crashed")
    await other.close()
    shutil.copytree(tmp_path / "semcache.sqlite3.hnsw", crashed / "semcache.sqlite3.hnsw")
    builds.clear()
    reopened = await open_store(crashed, hnsw_m=8)
    try:
        assert reopened._snapshots.loaded == [] and builds == [120]
        assert warned("dimension 32, expected 16")
        assert await top_ids(reopened, "c", small) == [eid(i) for i in range(120)]
    finally:
        await reopened.close()


async def test_snapshots_of_flushed_or_exact_caches_are_removed(tmp_path: Path) -> None:
    store = await open_store(tmp_path)
    await put(store, "a", 0, unit_vectors(120))
    await put(store, "b", 0, unit_vectors(120, seed=5))
    await store.close()
    assert len(snapshot_files(tmp_path)) == 4

    again = await open_store(tmp_path)
    await again.flush("a")
    await again.purge_expired(1.0)  # the tick removes a's files
    assert snapshot_files(tmp_path) == [f"{digest('b')}.graph", f"{digest('b')}.map"]
    await put(again, "a", 0, unit_vectors(120))
    await again.close()
    assert len(snapshot_files(tmp_path)) == 4

    # a flush, then a crash: the next open removes the files the database no longer backs
    again = await open_store(tmp_path)
    await again.flush("a")
    crashed = crash_copy(tmp_path, tmp_path / "crashed")
    await again.close()
    (crashed / "semcache.sqlite3.hnsw" / f"{digest('b')}.graph.tmp").write_bytes(b"half")
    reopened = await open_store(crashed)
    try:
        assert snapshot_files(crashed) == [f"{digest('b')}.graph", f"{digest('b')}.map"]
    finally:
        await reopened.close()

    # a cache now under the threshold is searched exactly: its snapshot goes too
    exact = await open_store(tmp_path, ann_threshold=1000)
    try:
        assert snapshot_files(tmp_path) == []
        assert await exact.count("b", 1.0) == 120
    finally:
        await exact.close()


async def test_the_periodic_snapshot_waits_for_a_share_of_changes(tmp_path: Path) -> None:
    def snapshot_count() -> int:
        mapping = tmp_path / "semcache.sqlite3.hnsw" / f"{digest('c')}.map"
        return int(json.loads(mapping.read_bytes().split(b"\n", 1)[0])["count"])

    vectors = unit_vectors(260)
    store = await open_store(tmp_path)
    try:
        await put(store, "c", 0, vectors[:200])
        assert snapshot_files(tmp_path) == []
        await store.purge_expired(1.0)
        assert snapshot_count() == 200
        few = int(200 * index_snapshot.SAVE_SHARE)  # under the share of the 219 then held
        await put(store, "c", 200, vectors[200 : 200 + few - 1])
        await store.purge_expired(1.0)
        assert snapshot_count() == 200  # fewer changes than the share: not yet
        await put(store, "c", 200 + few - 1, vectors[200 + few - 1 : 230])
        await store.purge_expired(1.0)  # 30 changes in 230 entries
        assert snapshot_count() == 230
    finally:
        await store.close()


async def test_a_few_wrong_ids_in_a_snapshot_are_repaired_not_served(
    tmp_path: Path, builds: list[int]
) -> None:
    vectors = unit_vectors(200)
    store = await open_store(tmp_path)
    await put(store, "c", 0, vectors)
    await store.close()
    mapping = tmp_path / "semcache.sqlite3.hnsw" / f"{digest('c')}.map"
    header_line, body = mapping.read_bytes().split(b"\n", 1)
    header, pairs = json.loads(header_line), json.loads(body)
    ids = pairs["ids"]
    ids[0], ids[1] = ids[1], ids[0]  # two labels swapped, checksums recomputed
    new_body = json.dumps(pairs).encode()
    header["mapping_sha256"] = hashlib.sha256(new_body).hexdigest()
    mapping.write_bytes(json.dumps(header).encode() + b"\n" + new_body)
    builds.clear()

    again = await open_store(tmp_path)
    try:
        assert again._snapshots.loaded == ["c"] and builds == []
        assert await top_ids(again, "c", vectors) == [eid(i) for i in range(200)]
        assert await again.count("c", 1.0) == 200
    finally:
        await again.close()


def adopt(
    index: VectorIndex,
    ids: list[str],
    vectors: FloatArray,
    graph: hnswlib.Index,
    exported: GraphLabels,
) -> bool:
    """Streams the rows into a GraphAdopter of `graph`, as a start does."""
    adopter = GraphAdopter(index, len(ids), graph, exported)
    for entry_id, vector in zip(ids, vectors, strict=True):
        adopter.add(entry_id, vector)
    return adopter.finish()


def test_an_adopted_graph_is_reconciled_with_the_rows_given(tmp_path: Path) -> None:
    vectors = unit_vectors(400)
    source = VectorIndex(DIM, ann_threshold=THRESHOLD)
    source.add_many([eid(i) for i in range(300)], vectors[:300])
    exported = source.export_graph(str(tmp_path / "g"))

    def graph() -> hnswlib.Index:
        loaded = hnswlib.Index(space="ip", dim=DIM)
        loaded.load_index(str(tmp_path / "g"), max_elements=1024, allow_replace_deleted=True)
        return loaded

    # rows 0-19 gone, 300-399 new, row 50's vector changed
    rows = list(range(20, 400))
    now = vectors[rows].copy()
    now[rows.index(50)] = vectors[399]
    index = VectorIndex(DIM, ann_threshold=THRESHOLD)
    assert adopt(index, [eid(i) for i in rows], now, graph(), exported)
    assert index.approximate and len(index) == 380 and index.graph_version == 20 + 101 + 1
    assert index._matrix is None  # the graph holds the only copy
    for row, vector in zip(rows, now, strict=True):
        found = {i for i, s in index.search(vector, 2, 0.999)}
        assert eid(row) in found and not found & {eid(i) for i in range(20)}
    assert eid(50) not in {i for i, _ in index.search(vectors[50], 3, -1.0)}

    far_behind = VectorIndex(DIM, ann_threshold=THRESHOLD)  # over half of the rows new
    assert not adopt(
        far_behind, [eid(i) for i in range(250, 400)], vectors[250:], graph(), exported
    )
    assert len(far_behind) == 0 and not far_behind.approximate

    # A graph that does not hold the vectors its mapping vouches for (a row's last bit
    # changed in the rows and in the mapping, not in the graph) is refused.
    tampered = vectors[:300].copy()
    tampered[0, 0] = np.nextafter(tampered[0, 0], np.float32(2))
    prints = [fingerprint(tampered[int(e, 16)]) for e in exported.ids]
    lying = GraphLabels(exported.labels, exported.ids, prints)
    fresh = VectorIndex(DIM, ann_threshold=THRESHOLD)
    with pytest.raises(SnapshotMismatch):
        adopt(fresh, [eid(i) for i in range(300)], tampered, graph(), lying)
    assert len(fresh) == 0
