"""SemanticCache's housekeeping: feedback, deletes, flushes, statistics, the cache's hit
policy and expiry (a mixin: cache_server.cache holds the look-ups and writes)."""

from __future__ import annotations

import asyncio
import logging
import uuid
from collections.abc import Callable, Coroutine, Mapping
from typing import Any

import numpy as np

from cache_server import metrics
from cache_server.cache_types import CachePolicy, Embedder, StatsSnapshot
from cache_server.entries import (
    CacheEntry,
    EntryNotFoundError,
    check_attributes,
    check_cache_id,
    check_entry_id,
    check_text,
    prompt_key,
)
from cache_server.feedback import Feedback
from cache_server.stats import CacheCounters, LookupLatency
from cache_server.store.base import CacheStore
from cache_server.verified.engine import VerifiedEngine
from cache_server.verified.policy import HitPolicy, check_max_error_rate, resolve

log = logging.getLogger(__name__)


class CacheAdmin:
    """What SemanticCache does besides look-ups and writes; it provides these attributes."""

    store: CacheStore
    embedder: Embedder
    policy: CachePolicy
    verified: VerifiedEngine
    latency: LookupLatency
    _clock: Callable[[], float]

    def _later(self, work: Coroutine[Any, Any, None]) -> None:
        raise NotImplementedError

    async def _threshold(self) -> tuple[float, str]:
        raise NotImplementedError

    async def feedback(
        self, cache_id: str, entry_id_: str, prompt: str, *, correct: bool
    ) -> Feedback:
        """Keeps the application's verdict on entry `entry_id_` served for `prompt`; a wrong
        one stops the entry being served for that prompt (cache_server.feedback)."""
        cache_id = check_cache_id(cache_id)
        check_text("prompt", prompt, self.policy.max_prompt_chars)
        now = self._clock()
        entry = (
            await self.store.get(cache_id, entry_id_, now) if check_entry_id(entry_id_) else None
        )
        if entry is None:
            raise EntryNotFoundError(f"no entry {entry_id_[:40]!r} in cache {cache_id!r}")
        report = Feedback(
            id=uuid.uuid4().hex,
            cache_id=cache_id,
            entry_id=entry.id,
            entry_created_at=entry.created_at,
            prompt=prompt,
            prompt_key=prompt_key(prompt),
            entry_prompt=entry.prompt,
            entry_response=entry.response,
            correct=correct,
            created_at=now,
        )
        await self.store.add_feedback(report)
        self._learn_from_feedback_later(cache_id, entry, prompt, correct)
        await self.store.add_counters(
            cache_id, {"reported_right" if correct else "reported_wrong": 1}
        )
        return report

    def _learn_from_feedback_later(
        self, cache_id: str, entry: CacheEntry, prompt: str, correct: bool
    ) -> None:
        """A report is an observation of the entry, at the similarity of the two prompts."""

        async def learn() -> None:
            try:
                vectors = await self.embedder.embed([prompt, entry.prompt])
                similarity = float(np.dot(vectors[0], vectors[1]))
                await self.verified.learn(cache_id, entry, similarity, correct)
            except Exception as exc:
                log.warning("learning from feedback in cache %r failed: %s", cache_id, exc)

        self._later(learn())

    async def delete(self, cache_id: str, entry_id_: str) -> None:
        cache_id = check_cache_id(cache_id)
        if not check_entry_id(entry_id_) or not await self.store.delete(cache_id, entry_id_):
            raise EntryNotFoundError(f"no entry {entry_id_[:40]!r} in cache {cache_id!r}")

    async def delete_matching(self, cache_id: str, attributes: Mapping[str, str]) -> int:
        cache_id = check_cache_id(cache_id)
        attributes = check_attributes(attributes)
        if not attributes:
            return await self.flush(cache_id, reset_stats=False)
        return await self.store.delete_matching(cache_id, attributes)

    async def flush(self, cache_id: str, *, reset_stats: bool = True) -> int:
        cache_id = check_cache_id(cache_id)
        deleted = await self.store.flush(cache_id)
        self.verified.forget_cache(cache_id)
        if reset_stats:
            await self.store.reset_counters(cache_id)
            self.latency.reset(cache_id)
        return deleted

    # -- housekeeping --------------------------------------------------------------------

    async def stats_of(self, cache_id: str) -> StatsSnapshot:
        cache_id = check_cache_id(cache_id)
        size = await self.store.count(cache_id, self._clock())
        counts = await self.store.counters(cache_id)
        threshold, source = await self._threshold()
        policy = await self.verified.policy_for(cache_id, None, None)
        learned = await self.verified.learned(cache_id, policy.max_error_rate)
        return StatsSnapshot(
            cache_id=cache_id,
            cache_size=size,
            max_cache_size=self.policy.max_cache_size,
            threshold=threshold,
            threshold_source=source,
            counters=CacheCounters.of(counts, self.latency.of(cache_id)),
            policy=policy,
            learned=learned,
        )

    async def cache_policy(self, cache_id: str) -> HitPolicy:
        """The cache's hit policy: its own, else the server's default."""
        cache_id = check_cache_id(cache_id)
        return await self.verified.policy_for(cache_id, None, None)

    async def set_cache_policy(
        self, cache_id: str, name: str | None, max_error_rate: float | None
    ) -> HitPolicy:
        """Sets the cache's hit policy (name None: back to the server's default)."""
        cache_id = check_cache_id(cache_id)
        if not name:
            check_max_error_rate(max_error_rate)
            return await self.verified.set_cache_policy(cache_id, None)
        chosen = resolve(self.verified.settings, None, name, max_error_rate)
        return await self.verified.set_cache_policy(
            cache_id, HitPolicy(chosen.name, chosen.max_error_rate, "cache")
        )

    async def purge_expired(self) -> int:
        outcome = await self.store.purge_expired(self._clock())
        metrics.EXPIRATIONS.inc(sum(outcome.expired.values()))
        return sum(outcome.expired.values())

    async def run_purger(self, interval_s: float) -> None:
        """Removes expired entries every `interval_s` seconds, until cancelled."""
        while True:
            await asyncio.sleep(interval_s)
            try:
                purged = await self.purge_expired()
                if purged:
                    log.info("purged %d expired entries", purged)
            except Exception:  # keep purging later; a transient store error is not fatal
                log.exception("purging expired entries failed")
