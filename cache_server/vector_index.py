"""In-memory vector search over one cache's entries: exact (numpy) or approximate (HNSW).

Vectors are L2-normalised, so the inner product is the cosine similarity. Small caches are
searched exactly (a matrix-vector product); once a cache reaches `ann_threshold` entries, an
HNSW graph (hnswlib) answers instead: measured here on 100k vectors, exact 5-16 ms per query,
HNSW ~0.3 ms; on real QQP embeddings at 100k (bench/cache_bench.py), M 16 with ef 64 gave
recall@1 0.988 on novel queries, ef 128 0.996 at p99 0.44 ms, hence the default. Not
thread-safe: the store that owns it calls it from one thread. The graph can be saved
(`export_graph`) and adopted again at the next start instead of rebuilt, which is what the
embedded store's snapshots do (cache_server/store/index_snapshot.py).

Each vector is held once: by the numpy matrix while the index is exact, by the graph once it
is approximate (the matrix is dropped when the graph is built; the rare exact search a graph
still needs, when a filter starves its walk, reads the graph's own vectors in chunks). At 1M
768-dim entries that is 3 GB rather than 6. An empty index is filled in bulk, one row at a
time and without a second copy, by the loaders of cache_server/vector_load.py.

This module holds VectorIndex itself: the exact matrix, which ids it holds, when the graph is
built and answers, and the search breadth for the graph's size; the graph's own operations
(build, insert, retire, search, export, adopt) are in cache_server/vector_graph.py.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Collection

import hnswlib
import numpy as np

from cache_server import vector_graph
from cache_server.vector_graph import FloatArray as FloatArray
from cache_server.vector_graph import GraphLabels, Labels

# At a fixed ef, recall falls as the graph grows: on 1M derived QQP vectors (384 dims,
# bench/scale_stores.py) ef 128 gave recall@1 0.982, 192 0.992, 256 0.994 (p50 0.63 ms, p99
# 1.0 ms), 512 1.000 (1.16 ms), where at 100k ef 128 gives 0.992-1.000. So past EF_GROWTH_FROM
# entries the search breadth grows with the log of the size: x2 at 1M.
EF_GROWTH_FROM = 100_000


def ef_for(configured: int, count: int) -> int:
    """The HNSW search breadth for a graph of `count` entries: `configured` up to
    EF_GROWTH_FROM entries, then times 1 + log10(count / EF_GROWTH_FROM)."""
    if count <= EF_GROWTH_FROM:
        return configured
    return round(configured * (1 + math.log10(count / EF_GROWTH_FROM)))


class VectorIndex:
    def __init__(
        self,
        dimension: int,
        *,
        ann_threshold: int = 20_000,
        hnsw_m: int = 16,
        hnsw_ef_construction: int = 200,
        hnsw_ef_search: int = 128,
    ) -> None:
        self.dimension = dimension
        self._ann_threshold = ann_threshold
        self._hnsw_m = hnsw_m
        self._hnsw_ef_construction = hnsw_ef_construction
        self._hnsw_ef_search = hnsw_ef_search
        # Exact: the vectors, one row per id, and which row holds which id. Dropped (None,
        # empty) once the graph holds the vectors.
        self._matrix: FloatArray | None = np.zeros((64, dimension), dtype=np.float32)
        self._ids: list[str] = []
        self._row: dict[str, int] = {}
        # Approximate: HNSW labels are ints, a label per id, stable while the id lives.
        self._hnsw: hnswlib.Index | None = None
        self._labels = Labels()
        self._graph_version = 0  # counts the graph's changes (builds, inserts, removals)

    def __len__(self) -> int:
        return len(self._labels.of_id) if self._hnsw is not None else len(self._ids)

    def ef_search(self) -> int:
        """The HNSW search breadth for the current size (`ef_for`)."""
        return ef_for(self._hnsw_ef_search, len(self))

    def __contains__(self, entry_id: str) -> bool:
        return entry_id in (self._labels.of_id if self._hnsw is not None else self._row)

    @property
    def approximate(self) -> bool:
        return self._hnsw is not None

    @property
    def ann_threshold(self) -> int:
        return self._ann_threshold

    @property
    def hnsw_m(self) -> int:
        return self._hnsw_m

    @property
    def hnsw_ef_construction(self) -> int:
        return self._hnsw_ef_construction

    @property
    def graph_version(self) -> int:
        """Grows by one with each change to the HNSW graph: how far it has moved since a
        snapshot taken at a known version. After a graph is adopted, the changes that made (the
        adopted graph being version 0)."""
        return self._graph_version

    def add(self, entry_id: str, vector: FloatArray) -> None:
        """Adds or replaces the vector of `entry_id`."""
        if vector.shape != (self.dimension,):
            raise ValueError(f"vector of shape {vector.shape}; this index holds {self.dimension}")
        if self._hnsw is not None:
            if entry_id in self._labels.of_id:
                self._hnsw_remove(entry_id)
            self._hnsw_add(entry_id, vector)
            return
        matrix = self._exact_matrix()
        if entry_id in self._row:
            matrix[self._row[entry_id]] = vector
            return
        matrix = self._room_for(len(self._ids) + 1)
        self._row[entry_id] = len(self._ids)
        matrix[len(self._ids)] = vector
        self._ids.append(entry_id)
        if len(self._ids) >= self._ann_threshold:
            self._build_hnsw()

    def add_many(self, entry_ids: list[str], vectors: FloatArray) -> None:
        """Bulk load (new ids only): one HNSW build at the end instead of one insert each."""
        if not entry_ids:
            return
        if vectors.shape != (len(entry_ids), self.dimension):
            raise ValueError(f"vectors of shape {vectors.shape} for {len(entry_ids)} ids")
        if self._hnsw is not None:
            for entry_id, vector in zip(entry_ids, vectors, strict=True):
                self._hnsw_add(entry_id, vector)
            return
        start = len(self._ids)
        needed = start + len(entry_ids)
        self._room_for(needed)[start:needed] = vectors
        for offset, entry_id in enumerate(entry_ids):
            self._row[entry_id] = start + offset
        self._ids.extend(entry_ids)
        if len(self._ids) >= self._ann_threshold:
            self._build_hnsw()

    def remove(self, entry_id: str) -> bool:
        if self._hnsw is not None:
            if entry_id not in self._labels.of_id:
                return False
            self._hnsw_remove(entry_id)
            return True
        row = self._row.pop(entry_id, None)
        if row is None:
            return False
        matrix = self._exact_matrix()
        last = len(self._ids) - 1
        if row != last:  # move the last row into the hole
            moved = self._ids[last]
            matrix[row] = matrix[last]
            self._ids[row] = moved
            self._row[moved] = row
        self._ids.pop()
        return True

    def search(
        self,
        query: FloatArray,
        k: int,
        min_similarity: float,
        accept: Callable[[str], bool] | None = None,
        *,
        selectivity: float | None = None,
        candidates: Collection[str] | None = None,
    ) -> list[tuple[str, float]]:
        """Up to k (id, cosine similarity) pairs with similarity >= min_similarity, best first,
        restricted to ids that `accept` approves. `selectivity`, the share of ids `accept`
        approves when the caller knows it, lets the graph answer a filtered search without
        calling `accept` on every node it visits (see vector_graph.search_overfetch);
        `candidates`, when the caller knows them, are the only ids `accept` may approve, so
        that an exact search over the graph's vectors reads only theirs."""
        if self._hnsw is None:
            return self._search_exact(query, k, min_similarity, accept)
        graph, labels, count = self._hnsw, self._labels, len(self)
        if not count:
            return []
        found = None
        if accept is not None and selectivity is not None and selectivity > 0:
            ef = self.ef_search()
            found = vector_graph.search_overfetch(
                graph, labels, query, k, min_similarity, accept, selectivity, ef, count
            )
        if found is None:
            found = vector_graph.search(
                graph, labels, query, k, min_similarity, accept, self.ef_search(), count
            )
        if found is not None:
            return found
        # The filter starved the graph's walk: every accepted id, exactly.
        assert accept is not None
        return vector_graph.search_exact(
            graph, labels, query, k, min_similarity, accept, candidates
        )

    def _search_exact(
        self,
        query: FloatArray,
        k: int,
        min_similarity: float,
        accept: Callable[[str], bool] | None,
    ) -> list[tuple[str, float]]:
        if not self._ids:
            return []
        scores = self._exact_matrix()[: len(self._ids)] @ query
        if accept is None and k < len(scores):
            top = np.argpartition(-scores, k - 1)[:k]
            order = top[np.argsort(-scores[top])]
        else:
            order = np.argsort(-scores)
        out: list[tuple[str, float]] = []
        for row in order:
            score = float(scores[row])
            if score < min_similarity or len(out) == k:
                break
            entry_id = self._ids[row]
            if accept is None or accept(entry_id):
                out.append((entry_id, score))
        return out

    def export_graph(self, path: str) -> GraphLabels:
        """Writes the HNSW graph to `path` (hnswlib's format) and returns what its live labels
        stand for; a loader from `vector_load.adopter` adopts both again."""
        if self._hnsw is None:
            raise ValueError("an exact index has no graph to export")
        return vector_graph.export(self._hnsw, self._labels, path)

    # -- filled by cache_server/vector_load.py ---------------------------------------------

    def _install_exact(self, entry_ids: list[str], matrix: FloatArray) -> None:
        """Takes `matrix` (its first len(entry_ids) rows the ids' vectors) as this empty
        index's own."""
        self._matrix, self._ids = matrix, entry_ids
        self._row = {entry_id: i for i, entry_id in enumerate(entry_ids)}

    def _install_graph(self, graph: hnswlib.Index, labels: Labels, version: int) -> None:
        """Takes `graph`, whose live labels `labels` maps, as this empty index's vectors."""
        graph.set_num_threads(1)  # queries: one at a time, on the store's thread
        self._matrix, self._ids, self._row = None, [], {}
        self._hnsw, self._labels, self._graph_version = graph, labels, version

    # -- internals ------------------------------------------------------------------------

    def _exact_matrix(self) -> FloatArray:
        assert self._matrix is not None, "an approximate index holds its vectors in the graph"
        return self._matrix

    def _room_for(self, rows: int) -> FloatArray:
        """The exact matrix, grown (doubling) to hold at least `rows` rows."""
        matrix = self._exact_matrix()
        if rows > matrix.shape[0]:
            grown = np.zeros((max(rows, 2 * matrix.shape[0]), self.dimension), dtype=np.float32)
            grown[: len(self._ids)] = matrix[: len(self._ids)]
            self._matrix = matrix = grown
        return matrix

    def _build_hnsw(self) -> None:
        """Moves the exact matrix's vectors into a new graph, and drops the matrix."""
        count = len(self._ids)
        graph = vector_graph.new(self.dimension, count, self._hnsw_m, self._hnsw_ef_construction)
        vector_graph.add_rows(graph, self._exact_matrix()[:count], 0)
        labels = Labels({entry_id: i for i, entry_id in enumerate(self._ids)}, count)
        self._install_graph(graph, labels, self._graph_version + 1)

    def _hnsw_add(self, entry_id: str, vector: FloatArray) -> None:
        assert self._hnsw is not None
        vector_graph.insert(self._hnsw, self._labels, entry_id, vector)
        self._graph_version += 1

    def _hnsw_remove(self, entry_id: str) -> None:
        """Retires the id's label: out of the graph's results and out of both maps."""
        assert self._hnsw is not None
        vector_graph.retire(self._hnsw, self._labels, entry_id)
        self._graph_version += 1
