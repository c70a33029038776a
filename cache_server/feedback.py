"""Feedback from applications on the answers they were served, and what it changes.

A report says whether entry `entry_id` was right for the prompt the application asked. Every
report is kept (with the asked prompt, the entry's prompt and answer, and the label) until its
cache is flushed: it is training data (`make feedback-export` -> `make finetune`). A "wrong"
report also stops the entry from being served for that prompt (matched as exact look-ups match
it: surrounding whitespace ignored) while the entry keeps the answer that was reported: the
report names the entry's `created_at`, so storing the entry again (a new answer), or deleting
and re-creating it, ends the exclusion, as does a later "right" report for the same prompt.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass

from cache_server.entries import CacheEntry

# Reports kept per cache at most, newest kept (a bound on what one cache can make a store hold).
MAX_FEEDBACK_PER_CACHE = 100_000


@dataclass(frozen=True)
class Feedback:
    id: str
    cache_id: str
    entry_id: str
    entry_created_at: float  # which answer of the entry was judged
    prompt: str  # as the application asked it
    prompt_key: str  # entries.prompt_key(prompt)
    entry_prompt: str
    entry_response: str
    correct: bool
    created_at: float


def exclusions(reports: Iterable[Feedback]) -> dict[str, float]:
    """From the reports for one prompt, oldest first: entry id -> created_at of the answer whose
    latest report says it was wrong."""
    latest: dict[str, Feedback] = {}
    for report in reports:
        latest[report.entry_id] = report
    return {e: r.entry_created_at for e, r in latest.items() if not r.correct}


def is_excluded(entry: CacheEntry, excluded: dict[str, float]) -> bool:
    return excluded.get(entry.id) == entry.created_at
