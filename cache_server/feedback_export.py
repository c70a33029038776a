"""`make feedback-export`: the feedback applications gave, as training pairs for `make finetune`
and `make finetune-verifier`.

    python -m cache_server.feedback_export --output feedback.jsonl [--cache-id ID]
        [any cache server flag, e.g. --data-dir data or --store-backend redis --redis-url ...]

Opens the store the cache server is configured with (the same CACHE_* environment variables and
flags; the embedded store may be read while the server runs) and writes one JSON object per
line: `text_a` the entry's prompt, `text_b` the prompt asked, `label` 1 (right) or 0 (wrong),
plus `cache_id`, `entry_id`, `response` and `reported_at`. When the same pair was reported more
than once, its latest report wins. Exit 2, saying why, when the store cannot be read or the
output cannot be written (then no output file is left half-written).
"""

from __future__ import annotations

import argparse
import asyncio
import json
import logging
import sqlite3
import sys
from collections.abc import Sequence
from pathlib import Path

from pydantic import ValidationError

from cache_server.feedback import Feedback
from cache_server.server import make_store
from cache_server.settings import CacheSettings
from cache_server.store import embedded_feedback
from cache_server.store.base import StoreConflictError, StoreUnavailableError
from service_runtime.settings import describe_errors, settings_from_args


def pairs(reports: Sequence[Feedback]) -> list[dict[str, object]]:
    """One row per (entry prompt, asked prompt), its latest report winning, oldest first."""
    latest: dict[tuple[str, str], Feedback] = {}
    for report in sorted(reports, key=lambda r: r.created_at):
        latest.pop((report.entry_prompt, report.prompt), None)
        latest[(report.entry_prompt, report.prompt)] = report
    return [
        {
            "text_a": r.entry_prompt,
            "text_b": r.prompt,
            "label": 1 if r.correct else 0,
            "cache_id": r.cache_id,
            "entry_id": r.entry_id,
            "response": r.entry_response,
            "reported_at": r.created_at,
        }
        for r in latest.values()
    ]


def reports(settings: CacheSettings, cache_id: str | None) -> list[Feedback]:
    if settings.store_backend == "embedded":
        # Read-only, and without loading every entry's vector as opening the store would:
        # the server keeps running beside it undisturbed.
        return embedded_feedback.read(_database(settings), cache_id)
    return asyncio.run(_listed(settings, cache_id))


async def _listed(settings: CacheSettings, cache_id: str | None) -> list[Feedback]:
    # The store's start-up warnings speak to a cache server ("will keep trying"); a failure
    # to read is reported by main, once.
    logging.getLogger("cache_server.store").setLevel(logging.ERROR)
    store = make_store(settings)
    await store.open()
    try:
        return await store.list_feedback(cache_id)
    finally:
        await store.close()


def write(rows: Sequence[dict[str, object]], output: Path) -> None:
    """All or nothing: an export that fails leaves no half-written file behind."""
    output.parent.mkdir(parents=True, exist_ok=True)
    partial = output.with_name(output.name + ".partial")
    try:
        with partial.open("w", encoding="utf-8") as f:
            for row in rows:
                f.write(json.dumps(row, ensure_ascii=False) + "\n")
        partial.replace(output)
    finally:
        partial.unlink(missing_ok=True)


def _database(settings: CacheSettings) -> Path:
    return settings.data_dir / "semcache.sqlite3"


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m cache_server.feedback_export", description=__doc__, add_help=False
    )
    parser.add_argument("--output", type=Path, default=Path("feedback.jsonl"))
    parser.add_argument("--cache-id", default=None, help="one cache only (default: all)")
    own, rest = parser.parse_known_args(argv)
    try:
        settings = settings_from_args(CacheSettings, rest, prog=parser.prog)
    except ValidationError as exc:
        print(f"feedback-export: invalid settings:\n{describe_errors(exc)}", file=sys.stderr)
        return 2
    database = _database(settings)
    if settings.store_backend == "embedded" and not database.is_file():
        print(f"feedback-export: no embedded store at {database} (--data-dir?)", file=sys.stderr)
        return 2
    try:
        rows = pairs(reports(settings, own.cache_id))
    except (StoreUnavailableError, StoreConflictError, sqlite3.Error, OSError) as exc:
        print(f"feedback-export: cannot read the store: {exc}", file=sys.stderr)
        return 2
    try:
        write(rows, own.output)
    except OSError as exc:
        print(f"feedback-export: cannot write {own.output}: {exc}", file=sys.stderr)
        return 2
    print(f"feedback-export: {len(rows)} pairs written to {own.output}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
