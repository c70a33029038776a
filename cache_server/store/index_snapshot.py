"""On-disk snapshots of the embedded store's HNSW graphs: a start loads each graph instead of
rebuilding it from SQLite (the rebuild is most of a start: measured at 100k QQP vectors on 2
cores, open() took 44.8 s rebuilding, 1.9 s from the snapshot).

SQLite stays the truth; a snapshot is only a head start. It is used when its header matches the
cache and the index settings (format, cache id, dimension, M, ef_construction) and both
checksums match; then a `vector_load.GraphAdopter` reconciles it with the rows read from SQLite,
one at a time: labels of ids gone from the database, or whose vector there no longer has the
fingerprint the snapshot recorded, are marked deleted, ids the snapshot lacks are inserted (and
a sample of the graph's own vectors is compared with SQLite's). Anything else (a missing, corrupt,
truncated, foreign or mismatched snapshot, one more than half behind) is logged and the graph is
rebuilt from the rows. The graph then holds the cache's only copy of its vectors.

Layout: a folder `<db file>.hnsw/` beside the database, two files per approximate cache, named
by a digest of the cache id (ids may hold ':'):
- `<digest>.graph`: the graph, as hnswlib's `save_index` writes it;
- `<digest>.map`: one line of JSON header (format and version, cache id, space, dimension, M,
  ef_construction, count, the graph file's size and CRC-32, the mapping's SHA-256), then the
  mapping: JSON {"labels", "ids", "fingerprints"}: per live label, its entry id and an 8-byte
  fingerprint of its vector (labels and fingerprints as base64 of little-endian arrays).
Each is written to a temporary file and moved into place (os.replace), the graph first: a crash
in between leaves a header whose CRC does not match the new graph, so the snapshot is ignored,
never misread. No fsync: a file that a power cut leaves half written fails its checksum.

When: at close, for each approximate cache whose graph changed since its snapshot; and on the
store's thread at each purge tick (every `purge_interval_s`), for a cache whose graph changed by
SAVE_SHARE of its entries since (a new graph: at the first tick). A crash thus costs inserting
at most about that share of a cache into its loaded graph, not rebuilding all of it. Writing
blocks the store's thread: ~0.5 s at 100k entries (measured), growing with the cache. Files of
caches that are gone, or are searched exactly, are removed at open, at each tick and at close.
"""

from __future__ import annotations

import base64
import hashlib
import json
import logging
import os
import time
import weakref
import zlib
from collections.abc import Mapping
from pathlib import Path

import hnswlib
import numpy as np

from cache_server.vector_graph import GraphLabels
from cache_server.vector_index import FloatArray, VectorIndex
from cache_server.vector_load import GraphAdopter, IndexLoader, loader_for

log = logging.getLogger(__name__)

FORMAT = "semcache-hnsw-snapshot"
VERSION = 1
# A graph is snapshotted again between starts once its changes reach this share of its entries.
SAVE_SHARE = 0.1
_CHUNK = 1 << 24


class SnapshotError(ValueError):
    """A snapshot that does not fit: ignored, and the graph rebuilt."""


def _digest(cache_id: str) -> str:
    return hashlib.sha256(cache_id.encode()).hexdigest()[:32]


def _crc32(path: Path) -> tuple[int, int]:
    size, crc = 0, 0
    with path.open("rb") as f:
        while chunk := f.read(_CHUNK):
            size += len(chunk)
            crc = zlib.crc32(chunk, crc)
    return size, crc


