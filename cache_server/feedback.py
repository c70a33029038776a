"""Feedback from applications on the answers they were served, and what it changes.

A report is evidence, not a vote. It counts once per answer (the entry as stored when it was
judged), prompt and reporter: a repeat of the same verdict changes nothing. It moves the
verified hit policy only when the cache served that answer for that prompt (a served mark,
left by every hit); a report on an answer never served for the prompt is kept (training data,
exclusions) but is not an observation. Both are marks in the store (CacheStore.mark).

A report says whether entry `entry_id` was right for the prompt the application asked. Every
report is kept (with the asked prompt, the entry's prompt and answer, and the label) until its
cache is flushed: it is training data (`make feedback-export` -> `make finetune`). A "wrong"
report also stops the entry from being served for that prompt (matched as exact look-ups match
it: surrounding whitespace ignored) while the entry keeps the answer that was reported: the
report names the entry's `created_at`, so storing the entry again (a new answer), or deleting
and re-creating it, ends the exclusion, as does a later "right" report for the same prompt.
"""

from __future__ import annotations

import hashlib
from collections.abc import Iterable
from dataclasses import dataclass

from cache_server.entries import CacheEntry

# Reports kept per cache at most, newest kept (a bound on what one cache can make a store hold).
MAX_FEEDBACK_PER_CACHE = 100_000
# Marks kept per cache at most (served answers, counted reports), newest kept.
MAX_MARKS_PER_CACHE = 200_000


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


def _mark(kind: str, *parts: object) -> str:
    material = "\0".join(repr(p) for p in parts)
    return f"{kind}:{hashlib.sha256(material.encode()).hexdigest()[:32]}"


def served_mark(entry: CacheEntry, prompt_key: str) -> str:
    """The answer `entry` holds was served for the prompt with key `prompt_key`."""
    return _mark("served", entry.id, entry.created_at, prompt_key)


def verdict_mark(entry: CacheEntry, prompt_key: str, reporter: str, correct: bool) -> str:
    """`reporter` said the answer was right (or wrong) for the prompt."""
    return _mark("verdict", entry.id, entry.created_at, prompt_key, reporter, correct)


def learned_mark(entry: CacheEntry, prompt_key: str, reporter: str) -> str:
    """A report of `reporter` on the answer for the prompt became an observation."""
    return _mark("learned", entry.id, entry.created_at, prompt_key, reporter)
