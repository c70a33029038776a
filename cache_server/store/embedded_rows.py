"""The embedded store's SQLite side: opening the file, and the SQL over its entries and the
embedding model of each cache.

Plain functions taking the connection, called in the store's own thread (EmbeddedStore calls
these there, then brings its memory, embedded_memory, in step once a write is committed). The
tables beside the entries have their own modules: embedded_feedback, embedded_marks,
embedded_evidence.
"""

from __future__ import annotations

import json
import sqlite3
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Literal

import numpy as np

from cache_server.entries import AnswerCost, CacheEntry, normalize_prompt, prompt_key
from cache_server.store import embedded_evidence, embedded_feedback, embedded_marks
from cache_server.store.base import FloatArray

SCHEMA = """
CREATE TABLE IF NOT EXISTS entries (
    cache_id    TEXT NOT NULL,
    id          TEXT NOT NULL,
    prompt      TEXT NOT NULL,
    prompt_key  TEXT NOT NULL,
    response    TEXT NOT NULL,
    attributes  TEXT NOT NULL,
    created_at  REAL NOT NULL,
    expires_at  REAL,
    last_access REAL NOT NULL,
    vector      BLOB NOT NULL,
    evidence    BLOB,  -- observations (embedded_evidence); added at open to older files
    cost        TEXT,  -- what producing the answer cost upstream (AnswerCost JSON); ditto
    PRIMARY KEY (cache_id, id)
);
CREATE INDEX IF NOT EXISTS entries_lru ON entries (cache_id, last_access);
CREATE INDEX IF NOT EXISTS entries_exact ON entries (cache_id, prompt_key);
CREATE INDEX IF NOT EXISTS entries_expiry ON entries (expires_at) WHERE expires_at IS NOT NULL;
-- The embedding model each cache's vectors came from (its identity: the ONNX file's sha256).
CREATE TABLE IF NOT EXISTS cache_models (
    cache_id TEXT PRIMARY KEY,
    model    TEXT NOT NULL
);
"""

_COLUMNS = "cache_id, id, prompt, response, attributes, created_at, expires_at, cost"
_IDS_PER_QUERY = 500  # bound parameters per IN (...) query, well within SQLite's limit


def _entry(row: tuple[str, str, str, str, str, float, float | None, str | None]) -> CacheEntry:
    cache_id, entry_id, prompt, response, attributes, created_at, expires_at, cost = row
    return CacheEntry(
        cache_id=cache_id,
        id=entry_id,
        prompt=prompt,
        response=response,
        attributes=json.loads(attributes),
        created_at=created_at,
        expires_at=expires_at,
        cost=AnswerCost.from_json(cost),
    )


