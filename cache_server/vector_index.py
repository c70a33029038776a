"""In-memory vector search over one cache's entries: exact (numpy) or approximate (HNSW).

Vectors are L2-normalised, so the inner product is the cosine similarity. Small caches are
searched exactly (a matrix-vector product); once a cache reaches `ann_threshold` entries, an
HNSW graph (hnswlib) answers instead: measured here on 100k vectors, exact 5-16 ms per query,
HNSW ~0.3 ms; on real QQP embeddings at 100k (bench/cache_bench.py), M 16 with ef 64 gave
recall@1 0.988 on novel queries, ef 128 0.996 at p99 0.44 ms, hence the default. Not
thread-safe: the store that owns it calls it from one thread. The graph can be saved
(`export_graph`) and adopted again at the next start (`import_graph`) instead of rebuilt, which
is what the embedded store's snapshots do (cache_server/store/index_snapshot.py).
"""

from __future__ import annotations

import hashlib
import math
from collections.abc import Callable
from dataclasses import dataclass

import hnswlib
import numpy as np
import numpy.typing as npt

FloatArray = npt.NDArray[np.float32]
# A filtered search over the graph fetches this many times the neighbours the filter's share
# of ids would keep k of (measured at 100k QQP vectors in 4 scopes: recall@1 0.998 at x4,
# 0.998 at x8), up to MAX_OVERFETCH; a rarer scope is searched with the filter in the walk.
OVERFETCH = 4
MAX_OVERFETCH = 512
# At a fixed ef, recall falls as the graph grows: on 1M derived QQP vectors (384 dims,
# bench/scale_stores.py) ef 128 gave recall@1 0.982, 192 0.992, 256 0.994 (p50 0.63 ms, p99
# 1.0 ms), 512 1.000 (1.16 ms), where at 100k ef 128 gives 0.992-1.000. So past EF_GROWTH_FROM
# entries the search breadth grows with the log of the size: x2 at 1M.
EF_GROWTH_FROM = 100_000


def fingerprint(vector: FloatArray) -> bytes:
    """8 bytes that tell one vector from another (BLAKE2b of its little-endian float32s)."""
    return hashlib.blake2b(vector.astype("<f4", copy=False).tobytes(), digest_size=8).digest()


