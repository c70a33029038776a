"""VectorIndex: exact and HNSW search, removal, filters."""

from __future__ import annotations

import numpy as np
import pytest

from cache_server import vector_graph, vector_index
from cache_server.vector_index import VectorIndex


def unit_vectors(n: int, dim: int = 32, seed: int = 0) -> np.ndarray:
    v = np.random.default_rng(seed).standard_normal((n, dim)).astype(np.float32)
    return np.asarray(v / np.linalg.norm(v, axis=1, keepdims=True), dtype=np.float32)


def exact_and_graph(
    n: int, *, seed: int, queries: int, noise: float, dim: int = 48
) -> tuple[VectorIndex, VectorIndex, np.ndarray]:
    """The same `n` vectors searched exactly and on an HNSW graph (from 1000 entries), and
    `queries` of them moved by Gaussian noise of scale `noise` (seeded from `seed` + 1)."""
    vectors = unit_vectors(n, dim=dim, seed=seed)
    exact = VectorIndex(dim, ann_threshold=10**9)
    approx = VectorIndex(dim, ann_threshold=1000)
    for i, v in enumerate(vectors):
        exact.add(f"e{i}", v)
        approx.add(f"e{i}", v)
    moved = (
        vectors[:queries]
        + np.random.default_rng(seed + 1).standard_normal((queries, dim)).astype(np.float32) * noise
    )
    moved /= np.linalg.norm(moved, axis=1, keepdims=True)
    return exact, approx, moved


def test_exact_search_is_best_first_and_respects_the_threshold() -> None:
    index = VectorIndex(2)
    index.add("east", np.array([1.0, 0.0], dtype=np.float32))
    index.add("north", np.array([0.0, 1.0], dtype=np.float32))
    diagonal = np.array([0.8, 0.6], dtype=np.float32)
    index.add("diag", diagonal)
    found = index.search(np.array([1.0, 0.0], dtype=np.float32), k=3, min_similarity=0.5)
    assert [i for i, _ in found] == ["east", "diag"]
    assert found[0][1] == pytest.approx(1.0)
    assert found[1][1] == pytest.approx(0.8)


def test_replace_and_remove_keep_ids_and_rows_consistent() -> None:
    vectors = unit_vectors(100)
    index = VectorIndex(32)
    for i, v in enumerate(vectors):
        index.add(f"e{i}", v)
    for i in range(0, 100, 3):
        assert index.remove(f"e{i}")
    assert not index.remove("e0")
    assert len(index) == 100 - 34
    for i in range(1, 100, 3):
        (best, score), *_ = index.search(vectors[i], k=1, min_similarity=0.0)
        assert best == f"e{i}" and score == pytest.approx(1.0, abs=1e-5)
    index.add("e1", vectors[2])  # replace e1's vector
    assert index.search(vectors[2], k=1, min_similarity=0.99)[0][0] == "e1"


def test_filter_skips_rejected_ids() -> None:
    vectors = unit_vectors(50)
    index = VectorIndex(32)
    for i, v in enumerate(vectors):
        index.add(f"e{i}", v)
    found = index.search(vectors[10], k=5, min_similarity=-1.0, accept=lambda i: i != "e10")
    assert "e10" not in [i for i, _ in found]
    assert len(found) == 5


def test_hnsw_takes_over_past_the_threshold_with_high_recall() -> None:
    exact, approx, queries = exact_and_graph(3000, seed=1, queries=300, noise=0.05)
    assert approx.approximate and not exact.approximate
    agree = sum(exact.search(q, 1, -1.0)[0][0] == approx.search(q, 1, -1.0)[0][0] for q in queries)
    assert agree / len(queries) >= 0.99


