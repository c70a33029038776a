"""In-memory vector search over one cache's entries: exact (numpy) or approximate (HNSW).

Vectors are L2-normalised, so the inner product is the cosine similarity. Small caches are
searched exactly (a matrix-vector product); once a cache reaches `ann_threshold` entries, an
HNSW graph (hnswlib) answers instead: measured here on 100k vectors, exact 5-16 ms per query,
HNSW ~0.3 ms; on real QQP embeddings at 100k (bench/cache_bench.py), M 16 with ef 64 gave
recall@1 0.988 on novel queries, ef 128 0.996 at p99 0.44 ms, hence the default. Not
thread-safe: the store that owns it calls it from one thread. The graph can be saved
(`export_graph`) and adopted again at the next start (`import_graph`) instead of rebuilt, which
is what the embedded store's snapshots do (cache_server/store/index_snapshot.py).

This module holds VectorIndex itself: the exact matrix, which ids it holds, when the graph is
built and answers, and the search breadth for the graph's size; the graph's own operations
(build, insert, retire, search, export, adopt) are in cache_server/vector_graph.py.
"""

from __future__ import annotations

import math
from collections.abc import Callable

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
        self._matrix = np.zeros((64, dimension), dtype=np.float32)
        self._ids: list[str] = []
        self._row: dict[str, int] = {}
        # HNSW labels are ints: a label per id, stable while the id lives (vector_graph).
        self._hnsw: hnswlib.Index | None = None
        self._labels = Labels()
        self._graph_version = 0  # counts the graph's changes (builds, inserts, removals)

    def __len__(self) -> int:
        return len(self._ids)

    def ef_search(self) -> int:
        """The HNSW search breadth for the current size: the configured one up to
        EF_GROWTH_FROM entries, then times 1 + log10(entries / EF_GROWTH_FROM)."""
        count = len(self._ids)
        if count <= EF_GROWTH_FROM:
            return self._hnsw_ef_search
        return round(self._hnsw_ef_search * (1 + math.log10(count / EF_GROWTH_FROM)))

    def __contains__(self, entry_id: str) -> bool:
        return entry_id in self._row

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
        snapshot taken at a known version. After `import_graph`, the changes that made (the
        imported graph being version 0)."""
        return self._graph_version

    def add(self, entry_id: str, vector: FloatArray) -> None:
        """Adds or replaces the vector of `entry_id`."""
        if vector.shape != (self.dimension,):
            raise ValueError(f"vector of shape {vector.shape}; this index holds {self.dimension}")
        if entry_id in self._row:
            self._matrix[self._row[entry_id]] = vector
            if self._hnsw is not None:
                self._hnsw_remove(entry_id)
                self._hnsw_add(entry_id, vector)
            return
        if len(self._ids) == self._matrix.shape[0]:
            grown = np.zeros((self._matrix.shape[0] * 2, self.dimension), dtype=np.float32)
            grown[: len(self._ids)] = self._matrix[: len(self._ids)]
            self._matrix = grown
        self._row[entry_id] = len(self._ids)
        self._matrix[len(self._ids)] = vector
        self._ids.append(entry_id)
        if self._hnsw is not None:
            self._hnsw_add(entry_id, vector)
        elif len(self._ids) >= self._ann_threshold:
            self._build_hnsw()

    def add_many(self, entry_ids: list[str], vectors: FloatArray) -> None:
        """Bulk load (new ids only): one HNSW build at the end instead of one insert each."""
        if not entry_ids:
            return
        if vectors.shape != (len(entry_ids), self.dimension):
            raise ValueError(f"vectors of shape {vectors.shape} for {len(entry_ids)} ids")
        start = len(self._ids)
        needed = start + len(entry_ids)
        if needed > self._matrix.shape[0]:
            grown = np.zeros(
                (max(needed, 2 * self._matrix.shape[0]), self.dimension), dtype=np.float32
            )
            grown[:start] = self._matrix[:start]
            self._matrix = grown
        self._matrix[start:needed] = vectors
        for offset, entry_id in enumerate(entry_ids):
            self._row[entry_id] = start + offset
        self._ids.extend(entry_ids)
        if self._hnsw is not None:
            for entry_id, vector in zip(entry_ids, vectors, strict=True):
                self._hnsw_add(entry_id, vector)
        elif len(self._ids) >= self._ann_threshold:
            self._build_hnsw()

    def remove(self, entry_id: str) -> bool:
        row = self._row.pop(entry_id, None)
        if row is None:
            return False
        last = len(self._ids) - 1
        if row != last:  # move the last row into the hole
            moved = self._ids[last]
            self._matrix[row] = self._matrix[last]
            self._ids[row] = moved
            self._row[moved] = row
        self._ids.pop()
        if self._hnsw is not None:
            self._hnsw_remove(entry_id)
        return True

    def search(
        self,
        query: FloatArray,
        k: int,
        min_similarity: float,
        accept: Callable[[str], bool] | None = None,
        *,
        selectivity: float | None = None,
    ) -> list[tuple[str, float]]:
        """Up to k (id, cosine similarity) pairs with similarity >= min_similarity, best first,
        restricted to ids that `accept` approves. `selectivity`, the share of ids `accept`
        approves when the caller knows it, lets the graph answer a filtered search without
        calling `accept` on every node it visits (see vector_graph.search_overfetch)."""
        if not self._ids:
            return []
        if self._hnsw is not None:
            graph, labels, count = self._hnsw, self._labels, len(self._ids)
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
        return self._search_exact(query, k, min_similarity, accept)

    def _search_exact(
        self,
        query: FloatArray,
        k: int,
        min_similarity: float,
        accept: Callable[[str], bool] | None,
    ) -> list[tuple[str, float]]:
        scores = self._matrix[: len(self._ids)] @ query
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
        stand for; `import_graph` adopts both again."""
        if self._hnsw is None:
            raise ValueError("an exact index has no graph to export")
        matrix, row = self._matrix, self._row
        # The graph holds each label's vector as the matrix row of its id does (add, remove).
        return vector_graph.export(self._hnsw, self._labels, path, lambda e: matrix[row[e]])

    def import_graph(
        self,
        entry_ids: list[str],
        vectors: FloatArray,
        graph: hnswlib.Index,
        exported: GraphLabels,
        *,
        max_added_share: float = 0.5,
    ) -> int | None:
        """Bulk load into an empty index, like `add_many`, but adopting `graph` (exported with
        `exported`, loaded with allow_replace_deleted) instead of building one. `entry_ids` and
        `vectors` are the truth: a label whose id is not among them, or was exported with
        another vector (by fingerprint), is marked deleted, and ids the graph lacks are added.
        Returns the number of such changes, or None, leaving the index empty, when `entry_ids`
        are too few for a graph or more than `max_added_share` of them would have to be added
        (a fresh build is then as quick and makes a better graph). Raises ValueError or
        RuntimeError, leaving the index empty, when the graph disagrees with `exported` or with
        `vectors` (checked on a sample of labels)."""
        if self._ids:
            raise ValueError("import_graph loads an empty index")
        if vectors.shape != (len(entry_ids), self.dimension) or graph.dim != self.dimension:
            raise ValueError(f"vectors of shape {vectors.shape}, graph of dim {graph.dim}")
        if len(entry_ids) < self._ann_threshold:
            return None
        row = {entry_id: i for i, entry_id in enumerate(entry_ids)}
        if len(row) != len(entry_ids):
            raise ValueError("duplicate entry ids")
        adopted = vector_graph.adopt(graph, exported, entry_ids, vectors, row, max_added_share)
        if adopted is None:
            return None
        labels, changes = adopted
        self._matrix = np.zeros((max(len(entry_ids), 64), self.dimension), dtype=np.float32)
        self._matrix[: len(entry_ids)] = vectors
        self._ids = list(entry_ids)
        self._row = row
        self._labels = labels
        self._hnsw = graph
        self._graph_version = changes
        return changes

    def _build_hnsw(self) -> None:
        count = len(self._ids)
        self._hnsw, self._labels = vector_graph.build(
            self.dimension,
            self._ids,
            self._matrix[:count],
            self._hnsw_m,
            self._hnsw_ef_construction,
        )
        self._graph_version += 1

    def _hnsw_add(self, entry_id: str, vector: FloatArray) -> None:
        assert self._hnsw is not None
        vector_graph.insert(self._hnsw, self._labels, entry_id, vector)
        self._graph_version += 1

    def _hnsw_remove(self, entry_id: str) -> None:
        """Retires the id's label: out of the graph's results and out of both maps."""
        assert self._hnsw is not None
        vector_graph.retire(self._hnsw, self._labels, entry_id)
        self._graph_version += 1