@dataclass(frozen=True)
class GraphLabels:
    """What an exported graph's live labels stand for: per label, its entry id and the
    fingerprint of the vector it holds."""

    labels: list[int]
    ids: list[str]
    fingerprints: list[bytes]


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
        # HNSW labels are ints: a label per id, stable while the id lives.
        self._hnsw: hnswlib.Index | None = None
        self._label: dict[str, int] = {}
        self._id_of_label: dict[int, str] = {}
        self._next_label = 0
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
        calling `accept` on every node it visits (see _search_hnsw_overfetch)."""
        if not self._ids:
            return []
        if self._hnsw is not None:
            found = None
            if accept is not None and selectivity is not None and selectivity > 0:
                found = self._search_hnsw_overfetch(query, k, min_similarity, accept, selectivity)
            if found is None:
                found = self._search_hnsw(query, k, min_similarity, accept)
            if found is not None:
                return found
        return self._search_exact(query, k, min_similarity, accept)

    def _search_hnsw_overfetch(
        self,
        query: FloatArray,
        k: int,
        min_similarity: float,
        accept: Callable[[str], bool],
        selectivity: float,
    ) -> list[tuple[str, float]] | None:
        """The graph's nearest ids with no filter, OVERFETCH times as many as the filter would
        keep k of, then filtered: the k nearest accepted ones are among them unless the
        accepted ids are rare near the query. None (ask the filtered search) when fewer than k
        accepted ids came back, or when so many would be needed that the walk costs more."""
        assert self._hnsw is not None
        wanted = min(math.ceil(k / selectivity * OVERFETCH), len(self._ids))
        if wanted > MAX_OVERFETCH:
            return None
        ids = self._id_of_label
        self._hnsw.set_ef(max(self.ef_search(), wanted))
        try:
            labels, distances = self._hnsw.knn_query(query, k=wanted)
        except RuntimeError:
            return None
        out: list[tuple[str, float]] = []
        for label, distance in zip(labels[0], distances[0], strict=True):
            similarity = 1.0 - float(distance)
            if similarity < min_similarity:
                return out  # best first: none further can pass
            entry_id = ids[int(label)]
            if accept(entry_id):
                out.append((entry_id, similarity))
                if len(out) == k:
                    return out
        return None if wanted < len(self._ids) else out

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

    def _search_hnsw(
        self,
        query: FloatArray,
        k: int,
        min_similarity: float,
        accept: Callable[[str], bool] | None,
    ) -> list[tuple[str, float]] | None:
        assert self._hnsw is not None
        ids = self._id_of_label
        label_filter = None if accept is None else (lambda label: accept(ids[label]))
        wanted = min(k, len(self._ids))
        self._hnsw.set_ef(self.ef_search())
        try:
            labels, distances = self._hnsw.knn_query(query, k=wanted, filter=label_filter)
        except RuntimeError:  # fewer than k reachable under the filter
            return None if accept is not None else []
        out = [
            (ids[int(label)], 1.0 - float(distance))
            for label, distance in zip(labels[0], distances[0], strict=True)
        ]
        out = [(i, s) for i, s in out if s >= min_similarity]
        if accept is not None and len(out) < k and len(labels[0]) < wanted:
            return None  # the filter starved the graph walk: answer exactly instead
        return out

    def export_graph(self, path: str) -> GraphLabels:
        """Writes the HNSW graph to `path` (hnswlib's format) and returns what its live labels
        stand for; `import_graph` adopts both again."""
        if self._hnsw is None:
            raise ValueError("an exact index has no graph to export")
        self._hnsw.save_index(path)
        labels = list(self._id_of_label)
        ids = [self._id_of_label[label] for label in labels]
        matrix, row = self._matrix, self._row
        # The graph holds each label's vector as the matrix row of its id does (add, remove).
        return GraphLabels(labels, ids, [fingerprint(matrix[row[e]]) for e in ids])

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
        label_of: dict[str, int] = {}
        for label, entry_id, printed in zip(
            exported.labels, exported.ids, exported.fingerprints, strict=True
        ):
            i = row.get(entry_id)
            if i is not None and entry_id not in label_of and fingerprint(vectors[i]) == printed:
                label_of[entry_id] = label
        in_graph = graph.get_ids_list()
        if not set(label_of.values()) <= set(in_graph):
            raise ValueError("labels missing from the graph")
        sample = list(label_of.items())[:: max(1, len(label_of) // 256)]
        if sample and not np.array_equal(
            graph.get_items([label for _, label in sample], return_type="numpy"),
            vectors[[row[e] for e, _ in sample]],
        ):
            raise ValueError("the graph's vectors differ from the ones given")
        missing = [i for i, entry_id in enumerate(entry_ids) if entry_id not in label_of]
        if len(missing) > max_added_share * len(entry_ids):
            return None
        changes = 0
        for label in set(in_graph) - set(label_of.values()):
            try:
                graph.mark_deleted(label)
                changes += 1
            except RuntimeError:  # deleted already
                pass
        next_label = max(in_graph, default=-1) + 1
        if missing:
            needed = graph.get_current_count() + len(missing)
            if needed > graph.get_max_elements():
                graph.resize_index(max(needed, 2 * len(entry_ids)))
            new_labels = np.arange(next_label, next_label + len(missing), dtype=np.int64)
            graph.add_items(vectors[missing], new_labels, num_threads=-1, replace_deleted=True)
            for label, i in zip(new_labels.tolist(), missing, strict=True):
                label_of[entry_ids[i]] = label
            next_label += len(missing)
            changes += len(missing)
        graph.set_num_threads(1)
        self._matrix = np.zeros((max(len(entry_ids), 64), self.dimension), dtype=np.float32)
        self._matrix[: len(entry_ids)] = vectors
        self._ids = list(entry_ids)
        self._row = row
        self._label = label_of
        self._id_of_label = {label: entry_id for entry_id, label in label_of.items()}
        self._next_label = next_label
        self._hnsw = graph
        self._graph_version = changes
        return changes

    def _build_hnsw(self) -> None:
        count = len(self._ids)
        index = hnswlib.Index(space="ip", dim=self.dimension)
        index.init_index(
            max_elements=max(2 * count, 1024),
            M=self._hnsw_m,
            ef_construction=self._hnsw_ef_construction,
            allow_replace_deleted=True,
        )
        labels = np.arange(count, dtype=np.int64)
        index.add_items(self._matrix[:count], labels, num_threads=-1)  # bulk build: all cores
        index.set_num_threads(1)  # queries: one at a time, on the store's thread
        self._label = {entry_id: i for i, entry_id in enumerate(self._ids)}
        self._id_of_label = dict(enumerate(self._ids))
        self._next_label = count
        self._hnsw = index
        self._graph_version += 1

    def _hnsw_add(self, entry_id: str, vector: FloatArray) -> None:
        assert self._hnsw is not None
        if self._hnsw.get_current_count() >= self._hnsw.get_max_elements():
            self._hnsw.resize_index(self._hnsw.get_max_elements() * 2)
        label = self._next_label
        self._next_label += 1
        self._hnsw.add_items(vector[None, :], np.array([label]), replace_deleted=True)
        self._label[entry_id] = label
        self._id_of_label[label] = entry_id
        self._graph_version += 1

    def _hnsw_remove(self, entry_id: str) -> None:
        """Retires the id's label: out of the graph's results and out of both maps."""
        assert self._hnsw is not None
        label = self._label.pop(entry_id)
        del self._id_of_label[label]
        self._hnsw.mark_deleted(label)
        self._graph_version += 1