def test_hnsw_removal_and_filtered_search() -> None:
    vectors = unit_vectors(400, dim=16, seed=3)
    index = VectorIndex(16, ann_threshold=100)
    for i, v in enumerate(vectors):
        index.add(f"e{i}", v)
    assert index.remove("e5")
    assert index.search(vectors[5], 1, 0.999) == []
    # A filter that admits only a handful still finds them (exact fallback if HNSW starves).
    allowed = {"e7", "e300"}
    found = index.search(vectors[7], 2, -1.0, accept=lambda i: i in allowed)
    assert found[0][0] == "e7"
    assert {i for i, _ in found} <= allowed
    index.add("e5", vectors[5])
    assert index.search(vectors[5], 1, 0.999)[0][0] == "e5"


def test_bulk_load_builds_hnsw_once_and_finds_everything() -> None:
    vectors = unit_vectors(600, dim=16, seed=4)
    index = VectorIndex(16, ann_threshold=500)
    index.add_many([f"e{i}" for i in range(600)], vectors)
    assert index.approximate and len(index) == 600
    assert index.search(vectors[123], 1, 0.999)[0][0] == "e123"
    index.add_many(["late"], vectors[:1] * -1)
    assert index.search(-vectors[0], 1, 0.999)[0][0] == "late"


def test_hnsw_bookkeeping_stays_the_size_of_the_live_ids_under_churn() -> None:
    """Replacing an id used to leave its old label mapped: 3,000 mixed operations on 200 ids
    grew the maps to ~940 entries (memory that only grows, for a cache that does not)."""
    rng = np.random.default_rng(7)
    vectors = unit_vectors(3000, dim=16, seed=5)
    index = VectorIndex(16, ann_threshold=50)
    live: dict[str, int] = {}
    for step in range(3000):
        entry_id = f"e{rng.integers(200)}"
        if rng.random() < 0.25 and entry_id in live:
            assert index.remove(entry_id)
            del live[entry_id]
        else:
            index.add(entry_id, vectors[step])  # new or replaced
            live[entry_id] = step
    assert index.approximate and len(index) == len(live)
    assert set(index._labels.of_id) == set(live) and len(index._labels.id_of) == len(live)
    assert set(index._labels.id_of.values()) == set(live)
    # Every live id is found by its current vector, never by a replaced one.
    for entry_id, step in list(live.items())[:50]:
        assert index.search(vectors[step], 1, 0.999)[0][0] == entry_id


def test_a_scoped_search_on_the_graph_with_a_known_selectivity_finds_the_scopes_nearest() -> None:
    """With the filter's share known, the graph is asked for unfiltered neighbours and the
    scope's nearest are kept: the same answers as an exact scoped search (recall), without
    calling the filter on every node the walk visits; a scope too rare for that falls back."""
    exact, approx, queries = exact_and_graph(4000, seed=5, queries=200, noise=0.3)
    for tenants in (4, 50, 2000):  # 2000 scopes of 2: too rare to over-fetch, filter walk
        calls = 0

        def in_scope(entry_id: str, tenants: int = tenants) -> bool:
            nonlocal calls
            calls += 1
            return int(entry_id[1:]) % tenants == 0

        agree = 0
        for q in queries:
            want = exact.search(q, 3, -1.0, in_scope)
            calls = 0
            got = approx.search(q, 3, -1.0, in_scope, selectivity=1 / tenants)
            assert all(int(i[1:]) % tenants == 0 for i, _ in got)
            agree += [i for i, _ in got] == [i for i, _ in want]
            if tenants == 4:
                assert calls <= 4 * 3 * 4  # the over-fetched neighbours only
        assert agree / len(queries) >= 0.97, (tenants, agree)
    # Nothing passes the threshold: nothing comes back, whatever the share.
    assert approx.search(queries[0], 1, 0.9999, lambda _: True, selectivity=0.5) == []


def test_the_search_breadth_grows_with_the_log_of_the_size_past_100k() -> None:
    for count, expected in ((10, 128), (100_000, 128), (316_228, 192), (1_000_000, 256)):
        assert vector_index.ef_for(128, count) == expected, count


