"""The HNSW side of VectorIndex: an hnswlib graph over one cache's vectors, whose int labels
stand for entry ids.

Building a graph, inserting and retiring ids, searching it (with the filter in the walk, or
over-fetched without it and then filtered), exporting it with what its labels stand for, and
adopting an exported one again. Plain functions over the hnswlib index and its `Labels`, so that
VectorIndex (cache_server/vector_index.py) keeps the exact matrix, decides when the graph
answers and counts the graph's changes. Not thread-safe, like VectorIndex.
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


def build(
    dimension: int, ids: list[str], vectors: FloatArray, m: int, ef_construction: int
) -> tuple[hnswlib.Index, Labels]:
    """A graph over `vectors` (one row per id, in order), each labelled by its row."""
    count = len(ids)
    index = hnswlib.Index(space="ip", dim=dimension)
    index.init_index(
        max_elements=max(2 * count, 1024),
        M=m,
        ef_construction=ef_construction,
        allow_replace_deleted=True,
    )
    labels = np.arange(count, dtype=np.int64)
    index.add_items(vectors, labels, num_threads=-1)  # bulk build: all cores
    index.set_num_threads(1)  # queries: one at a time, on the store's thread
    return index, Labels({entry_id: i for i, entry_id in enumerate(ids)}, count)


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


def export(
    graph: hnswlib.Index, labels: Labels, path: str, vector_of: Callable[[str], FloatArray]
) -> GraphLabels:
    """Writes the graph to `path` (hnswlib's format); what its live labels stand for, given
    each id's vector (the one the graph holds under its label)."""
    graph.save_index(path)
    live = list(labels.id_of)
    ids = [labels.id_of[label] for label in live]
    return GraphLabels(live, ids, [fingerprint(vector_of(e)) for e in ids])


def adopt(
    graph: hnswlib.Index,
    exported: GraphLabels,
    entry_ids: list[str],
    vectors: FloatArray,
    row: dict[str, int],
    max_added_share: float,
) -> tuple[Labels, int] | None:
    """Reconciles `graph` (exported with `exported`) with `entry_ids` and `vectors`, the truth
    (`row`: each id's row in `vectors`): a label whose id is not among them, or was exported
    with another vector (by fingerprint), is marked deleted, and ids the graph lacks are added.
    The labels and the number of such changes, or None when more than `max_added_share` of
    the ids would have to be added. Raises ValueError when the graph disagrees with
    `exported` or with `vectors` (checked on a sample of labels)."""
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
    return Labels(label_of, next_label), changes