class IndexSnapshots:
    def __init__(self, db_path: Path) -> None:
        self.folder = db_path.with_name(db_path.name + ".hnsw")
        # Per cache: its index and the graph version its snapshot on disk holds.
        self._saved: dict[str, tuple[weakref.ref[VectorIndex], int]] = {}
        self.loaded: list[str] = []  # caches whose graph came from a snapshot

    def _paths(self, cache_id: str) -> tuple[Path, Path]:
        digest = _digest(cache_id)
        return self.folder / f"{digest}.graph", self.folder / f"{digest}.map"

    # -- start ----------------------------------------------------------------------------

    def loader(self, cache_id: str, index: VectorIndex, count: int) -> IndexLoader:
        """A loader for the empty `index` of `cache_id`, about to get its `count` rows from
        SQLite: one adopting the cache's snapshot when it fits, else `vector_load.loader_for`
        (an exact matrix, or a graph built from the rows)."""
        map_path = self._paths(cache_id)[1]
        if count >= index.ann_threshold and map_path.exists():
            started = time.perf_counter()
            try:
                graph, exported = self._read(cache_id, index, count)
                adopter = GraphAdopter(index, count, graph, exported)
            except Exception as error:  # whatever the files hold, the store opens
                _ignored(cache_id, map_path, error)
            else:
                return _Adopting(self, cache_id, index, adopter, started)
        return loader_for(index, count)

    def _adopted(self, cache_id: str, index: VectorIndex, started: float) -> None:
        self._saved[cache_id] = (weakref.ref(index), 0)
        self.loaded.append(cache_id)
        log.info(
            "cache %r: HNSW graph loaded from its snapshot (%d entries, %d changes since) in "
            "%.2f s",
            cache_id,
            len(index),
            index.graph_version,
            time.perf_counter() - started,
        )

    def _read(
        self, cache_id: str, index: VectorIndex, count: int
    ) -> tuple[hnswlib.Index, GraphLabels]:
        graph_path, map_path = self._paths(cache_id)
        with map_path.open("rb") as f:
            header = json.loads(f.readline())
            body = f.read()
        if not isinstance(header, dict):
            raise SnapshotError("no header")
        expected = _identity(cache_id, index)
        for key, value in expected.items():
            if header.get(key) != value:
                raise SnapshotError(f"{key} {header.get(key)!r}, expected {value!r}")
        if hashlib.sha256(body).hexdigest() != header.get("mapping_sha256"):
            raise SnapshotError("the mapping does not match its checksum")
        mapping = json.loads(body)
        labels = np.frombuffer(base64.b64decode(mapping["labels"], validate=True), "<i8")
        prints = base64.b64decode(mapping["fingerprints"], validate=True)
        ids = mapping["ids"]
        if not (
            isinstance(ids, list)
            and len(labels) == len(ids) == len(prints) // 8 == header.get("count")
            and len(prints) % 8 == 0
            and (labels >= 0).all()
            and all(type(entry_id) is str for entry_id in ids)
        ):
            raise SnapshotError("malformed mapping")
        if _crc32(graph_path) != (header.get("graph_bytes"), header.get("graph_crc32")):
            raise SnapshotError("the graph file does not match its checksum")
        graph = hnswlib.Index(space="ip", dim=index.dimension)
        graph.load_index(
            str(graph_path), max_elements=max(2 * count, 1024), allow_replace_deleted=True
        )
        if (graph.M, graph.ef_construction) != (index.hnsw_m, index.hnsw_ef_construction):
            raise SnapshotError(f"graph built with M {graph.M}, ef {graph.ef_construction}")
        fingerprints = [prints[i : i + 8] for i in range(0, len(prints), 8)]
        return graph, GraphLabels(labels.tolist(), ids, fingerprints)

    # -- snapshots ------------------------------------------------------------------------

    def save(self, indexes: Mapping[str, VectorIndex], *, share: float = 0.0) -> None:
        """Snapshots each approximate index whose graph changed by more than `share` of its
        entries since its snapshot (0: by anything), and removes the files of every other cache.
        Never raises: a failure is logged, and the previous snapshot stays or is ignored."""
        for cache_id, index in indexes.items():
            if not index.approximate:
                continue
            saved = self._saved.get(cache_id)
            if saved is not None and saved[0]() is index:
                changed = index.graph_version - saved[1]
                if changed == 0 or changed < share * len(index):
                    continue
            try:
                self._write(cache_id, index)
            except Exception as error:  # a full disk must not take the store down with it
                log.warning("cache %r: HNSW snapshot not written (%s)", cache_id, error)
        self.remove_stale(indexes)

    def _write(self, cache_id: str, index: VectorIndex) -> None:
        started = time.perf_counter()
        self.folder.mkdir(parents=True, exist_ok=True)
        graph_path, map_path = self._paths(cache_id)
        graph_tmp = graph_path.with_name(graph_path.name + ".tmp")
        map_tmp = map_path.with_name(map_path.name + ".tmp")
        version = index.graph_version
        try:
            exported = index.export_graph(str(graph_tmp))
            size, crc = _crc32(graph_tmp)
            labels = np.array(exported.labels, dtype="<i8").tobytes()
            body = json.dumps(
                {
                    "labels": base64.b64encode(labels).decode(),
                    "ids": exported.ids,
                    "fingerprints": base64.b64encode(b"".join(exported.fingerprints)).decode(),
                },
                separators=(",", ":"),
            ).encode()
            header = {
                **_identity(cache_id, index),
                "count": len(exported.ids),
                "graph_bytes": size,
                "graph_crc32": crc,
                "mapping_sha256": hashlib.sha256(body).hexdigest(),
            }
            map_tmp.write_bytes(json.dumps(header).encode() + b"\n" + body)
            os.replace(graph_tmp, graph_path)
            os.replace(map_tmp, map_path)
        finally:
            graph_tmp.unlink(missing_ok=True)
            map_tmp.unlink(missing_ok=True)
        self._saved[cache_id] = (weakref.ref(index), version)
        log.info(
            "cache %r: HNSW snapshot written (%d entries, %.0f MB) in %.2f s",
            cache_id,
            len(index),
            size / 1e6,
            time.perf_counter() - started,
        )

    def remove_stale(self, indexes: Mapping[str, VectorIndex]) -> None:
        """Removes the files of caches not in `indexes` or searched exactly, and leftovers."""
        wanted = {_digest(c) for c, index in indexes.items() if index.approximate}
        for cache_id in [c for c in self._saved if c not in indexes]:
            del self._saved[cache_id]
        try:
            names = [e for e in os.scandir(self.folder) if e.is_file(follow_symlinks=False)]
        except FileNotFoundError:
            return
        except OSError as error:
            log.warning("HNSW snapshots in %s not listed (%s)", self.folder, error)
            return
        for entry in names:
            digest, _, suffix = entry.name.partition(".")
            if digest in wanted and suffix in ("graph", "map"):
                continue
            try:
                os.unlink(entry.path)
            except OSError as error:
                log.warning("stale HNSW snapshot %s not removed (%s)", entry.path, error)


