"""The verified hit policy's data in the embedded store, written in the store's own thread
(EmbeddedStore calls these there).

- An entry's observations: the nullable BLOB column `evidence` of its row in `entries`, so they
  go with the row (delete, eviction, expiry, flush), and a re-put (INSERT OR REPLACE) starts the
  new answer with none. A partial index lists the rows that have any, so a sample reads only
  those (and not every entry's vector before it).
- A cache's pool of observations and its hit policy: one row of `verified` per cache. A flush
  clears the pool and keeps the policy (configuration, not data).

Stores written before the policy existed lack the column: `migrate` adds it at open. Readers
that open the file read-only (`embedded_feedback.read`) never look at either.
"""

from __future__ import annotations

import sqlite3

from cache_server.learned_thresholds import evidence

SCHEMA = """
CREATE TABLE IF NOT EXISTS verified (
    cache_id TEXT PRIMARY KEY,
    policy   TEXT,
    pool     BLOB
);
CREATE INDEX IF NOT EXISTS entries_evidence ON entries (cache_id) WHERE evidence IS NOT NULL;
"""


def migrate(db: sqlite3.Connection) -> None:
    """Adds what an older store file lacks (the `evidence` column), then the tables."""
    columns = {row[1] for row in db.execute("PRAGMA table_info(entries)")}
    if "evidence" not in columns:
        db.execute("ALTER TABLE entries ADD COLUMN evidence BLOB")
    db.executescript(SCHEMA)


def check_record(record: bytes) -> None:
    if len(record) != evidence.RECORD_BYTES:
        raise ValueError(
            f"an observation is one {evidence.RECORD_BYTES}-byte record; got {len(record)} bytes"
        )


def of_entry(db: sqlite3.Connection, cache_id: str, entry_id: str) -> bytes:
    row = db.execute(
        "SELECT evidence FROM entries WHERE cache_id = ? AND id = ?", (cache_id, entry_id)
    ).fetchone()
    return bytes(row[0]) if row is not None and row[0] is not None else b""


def observe(
    db: sqlite3.Connection,
    cache_id: str,
    entry_id: str,
    entry_created_at: float,
    record: bytes,
    held: bool,
) -> bool:
    """One observation, in one transaction: to the entry while it is still the answer judged
    (same created_at), to the pool while the cache is `held`. True when the entry took it."""
    with db:
        db.execute("BEGIN IMMEDIATE")
        row = db.execute(
            "SELECT evidence FROM entries WHERE cache_id = ? AND id = ? AND created_at = ?",
            (cache_id, entry_id, entry_created_at),
        ).fetchone()
        if row is not None:
            db.execute(
                "UPDATE entries SET evidence = ? WHERE cache_id = ? AND id = ? AND created_at = ?",
                (
                    evidence.append(row[0] or b"", record, evidence.MAX_PER_ENTRY),
                    cache_id,
                    entry_id,
                    entry_created_at,
                ),
            )
        if held:
            blob = evidence.append(pooled(db, cache_id), record, evidence.MAX_PER_CACHE)
            db.execute(
                "INSERT INTO verified (cache_id, pool) VALUES (?, ?) "
                "ON CONFLICT (cache_id) DO UPDATE SET pool = excluded.pool",
                (cache_id, blob),
            )
        db.execute("COMMIT")
    return row is not None


def inherit(
    db: sqlite3.Connection, cache_id: str, entry_id: str, entry_created_at: float, blob: bytes
) -> bool:
    """The entry's evidence set to `blob` (trimmed) while it is the answer stored then."""
    kept = evidence.append(b"", blob, evidence.MAX_PER_ENTRY)
    with db:
        changed = db.execute(
            "UPDATE entries SET evidence = ? WHERE cache_id = ? AND id = ? AND created_at = ?",
            (kept or None, cache_id, entry_id, entry_created_at),
        ).rowcount
    return changed > 0


def pooled(db: sqlite3.Connection, cache_id: str) -> bytes:
    row = db.execute("SELECT pool FROM verified WHERE cache_id = ?", (cache_id,)).fetchone()
    return bytes(row[0]) if row is not None and row[0] is not None else b""


def sample(db: sqlite3.Connection, cache_id: str, limit: int) -> list[bytes]:
    """Up to `limit` entries' evidence, found through the partial index (bounded work)."""
    rows = db.execute(
        "SELECT evidence FROM entries INDEXED BY entries_evidence "
        "WHERE cache_id = ? AND evidence IS NOT NULL LIMIT ?",
        (cache_id, max(0, limit)),
    )
    return [bytes(row[0]) for row in rows]


def policy(db: sqlite3.Connection, cache_id: str) -> str | None:
    row = db.execute("SELECT policy FROM verified WHERE cache_id = ?", (cache_id,)).fetchone()
    return None if row is None else row[0]


def policy_count(db: sqlite3.Connection) -> int:
    row = db.execute("SELECT count(*) FROM verified WHERE policy IS NOT NULL").fetchone()
    return int(row[0])


def policy_cache_ids(db: sqlite3.Connection) -> list[str]:
    rows = db.execute("SELECT cache_id FROM verified WHERE policy IS NOT NULL ORDER BY cache_id")
    return [str(row[0]) for row in rows]


def set_policy(db: sqlite3.Connection, cache_id: str, value: str | None) -> None:
    with db:
        db.execute("BEGIN IMMEDIATE")
        db.execute(
            "INSERT INTO verified (cache_id, policy) VALUES (?, ?) "
            "ON CONFLICT (cache_id) DO UPDATE SET policy = excluded.policy",
            (cache_id, value),
        )
        _drop_empty(db, cache_id)
        db.execute("COMMIT")


def forget(db: sqlite3.Connection, cache_id: str) -> None:
    """The pool and every entry's evidence of the cache go; entries and policy stay."""
    with db:
        db.execute(
            "UPDATE entries SET evidence = NULL WHERE cache_id = ? AND evidence IS NOT NULL",
            (cache_id,),
        )
        remove_pool(db, cache_id)


def remove_pool(db: sqlite3.Connection, cache_id: str) -> None:
    """A flush: the pool goes, the policy stays. Runs inside the flush's transaction."""
    db.execute("UPDATE verified SET pool = NULL WHERE cache_id = ?", (cache_id,))
    _drop_empty(db, cache_id)


def _drop_empty(db: sqlite3.Connection, cache_id: str) -> None:
    db.execute(
        "DELETE FROM verified WHERE cache_id = ? AND policy IS NULL AND pool IS NULL",
        (cache_id,),
    )