def connect(path: Path, synchronous: Literal["NORMAL", "FULL"]) -> sqlite3.Connection:
    """The store's file, opened in WAL mode with every table it needs (added to an older file)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    db = sqlite3.connect(path, isolation_level=None, check_same_thread=False)
    db.execute("PRAGMA journal_mode=WAL")
    db.execute(f"PRAGMA synchronous={synchronous}")
    db.executescript(SCHEMA)
    if "cost" not in {row[1] for row in db.execute("PRAGMA table_info(entries)")}:
        db.execute("ALTER TABLE entries ADD COLUMN cost TEXT")  # a file from before savings
    db.executescript(embedded_feedback.SCHEMA)
    db.executescript(embedded_marks.SCHEMA)
    embedded_evidence.migrate(db)
    return db


def models(db: sqlite3.Connection) -> dict[str, str]:
    """Per cache, the embedding model its vectors came from."""
    return dict(db.execute("SELECT cache_id, model FROM cache_models").fetchall())


def put(
    db: sqlite3.Connection,
    entry: CacheEntry,
    vector: FloatArray,
    now: float,
    model: str | None,
    excess: int,
) -> list[str]:
    """Writes the entry and, when `model` is given, the cache's model, then evicts the `excess`
    least recently used other entries: one transaction. The ids evicted."""
    with db:
        db.execute("BEGIN IMMEDIATE")
        if model is not None:
            db.execute(
                "INSERT OR REPLACE INTO cache_models (cache_id, model) VALUES (?, ?)",
                (entry.cache_id, model),
            )
        db.execute(
            f"INSERT OR REPLACE INTO entries ({_COLUMNS}, prompt_key, last_access, vector) "
            "VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?)",
            (
                entry.cache_id,
                entry.id,
                entry.prompt,
                entry.response,
                json.dumps(dict(entry.attributes), ensure_ascii=False),
                entry.created_at,
                entry.expires_at,
                entry.cost.to_json() if entry.cost is not None else None,
                prompt_key(entry.prompt),
                now,
                vector.astype("<f4").tobytes(),
            ),
        )
        evicted: list[str] = []
        if excess > 0:
            evicted = [
                row[0]
                for row in db.execute(
                    "SELECT id FROM entries WHERE cache_id = ? AND id != ? "
                    "ORDER BY last_access ASC LIMIT ?",
                    (entry.cache_id, entry.id, excess),
                )
            ]
            db.executemany(
                "DELETE FROM entries WHERE cache_id = ? AND id = ?",
                [(entry.cache_id, e) for e in evicted],
            )
        db.execute("COMMIT")
    return evicted


def touch(db: sqlite3.Connection, cache_id: str, entry_id: str, now: float) -> None:
    db.execute(
        "UPDATE entries SET last_access = ? WHERE cache_id = ? AND id = ?",
        (now, cache_id, entry_id),
    )


def delete(db: sqlite3.Connection, cache_id: str, entry_ids: list[str]) -> int:
    """Deletes the entries (one transaction); how many there were."""
    with db:
        db.execute("BEGIN IMMEDIATE")
        deleted = sum(
            db.execute("DELETE FROM entries WHERE cache_id = ? AND id = ?", (cache_id, e)).rowcount
            for e in entry_ids
        )
        db.execute("COMMIT")
    return deleted


def flush(db: sqlite3.Connection, cache_id: str) -> int:
    """Deletes the cache's entries, feedback, pool, marks and model (one transaction); how many
    entries there were."""
    with db:
        db.execute("BEGIN IMMEDIATE")
        deleted = db.execute("DELETE FROM entries WHERE cache_id = ?", (cache_id,)).rowcount
        embedded_feedback.remove_cache(db, cache_id)
        embedded_evidence.remove_pool(db, cache_id)
        embedded_marks.remove_cache(db, cache_id)
        db.execute("DELETE FROM cache_models WHERE cache_id = ?", (cache_id,))
        db.execute("COMMIT")
    return int(deleted)


def expired(db: sqlite3.Connection, now: float) -> dict[str, list[str]]:
    """Per cache, the ids of its entries expired at `now`."""
    rows = db.execute(
        "SELECT cache_id, id FROM entries WHERE expires_at IS NOT NULL AND expires_at <= ?",
        (now,),
    ).fetchall()
    by_cache: dict[str, list[str]] = {}
    for cache_id, entry_id in rows:
        by_cache.setdefault(cache_id, []).append(entry_id)
    return by_cache


def get(db: sqlite3.Connection, cache_id: str, entry_id: str, now: float) -> CacheEntry | None:
    row = db.execute(
        f"SELECT {_COLUMNS} FROM entries WHERE cache_id = ? AND id = ?", (cache_id, entry_id)
    ).fetchone()
    if row is None:
        return None
    entry = _entry(row)
    return None if entry.expired(now) else entry


def with_vectors(
    db: sqlite3.Connection, cache_id: str, entry_ids: Sequence[str], now: float
) -> list[tuple[CacheEntry, FloatArray]]:
    """The live entries among `entry_ids`, each with its vector, in the order asked."""
    found: dict[str, tuple[CacheEntry, FloatArray]] = {}
    for start in range(0, len(entry_ids), _IDS_PER_QUERY):
        batch = entry_ids[start : start + _IDS_PER_QUERY]
        marks = ", ".join("?" * len(batch))
        for *row, blob in db.execute(
            f"SELECT {_COLUMNS}, vector FROM entries WHERE cache_id = ? AND id IN ({marks})",
            (cache_id, *batch),
        ):
            entry = _entry(tuple(row))  # the columns of _COLUMNS
            if not entry.expired(now):
                found[entry.id] = (entry, np.frombuffer(blob, dtype="<f4").copy())
    return [found[i] for i in entry_ids if i in found]


def find_exact(
    db: sqlite3.Connection,
    cache_id: str,
    prompt: str,
    attributes: Mapping[str, str],
    now: float,
) -> CacheEntry | None:
    """The newest live entry in scope whose prompt equals `prompt` (whitespace aside)."""
    rows = db.execute(
        f"SELECT {_COLUMNS} FROM entries WHERE cache_id = ? AND prompt_key = ? "
        "ORDER BY created_at DESC",
        (cache_id, prompt_key(prompt)),
    ).fetchall()
    wanted = normalize_prompt(prompt)
    for row in rows:
        entry = _entry(row)
        if (
            normalize_prompt(entry.prompt) == wanted
            and entry.matches(attributes)
            and not entry.expired(now)
        ):
            return entry
    return None


def replace_vectors(
    db: sqlite3.Connection, cache_id: str, vectors: Mapping[str, FloatArray]
) -> list[str]:
    """Writes the new vectors of the cache's entries (one transaction); the ids it held."""
    with db:
        db.execute("BEGIN IMMEDIATE")
        replaced = [
            entry_id
            for entry_id, vector in vectors.items()
            if db.execute(
                "UPDATE entries SET vector = ? WHERE cache_id = ? AND id = ?",
                (vector.astype("<f4").tobytes(), cache_id, entry_id),
            ).rowcount
        ]
        db.execute("COMMIT")
    return replaced


def set_model(db: sqlite3.Connection, cache_id: str, model: str) -> None:
    with db:
        db.execute(
            "INSERT OR REPLACE INTO cache_models (cache_id, model) VALUES (?, ?)",
            (cache_id, model),
        )