class _Adopting:
    """A GraphAdopter whose failures are logged: `finish` is then False, and the store fills
    the index from the rows again (a fresh graph)."""

    def __init__(
        self,
        snapshots: IndexSnapshots,
        cache_id: str,
        index: VectorIndex,
        adopter: GraphAdopter,
        started: float,
    ) -> None:
        self._snapshots, self._cache_id, self._index = snapshots, cache_id, index
        self._adopter: GraphAdopter | None = adopter
        self._started = started

    def add(self, entry_id: str, vector: FloatArray) -> None:
        if self._adopter is None:
            return
        try:
            self._adopter.add(entry_id, vector)
        except Exception as error:
            self._adopter = None  # drops the graph
            _ignored(self._cache_id, self._snapshots._paths(self._cache_id)[1], error)

    def finish(self) -> bool:
        if self._adopter is None:
            return False
        try:
            adopted = self._adopter.finish()
        except Exception as error:
            _ignored(self._cache_id, self._snapshots._paths(self._cache_id)[1], error)
            return False
        if not adopted:
            log.warning(
                "cache %r: HNSW snapshot too far behind the database; rebuilding", self._cache_id
            )
            return False
        self._snapshots._adopted(self._cache_id, self._index, self._started)
        return True


def _ignored(cache_id: str, map_path: Path, error: Exception) -> None:
    log.warning(
        "cache %r: HNSW snapshot %s ignored (%s: %s); rebuilding the graph",
        cache_id,
        map_path,
        type(error).__name__,
        error,
    )


def _identity(cache_id: str, index: VectorIndex) -> dict[str, object]:
    """What a snapshot's header must say for `index` of `cache_id` to adopt its graph."""
    return {
        "format": FORMAT,
        "version": VERSION,
        "cache_id": cache_id,
        "space": "ip",
        "dimension": index.dimension,
        "m": index.hnsw_m,
        "ef_construction": index.hnsw_ef_construction,
    }
