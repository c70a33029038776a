"""The HNSW side of VectorIndex: an hnswlib graph over one cache's vectors, whose int labels
stand for entry ids. Once a cache is searched on its graph, the graph holds the only copy of
its vectors (space "ip" stores them as given).

Making a graph and adding rows to it in bulk, inserting and retiring ids, searching it (with
the filter in the walk, over-fetched without it and then filtered, or exactly over its own
vectors when a filter starves the walk), and exporting it with what its labels stand for.
Plain functions over the hnswlib index and its `Labels`, so that VectorIndex
(cache_server/vector_index.py) decides when the graph answers and counts the graph's changes,
and cache_server/vector_load.py fills or adopts one at a start. Not thread-safe, like
VectorIndex.
"""

from __future__ import annotations

import hashlib
import heapq
import math
from collections.abc import Callable, Collection, Iterator
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
# Vectors read back from a graph at a time (an exact search, an export's fingerprints): 16,384
# rows are 48 MB at 768 dims, bounded whatever the graph's size.
READ_CHUNK = 16_384


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


class Labels:
    """A graph's labels both ways (a label per id, stable while the id lives) and the next
    label free."""

    def __init__(self, of_id: dict[str, int] | None = None, next_label: int = 0) -> None:
        self.of_id: dict[str, int] = of_id if of_id is not None else {}
        self.id_of: dict[int, str] = {label: entry_id for entry_id, label in self.of_id.items()}
        self.next = next_label


def new(dimension: int, count: int, m: int, ef_construction: int) -> hnswlib.Index:
    """An empty graph with room for twice `count` vectors (hnswlib allocates the room up
    front; the pages of the unused part are not touched, so they take no memory)."""
    graph = hnswlib.Index(space="ip", dim=dimension)
    graph.init_index(
        max_elements=max(2 * count, 1024),
        M=m,
        ef_construction=ef_construction,
        allow_replace_deleted=True,
    )
    return graph


def add_rows(graph: hnswlib.Index, vectors: FloatArray, first_label: int) -> None:
    """Adds `vectors` in bulk on all cores, labelled first_label, first_label + 1, ...,
    growing the graph's room when they would not fit."""
    needed = graph.get_current_count() + len(vectors)
    if needed > graph.get_max_elements():
        graph.resize_index(max(needed, 2 * graph.get_max_elements()))
    labels = np.arange(first_label, first_label + len(vectors), dtype=np.int64)
    graph.add_items(vectors, labels, num_threads=-1, replace_deleted=True)


def vectors_of(
    graph: hnswlib.Index, labels: list[int], chunk: int = READ_CHUNK
) -> Iterator[tuple[list[int], FloatArray]]:
    """The vectors the graph holds under `labels` (live ones), `chunk` at a time."""
    for start in range(0, len(labels), chunk):
        part = labels[start : start + chunk]
        yield part, np.asarray(graph.get_items(part, return_type="numpy"), dtype=np.float32)


def insert(graph: hnswlib.Index, labels: Labels, entry_id: str, vector: FloatArray) -> None:
    """Adds `entry_id` under a new label (reusing a deleted one's slot)."""
    if graph.get_current_count() >= graph.get_max_elements():
        graph.resize_index(graph.get_max_elements() * 2)
    label = labels.next
    labels.next += 1
    graph.add_items(vector[None, :], np.array([label]), replace_deleted=True)
    labels.of_id[entry_id] = label
    labels.id_of[label] = entry_id


def retire(graph: hnswlib.Index, labels: Labels, entry_id: str) -> None:
    """Retires the id's label: out of the graph's results and out of both maps."""
    label = labels.of_id.pop(entry_id)
    del labels.id_of[label]
    graph.mark_deleted(label)


