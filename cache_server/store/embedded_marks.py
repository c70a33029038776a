"""Marks in the embedded store: per cache, a bounded set of short strings that say something
happened once (an answer served for a prompt, a report already counted; cache_server.feedback
names them). One SQLite table, written in the store's own thread (EmbeddedStore calls these
there); the oldest marks beyond MAX_MARKS_PER_CACHE go at the store's periodic chore."""

from __future__ import annotations

import sqlite3
from collections.abc import Sequence

from cache_server.feedback import MAX_MARKS_PER_CACHE

SCHEMA = """
CREATE TABLE IF NOT EXISTS marks (
    cache_id TEXT NOT NULL,
    mark     TEXT NOT NULL,
    at       REAL NOT NULL,
    PRIMARY KEY (cache_id, mark)
) WITHOUT ROWID;
CREATE INDEX IF NOT EXISTS marks_age ON marks (cache_id, at);
"""


def add(db: sqlite3.Connection, cache_id: str, marks: Sequence[str], now: float) -> list[bool]:
    with db:
        return [
            db.execute(
                "INSERT OR IGNORE INTO marks (cache_id, mark, at) VALUES (?, ?, ?)",
                (cache_id, mark, now),
            ).rowcount
            == 1
            for mark in marks
        ]


def has(db: sqlite3.Connection, cache_id: str, mark: str) -> bool:
    row = db.execute(
        "SELECT 1 FROM marks WHERE cache_id = ? AND mark = ?", (cache_id, mark)
    ).fetchone()
    return row is not None


def remove(db: sqlite3.Connection, cache_id: str, marks: Sequence[str]) -> None:
    with db:
        db.executemany(
            "DELETE FROM marks WHERE cache_id = ? AND mark = ?", [(cache_id, m) for m in marks]
        )


def trim(db: sqlite3.Connection) -> None:
    """Keeps the newest MAX_MARKS_PER_CACHE marks of each cache."""
    crowded = db.execute(
        "SELECT cache_id FROM marks GROUP BY cache_id HAVING count(*) > ?", (MAX_MARKS_PER_CACHE,)
    ).fetchall()
    with db:
        for (cache_id,) in crowded:
            db.execute(
                "DELETE FROM marks WHERE cache_id = ? AND mark IN (SELECT mark FROM marks "
                "WHERE cache_id = ? ORDER BY at DESC LIMIT -1 OFFSET ?)",
                (cache_id, cache_id, MAX_MARKS_PER_CACHE),
            )


def remove_cache(db: sqlite3.Connection, cache_id: str) -> None:
    db.execute("DELETE FROM marks WHERE cache_id = ?", (cache_id,))
