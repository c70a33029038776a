"""Feedback in the embedded store: one SQLite table beside the entries, written in the store's
own thread (EmbeddedStore calls these there). Which caches hold any "wrong" report is kept in
memory, so a look-up in a cache without one costs nothing more."""

from __future__ import annotations

import sqlite3
from pathlib import Path

from cache_server.feedback import MAX_FEEDBACK_PER_CACHE, Feedback, exclusions

SCHEMA = """
CREATE TABLE IF NOT EXISTS feedback (
    id               TEXT PRIMARY KEY,
    cache_id         TEXT NOT NULL,
    entry_id         TEXT NOT NULL,
    entry_created_at REAL NOT NULL,
    prompt           TEXT NOT NULL,
    prompt_key       TEXT NOT NULL,
    entry_prompt     TEXT NOT NULL,
    entry_response   TEXT NOT NULL,
    correct          INTEGER NOT NULL,
    created_at       REAL NOT NULL
);
CREATE INDEX IF NOT EXISTS feedback_prompt ON feedback (cache_id, prompt_key);
CREATE INDEX IF NOT EXISTS feedback_age ON feedback (cache_id, created_at);
"""

_COLUMNS = (
    "id, cache_id, entry_id, entry_created_at, prompt, prompt_key, entry_prompt, "
    "entry_response, correct, created_at"
)


def _record(row: tuple[str, str, str, float, str, str, str, str, int, float]) -> Feedback:
    return Feedback(*row[:8], correct=bool(row[8]), created_at=row[9])


def caches_with_wrong_reports(db: sqlite3.Connection) -> set[str]:
    return {
        row[0] for row in db.execute("SELECT DISTINCT cache_id FROM feedback WHERE correct = 0")
    }


def add(db: sqlite3.Connection, report: Feedback) -> None:
    with db:
        db.execute(
            f"INSERT INTO feedback ({_COLUMNS}) VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?)",
            (
                report.id,
                report.cache_id,
                report.entry_id,
                report.entry_created_at,
                report.prompt,
                report.prompt_key,
                report.entry_prompt,
                report.entry_response,
                int(report.correct),
                report.created_at,
            ),
        )
        # Bounded: beyond the cap, the oldest reports of the cache go.
        db.execute(
            "DELETE FROM feedback WHERE cache_id = ? AND id IN (SELECT id FROM feedback "
            "WHERE cache_id = ? ORDER BY created_at DESC, rowid DESC LIMIT -1 OFFSET ?)",
            (report.cache_id, report.cache_id, MAX_FEEDBACK_PER_CACHE),
        )


def excluded(db: sqlite3.Connection, cache_id: str, prompt_key: str) -> dict[str, float]:
    rows = db.execute(
        f"SELECT {_COLUMNS} FROM feedback WHERE cache_id = ? AND prompt_key = ? "
        "ORDER BY created_at, rowid",
        (cache_id, prompt_key),
    )
    return exclusions(_record(row) for row in rows)


def listing(db: sqlite3.Connection, cache_id: str | None) -> list[Feedback]:
    if cache_id is None:
        rows = db.execute(f"SELECT {_COLUMNS} FROM feedback ORDER BY created_at, rowid")
    else:
        rows = db.execute(
            f"SELECT {_COLUMNS} FROM feedback WHERE cache_id = ? ORDER BY created_at, rowid",
            (cache_id,),
        )
    return [_record(row) for row in rows]


def remove_cache(db: sqlite3.Connection, cache_id: str) -> None:
    db.execute("DELETE FROM feedback WHERE cache_id = ?", (cache_id,))


def read(path: Path, cache_id: str | None) -> list[Feedback]:
    """The reports in the store at `path`, read without writing: what `make feedback-export`
    reads, also while the cache server writes (a WAL reader sees the last commit), and without
    loading the entries' vectors as opening the store would. Raises sqlite3.Error when the
    file cannot be read as a store."""
    # Not mode=ro: a read-only connection cannot remove the -wal and -shm files it makes when
    # it is the only one (no server running); query_only refuses writes just the same.
    db = sqlite3.connect(f"{path.resolve().as_uri()}?mode=rw", uri=True, timeout=10)
    try:
        db.execute("PRAGMA query_only = ON")
        tables = db.execute("SELECT name FROM sqlite_master WHERE type = 'table'").fetchall()
        if ("feedback",) not in tables:  # a store written before feedback existed
            return []
        return listing(db, cache_id)
    finally:
        db.close()
