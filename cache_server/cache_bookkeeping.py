"""SemanticCache's bookkeeping around look-ups and writes: admitting a cache (at most
max_caches), counting each look-up (hits, misses, latency; the misses of a cache not held yet
are kept until its first entry is stored), and what is written once the answer has gone
(recency, and the marks that make feedback on a served answer evidence). A mixin, like
cache_admin: cache_server.cache holds the look-ups and writes that call these."""

from __future__ import annotations

import collections
import logging
from collections.abc import Mapping, Sequence

from cache_server import metrics, savings
from cache_server.cache_admin import CacheAdmin
from cache_server.decisions import Asked
from cache_server.entries import prompt_key
from cache_server.feedback import served_mark
from cache_server.lookup import Hit, Strategy
from cache_server.store.base import CacheLimitError

log = logging.getLogger(__name__)
# Caches not held yet whose misses wait for their first entry to be counted.
MAX_PENDING_CACHES = 1024


class LookupBookkeeping(CacheAdmin):
    """What SemanticCache counts and records; it provides these attributes."""

    _pending_counts: collections.OrderedDict[str, collections.Counter[str]]

    async def _admit(self, cache_id: str) -> None:
        limit = self.policy.max_caches
        if not await self.store.admits(cache_id, limit):
            raise CacheLimitError(
                f"cache {cache_id!r} would be one cache too many: this deployment holds at most "
                f"{limit} caches (max_caches); flush caches no longer used, or raise the limit"
            )

    async def _record_lookup(
        self,
        cache_id: str,
        asked: Asked,
        seconds: float,
        more: Mapping[str, int] | None = None,
        *,
        hits: Sequence[Hit] = (),
        unsure: Sequence[Hit] = (),
        found: Sequence[Hit] = (),
    ) -> None:
        """The one place a look-up is accounted for, whatever the route: its latency, the
        hit or miss, what the hit saved (the upstream cost of the first answer served: the one
        an application serves, cache_server.savings), and the decision among the cache's recent
        ones (cache_server.decisions: `hits` served, `unsure` the verified policy's candidates
        to explore instead, `found` every candidate before its verdict). Never raises: an
        answer already obtained (and stored) is not turned into an error because a counter
        could not be written."""
        hit = bool(hits)
        self.latency.record(cache_id, hit, seconds)
        self.decisions.record(
            cache_id, asked, seconds, self._clock(), served=hits, unsure=unsure, found=found
        )
        try:
            counts = {"hits" if hit else "misses": 1, **(more or {})}
            if hits:
                counts.update(savings.credit(cache_id, hits[0].entry.cost, self.prices))
            if not await self.store.add_counters(cache_id, counts) and not hit:
                # A miss in a cache the store does not hold yet (a chat or search miss before
                # its answer is stored): the store keeps counters only for caches it holds, so
                # it is counted when the cache's first entry is (bounded: made-up ids are
                # forgotten first).
                pending = self._pending_counts.setdefault(cache_id, collections.Counter())
                pending.update(counts)
                self._pending_counts.move_to_end(cache_id)
                if len(self._pending_counts) > MAX_PENDING_CACHES:
                    self._pending_counts.popitem(last=False)
        except Exception as exc:
            metrics.COUNTER_WRITE_FAILURES.inc()
            log.warning(
                "counting a %s in cache %r failed: %s", "hit" if hit else "miss", cache_id, exc
            )

    def _served_later(self, cache_id: str, prompt: str, served: list[Hit]) -> None:
        """After the answer has gone: refreshes LRU recency (a hint for eviction, not data, so
        the caller does not wait for the store's write) and marks each answer served for this
        prompt by similarity (what makes feedback on it evidence: cache_server.feedback; an
        exact repeat needs no mark, it is served whenever its prompt is asked, and leaves
        the store's one thread free for the next hit)."""
        if not served:
            return
        now = self._clock()
        key = prompt_key(prompt)
        marks = [served_mark(h.entry, key) for h in served if h.strategy is Strategy.SEMANTIC]

        async def touch() -> None:
            try:
                for hit in served:
                    await self.store.touch(cache_id, hit.entry.id, now)
                if marks:
                    await self.store.mark(cache_id, marks, now)
            except Exception:
                log.exception("refreshing recency failed")

        self._later(touch())

    async def _count_pending(self, cache_id: str) -> None:
        """Counts the misses kept for a cache not held before, now that it is."""
        pending = self._pending_counts.pop(cache_id, None)
        if pending:
            try:
                await self.store.add_counters(cache_id, pending)
            except Exception as exc:
                metrics.COUNTER_WRITE_FAILURES.inc()
                log.warning("counting misses in cache %r failed: %s", cache_id, exc)