def search_overfetch(
    graph: hnswlib.Index,
    labels: Labels,
    query: FloatArray,
    k: int,
    min_similarity: float,
    accept: Callable[[str], bool],
    selectivity: float,
    ef: int,
    count: int,
) -> list[tuple[str, float]] | None:
    """The graph's nearest ids with no filter, OVERFETCH times as many as the filter would
    keep k of, then filtered: the k nearest accepted ones are among them unless the accepted
    ids are rare near the query. None (ask the filtered search) when fewer than k accepted ids
    came back, or when so many would be needed that the walk costs more. `ef` is the search
    breadth for the graph's size, `count` the number of ids it holds."""
    wanted = min(math.ceil(k / selectivity * OVERFETCH), count)
    if wanted > MAX_OVERFETCH:
        return None
    ids = labels.id_of
    graph.set_ef(max(ef, wanted))
    try:
        found, distances = graph.knn_query(query, k=wanted)
    except RuntimeError:
        return None
    out: list[tuple[str, float]] = []
    for label, distance in zip(found[0], distances[0], strict=True):
        similarity = 1.0 - float(distance)
        if similarity < min_similarity:
            return out  # best first: none further can pass
        entry_id = ids[int(label)]
        if accept(entry_id):
            out.append((entry_id, similarity))
            if len(out) == k:
                return out
    return None if wanted < count else out


def search(
    graph: hnswlib.Index,
    labels: Labels,
    query: FloatArray,
    k: int,
    min_similarity: float,
    accept: Callable[[str], bool] | None,
    ef: int,
    count: int,
) -> list[tuple[str, float]] | None:
    """Up to k (id, similarity) pairs at or above `min_similarity`, with `accept` (if any) as
    the filter in the graph walk; None when the filter starved the walk (answer exactly)."""
    ids = labels.id_of
    label_filter = None if accept is None else (lambda label: accept(ids[label]))
    wanted = min(k, count)
    graph.set_ef(ef)
    try:
        found, distances = graph.knn_query(query, k=wanted, filter=label_filter)
    except RuntimeError:  # fewer than k reachable under the filter
        return None if accept is not None else []
    out = [
        (ids[int(label)], 1.0 - float(distance))
        for label, distance in zip(found[0], distances[0], strict=True)
    ]
    out = [(i, s) for i, s in out if s >= min_similarity]
    if accept is not None and len(out) < k and len(found[0]) < wanted:
        return None  # the filter starved the graph walk: answer exactly instead
    return out


def search_exact(
    graph: hnswlib.Index,
    labels: Labels,
    query: FloatArray,
    k: int,
    min_similarity: float,
    accept: Callable[[str], bool],
    candidates: Collection[str] | None,
    *,
    chunk: int = READ_CHUNK,
) -> list[tuple[str, float]]:
    """Up to k accepted (id, similarity) pairs at or above `min_similarity`, best first, by
    reading the graph's vectors: those of `candidates` (ids, the only ones `accept` may
    approve) when given, else all of them, a chunk at a time."""
    if candidates is None:
        wanted = list(labels.id_of)
    else:
        wanted = [label for e in candidates if (label := labels.of_id.get(e)) is not None]
    ids = labels.id_of
    best: list[tuple[float, str]] = []  # a min-heap of the k best so far
    for part, vectors in vectors_of(graph, wanted, chunk):
        scores = vectors @ query
        for i in np.flatnonzero(scores >= min_similarity).tolist():
            score = float(scores[i])
            if len(best) == k and score <= best[0][0]:
                continue
            entry_id = ids[part[i]]
            if accept(entry_id):
                if len(best) < k:
                    heapq.heappush(best, (score, entry_id))
                else:
                    heapq.heapreplace(best, (score, entry_id))
    return [(entry_id, score) for score, entry_id in sorted(best, reverse=True)]


def export(graph: hnswlib.Index, labels: Labels, path: str) -> GraphLabels:
    """Writes the graph to `path` (hnswlib's format); what its live labels stand for, with
    the fingerprint of the vector the graph holds under each."""
    graph.save_index(path)
    live = list(labels.id_of)
    prints = [fingerprint(v) for _, vectors in vectors_of(graph, live) for v in vectors]
    return GraphLabels(live, [labels.id_of[label] for label in live], prints)