def test_a_large_graph_is_searched_with_the_grown_breadth(monkeypatch: pytest.MonkeyPatch) -> None:
    vectors = unit_vectors(300, dim=8, seed=3)
    index = VectorIndex(8, ann_threshold=100, hnsw_ef_search=16)
    index.add_many([f"e{i}" for i in range(300)], vectors)
    assert index.approximate
    monkeypatch.setattr(vector_index, "EF_GROWTH_FROM", 30)  # 300 entries: 10x past it
    seen: list[int] = []
    graph = index._hnsw
    assert graph is not None
    monkeypatch.setattr(index, "_hnsw", _RecordingGraph(graph, seen))
    assert index.search(vectors[5], 1, 0.0)[0][0] == "e5"
    assert seen and seen[-1] == 32  # 16 x (1 + log10(300 / 30))


class _RecordingGraph:
    """An hnswlib index that notes every ef it is given."""

    def __init__(self, graph: object, seen: list[int]) -> None:
        self._graph = graph
        self._seen = seen

    def set_ef(self, ef: int) -> None:
        self._seen.append(ef)
        self._graph.set_ef(ef)  # type: ignore[attr-defined]

    def __getattr__(self, name: str) -> object:
        return getattr(self._graph, name)


def test_once_the_graph_is_built_it_holds_the_only_copy_of_the_vectors() -> None:
    vectors = unit_vectors(300, dim=16, seed=6)
    index = VectorIndex(16, ann_threshold=100)
    for i, v in enumerate(vectors):
        index.add(f"e{i}", v)
    assert index.approximate and index._matrix is None
    graph = index._hnsw
    assert graph is not None
    label = index._labels.of_id["e42"]
    assert np.array_equal(graph.get_items([label], return_type="numpy")[0], vectors[42])
    index.add("e42", vectors[0])  # replaced: the graph holds the new vector, found by it
    assert {i for i, _ in index.search(vectors[0], 2, 0.999)} == {"e0", "e42"}
    assert "e42" in index and index.remove("e42") and "e42" not in index
    assert len(index) == 299


@pytest.mark.parametrize("with_candidates", [True, False])
def test_an_exact_search_over_the_graphs_vectors_matches_numpy(with_candidates: bool) -> None:
    """What a search falls back to when a filter starves the graph's walk: every accepted id,
    scored from the vectors the graph holds (read in chunks), the same as numpy over the rows."""
    vectors = unit_vectors(2500, dim=16, seed=8)
    index = VectorIndex(16, ann_threshold=100)
    index.add_many([f"e{i}" for i in range(2500)], vectors)
    for i in range(0, 2500, 10):
        index.remove(f"e{i}")
    allowed = {f"e{i}" for i in range(2500) if i % 7 == 3 and i % 10}
    seen: list[str] = []

    def accept(entry_id: str) -> bool:
        seen.append(entry_id)
        return entry_id in allowed

    graph = index._hnsw
    assert graph is not None
    query = unit_vectors(1, dim=16, seed=9)[0]
    candidates = allowed | {"e0", "e5"} if with_candidates else None  # e0 removed: skipped
    found = vector_graph.search_exact(
        graph, index._labels, query, 5, 0.1, accept, candidates, chunk=64
    )
    rows = sorted(int(e[1:]) for e in allowed)
    scores = vectors[rows] @ query
    order = np.argsort(-scores)[:5]
    assert [i for i, _ in found] == [f"e{rows[j]}" for j in order if scores[j] >= 0.1]
    assert [s for _, s in found] == pytest.approx([float(scores[j]) for j in order])
    if with_candidates:  # the filter is asked only about candidates
        assert set(seen) <= allowed | {"e5"}
    # Nothing reaches the threshold: nothing comes back.
    assert vector_graph.search_exact(graph, index._labels, query, 5, 1.01, accept, None) == []
