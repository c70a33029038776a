"""Filling an empty VectorIndex from rows that arrive one at a time (the embedded store's
open reads them from SQLite), holding each vector once along the way.

Until now a start gathered a cache's rows into a list, stacked them into one array, copied that
into the index's matrix, then built or loaded the graph beside it: four copies of every vector
at the peak (~12.5 GB resident at 1M 768-dim entries, against ~10.6 GB once open). A loader
puts each row where it will live:

- `ExactLoader` (fewer rows than the index's ANN threshold): into a matrix of the right size;
- `GraphBuilder` (a new graph): into a buffer of CHUNK rows, added to the graph in bulk on all
  cores each time it fills (the graph is the same as one built from all rows at once: hnswlib
  inserts a bulk add one row at a time, in parallel);
- `GraphAdopter` (a graph loaded from a snapshot): nowhere, when the snapshot holds the row's
  vector already (by fingerprint); otherwise kept until `finish` inserts it. More than
  `max_added_share` of the rows to insert, or a sampled vector the graph holds differently,
  and it gives up: `finish` returns False and the caller fills the index again from scratch.

`loader_for` picks the first two by size; index_snapshot makes adopters. Not thread-safe.
"""

from __future__ import annotations

from typing import Protocol

import hnswlib
import numpy as np

from cache_server import vector_graph
from cache_server.vector_graph import FloatArray, GraphLabels, Labels, fingerprint
from cache_server.vector_index import VectorIndex

# Rows buffered before a bulk add to a new graph: a 32nd of the rows, between 1,024 (enough
# per add to keep every core busy) and 10,000 (30 MB at 768 dims), so that the buffer stays
# within 3% of what the graph will hold (measured at 30k: 10,000 rows made the start's peak
# 1.24x its steady state).
CHUNK = 10_000
MIN_CHUNK = 1_024
# Sampled rows whose vector the adopted graph must hold bit for bit (about this many).
SAMPLE = 256


class SnapshotMismatch(ValueError):
    """An adopted graph that disagrees with its own labels or with the rows given."""


class IndexLoader(Protocol):
    def add(self, entry_id: str, vector: FloatArray) -> None:
        """The next row (each id once)."""

    def finish(self) -> bool:
        """Hands what was loaded to the index; False when the index must be filled again from
        scratch (an adopter that gave up), the index then left empty."""


def loader_for(index: VectorIndex, count: int) -> IndexLoader:
    """A loader for about `count` rows into the empty `index`: exact below its ANN threshold,
    a new graph from it."""
    if len(index):
        raise ValueError("a loader fills an empty index")
    if count < index.ann_threshold:
        return ExactLoader(index, count)
    return GraphBuilder(index, count)


class ExactLoader:
    def __init__(self, index: VectorIndex, count: int) -> None:
        self._index = index
        self._matrix = np.zeros((max(count, 64), index.dimension), dtype=np.float32)
        self._ids: list[str] = []

    def add(self, entry_id: str, vector: FloatArray) -> None:
        if len(self._ids) == len(self._matrix):  # more rows than announced
            self._matrix = np.concatenate([self._matrix, np.zeros_like(self._matrix)])
        self._matrix[len(self._ids)] = vector
        self._ids.append(entry_id)

    def finish(self) -> bool:
        if len(self._ids) >= self._index.ann_threshold:
            ids, matrix = self._ids, self._matrix
            self._index.add_many(ids, matrix[: len(ids)])  # past the threshold after all
        else:
            self._index._install_exact(self._ids, self._matrix)
        return True


class GraphBuilder:
    def __init__(self, index: VectorIndex, count: int) -> None:
        self._index = index
        self._graph = vector_graph.new(
            index.dimension, count, index.hnsw_m, index.hnsw_ef_construction
        )
        rows = min(CHUNK, max(count // 32, MIN_CHUNK))
        self._buffer = np.empty((rows, index.dimension), dtype=np.float32)
        self._buffered = 0
        self._of_id: dict[str, int] = {}

    def add(self, entry_id: str, vector: FloatArray) -> None:
        self._buffer[self._buffered] = vector
        self._buffered += 1
        self._of_id[entry_id] = len(self._of_id)
        if self._buffered == len(self._buffer):
            self._flush()

    def _flush(self) -> None:
        if self._buffered:
            first = len(self._of_id) - self._buffered
            vector_graph.add_rows(self._graph, self._buffer[: self._buffered], first)
            self._buffered = 0

    def finish(self) -> bool:
        self._flush()
        self._index._install_graph(self._graph, Labels(self._of_id, len(self._of_id)), 1)
        return True


class GraphAdopter:
    """Adopts `graph`, loaded from a snapshot exported with `exported`, for the rows given:
    labels whose id does not come, or comes with another vector, are marked deleted at
    `finish`, and rows the graph lacks are inserted then."""

    def __init__(
        self,
        index: VectorIndex,
        count: int,
        graph: hnswlib.Index,
        exported: GraphLabels,
        *,
        max_added_share: float = 0.5,
    ) -> None:
        if len(index):
            raise ValueError("a loader fills an empty index")
        if graph.dim != index.dimension:
            raise SnapshotMismatch(f"graph of dim {graph.dim}, index of {index.dimension}")
        self._index, self._graph = index, graph
        self._in_graph = graph.get_ids_list()
        present = set(self._in_graph)
        self._expected: dict[str, tuple[int, bytes]] = {}
        for label, entry_id, printed in zip(
            exported.labels, exported.ids, exported.fingerprints, strict=True
        ):
            if label not in present:
                raise SnapshotMismatch(f"label {label} missing from the graph")
            self._expected.setdefault(entry_id, (label, printed))
        self._label_of: dict[str, int] = {}
        self._missing_ids: list[str] = []
        self._missing: list[FloatArray] = []
        self._max_missing = max_added_share * count
        self._every = max(1, count // SAMPLE)
        self._seen = 0
        self.gave_up = False

    def add(self, entry_id: str, vector: FloatArray) -> None:
        if self.gave_up:
            return
        self._seen += 1
        known = self._expected.pop(entry_id, None)
        if known is not None and fingerprint(vector) == known[1]:
            self._label_of[entry_id] = known[0]
            if self._seen % self._every == 0:
                held = self._graph.get_items([known[0]], return_type="numpy")[0]
                if not np.array_equal(held, vector):
                    raise SnapshotMismatch("the graph's vectors differ from the ones given")
            return
        self._missing_ids.append(entry_id)
        self._missing.append(np.array(vector, dtype=np.float32))
        if len(self._missing) > self._max_missing:
            # A fresh build is then as quick and makes a better graph.
            self.gave_up = True
            self._missing_ids, self._missing, self._label_of = [], [], {}

    def finish(self) -> bool:
        if self.gave_up:
            return False
        graph = self._graph
        changes = 0
        kept = set(self._label_of.values())
        for label in self._in_graph:
            if label not in kept:
                try:
                    graph.mark_deleted(label)
                    changes += 1
                except RuntimeError:  # deleted already
                    pass
        next_label = max(self._in_graph, default=-1) + 1
        if self._missing:
            vector_graph.add_rows(graph, np.vstack(self._missing), next_label)
            for entry_id in self._missing_ids:
                self._label_of[entry_id] = next_label
                next_label += 1
            changes += len(self._missing)
        self._index._install_graph(graph, Labels(self._label_of, next_label), changes)
        self._missing_ids, self._missing, self._in_graph = [], [], []
        return True
