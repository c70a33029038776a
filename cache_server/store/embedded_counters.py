"""The embedded store's counters per cache (hits, misses, evictions, savings...): kept in
memory, where every look-up adds to them without waiting for the disk, and written to SQLite by
the store's periodic chores (every purge interval) and at close, so they outlive a restart; a
crash loses at most the counts of one purge interval. Safe to use from the event loop (look-ups)
and the store's thread (evictions, expirations, saving) at once."""

from __future__ import annotations

import collections
import sqlite3
import threading
from collections.abc import Mapping

SCHEMA = """
CREATE TABLE IF NOT EXISTS counters (
    cache_id TEXT NOT NULL,
    name     TEXT NOT NULL,
    value    INTEGER NOT NULL,
    PRIMARY KEY (cache_id, name)
);
"""


class StoreCounters:
    def __init__(self) -> None:
        self._counts: dict[str, collections.Counter[str]] = {}
        self._dirty: set[str] = set()  # caches whose counts differ from the file's
        self._lock = threading.Lock()

    def load(self, db: sqlite3.Connection) -> None:
        """Reads the counts a previous run saved (and creates the table in an older file)."""
        db.executescript(SCHEMA)
        with self._lock:
            self._counts.clear()
            for cache_id, name, value in db.execute("SELECT cache_id, name, value FROM counters"):
                self._counts.setdefault(cache_id, collections.Counter())[name] = value

    def add(self, cache_id: str, counts: Mapping[str, int]) -> None:
        with self._lock:
            self._counts.setdefault(cache_id, collections.Counter()).update(counts)
            self._dirty.add(cache_id)

    def of(self, cache_id: str) -> dict[str, int]:
        with self._lock:
            return dict(self._counts.get(cache_id, {}))

    def reset(self, cache_id: str) -> None:
        with self._lock:
            self._counts.pop(cache_id, None)
            self._dirty.add(cache_id)

    def save(self, db: sqlite3.Connection) -> None:
        """Writes the counts changed since the last save: one transaction (store thread)."""
        with self._lock:
            changed = {c: dict(self._counts.get(c, {})) for c in self._dirty}
            self._dirty.clear()
        if not changed:
            return
        try:
            with db:
                db.execute("BEGIN IMMEDIATE")
                db.executemany("DELETE FROM counters WHERE cache_id = ?", [(c,) for c in changed])
                db.executemany(
                    "INSERT INTO counters (cache_id, name, value) VALUES (?, ?, ?)",
                    [(c, name, v) for c, counts in changed.items() for name, v in counts.items()],
                )
                db.execute("COMMIT")
        except Exception:
            with self._lock:  # written next time
                self._dirty.update(changed)
            raise
