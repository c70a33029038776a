"""SemanticCache: the cache's behaviour, independent of gRPC.

Look-up order for a query: an exact repeat of a stored prompt in the same scope (no embedder
call, similarity 1.0), then the nearest stored prompt by embedding (hit when cosine similarity
>= threshold). On a miss, the upstream LLM answers (once per prompt and scope, however many ask
at the same time) and the answer is stored.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
import uuid
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Protocol

import numpy as np
import numpy.typing as npt

from cache_server import metrics
from cache_server.embedder_client import EmbedderModel, EmbedderUnavailableError
from cache_server.entries import (
    CacheEntry,
    EntryNotFoundError,
    check_attributes,
    check_cache_id,
    check_entry_id,
    check_max_results,
    check_text,
    check_threshold,
    check_ttl,
    entry_id,
    normalize_prompt,
    prompt_key,
)
from cache_server.feedback import Feedback
from cache_server.lookup import Finder, Hit, Strategy
from cache_server.single_flight import SingleFlight
from cache_server.stats import CacheCounters, LookupLatency
from cache_server.store.base import CacheLimitError, CacheStore
from cache_server.upstream import Upstream
from cache_server.verification import Band, Verifier

log = logging.getLogger(__name__)
FloatArray = npt.NDArray[np.float32]
# How long an answer that needs no embedding waits for the embedder's model info when it has
# not been learned yet (only right after start, with the embedder away).
MODEL_PROBE_TIMEOUT_S = 0.5
DEFAULT_THRESHOLD = 0.85


class Embedder(Protocol):
    """What the cache needs of the embedder client."""

    model: EmbedderModel | None

    async def embed(self, texts: Sequence[str]) -> FloatArray: ...

    async def ensure_model(self, timeout_s: float | None = None) -> EmbedderModel: ...


@dataclass(frozen=True)
class CachePolicy:
    # Cosine similarity, higher is stricter. None: the model's calibrated threshold when it
    # has one, else DEFAULT_THRESHOLD (see SemanticCache.threshold_in_force).
    threshold: float | None = None
    max_cache_size: int = 1000  # entries per cache
    max_caches: int = 10_000  # caches (cache ids) the deployment holds
    default_ttl_s: float | None = None
    max_prompt_chars: int = 8192
    max_response_chars: int = 200_000


@dataclass(frozen=True)
class QueryResult:
    query: str
    response: str
    hit: Hit | None
    entry_id: str
    embedding_dimension: int
    processing_time_s: float


@dataclass(frozen=True)
class SearchResult:
    hits: list[Hit]
    embedding_dimension: int
    processing_time_s: float


@dataclass(frozen=True)
class StatsSnapshot:
    cache_id: str
    cache_size: int
    max_cache_size: int
    threshold: float
    threshold_source: str  # "operator", "calibrated" or "default"
    counters: CacheCounters = field(repr=False)


class SemanticCache:
    def __init__(
        self,
        store: CacheStore,
        embedder: Embedder,
        upstream: Upstream,
        policy: CachePolicy,
        clock: Callable[[], float] = time.time,
        verifier: Verifier | None = None,
    ) -> None:
        self.store = store
        self.embedder = embedder
        self.upstream = upstream
        self.policy = policy
        self.verifier = verifier
        self._finder = Finder(store, self._embed_one, verifier)
        self.latency = LookupLatency(max_caches=policy.max_caches)
        self._clock = clock
        self._single_flight = SingleFlight()
        self._background: set[asyncio.Task[None]] = set()

    def threshold_in_force(self) -> tuple[float, str]:
        """The default hit threshold and where it comes from: the operator's setting, else the
        threshold calibrated for the embedder's model, else DEFAULT_THRESHOLD."""
        if self.policy.threshold is not None:
            return self.policy.threshold, "operator"
        model = self.embedder.model
        if model is not None and model.calibrated_threshold is not None:
            return model.calibrated_threshold, "calibrated"
        return DEFAULT_THRESHOLD, "default"

    async def _model(self) -> EmbedderModel | None:
        """The embedder's model, asked for (briefly) if it is not known yet, as right after
        start; None when no embedder answers."""
        if self.embedder.model is None:
            with contextlib.suppress(EmbedderUnavailableError):
                await self.embedder.ensure_model(MODEL_PROBE_TIMEOUT_S)
        return self.embedder.model

    async def _threshold(self) -> tuple[float, str]:
        """threshold_in_force once the model is known: the first look-ups after start use the
        calibrated threshold too."""
        if self.policy.threshold is None:
            await self._model()
        return self.threshold_in_force()

    def band_in_force(self) -> Band | None:
        """The verifier's band for requests that set no threshold, or None (no verifier)."""
        if self.verifier is None:
            return None
        return self.verifier.band(self.embedder.model, self.threshold_in_force()[0])

    async def _hit_rule(self, requested: float | None) -> tuple[float, Band | None]:
        """The similarity threshold for this request (its own, else the one in force) and the
        verifier's band (None: cosine similarity alone decides)."""
        threshold = check_threshold(requested, (await self._threshold())[0])
        band = self.band_in_force()
        return threshold, band.for_request(requested) if band is not None else None

    async def _dimension(self, cache_id: str, vector: FloatArray | None = None) -> int:
        """The embedding dimension an answer reports: the model's (asked of the embedder if
        not known yet), else that of the vector just embedded, else that of the vectors the
        cache holds (an exact repeat answered while no embedder has been reached yet)."""
        if self.embedder.model is None and vector is not None:
            return int(vector.shape[0])
        model = await self._model()
        if model is not None:
            return model.dimension
        return self.store.vector_dimension(cache_id) or 0

    async def _embed_one(self, text: str) -> FloatArray:
        vectors = await self.embedder.embed([text])
        return np.asarray(vectors[0], dtype=np.float32)

    # -- look-ups ------------------------------------------------------------------------

    async def query(
        self,
        cache_id: str,
        query: str,
        *,
        use_cache: bool = True,
        threshold: float | None = None,
        attributes: Mapping[str, str] | None = None,
        ttl_s: float | None = None,
    ) -> QueryResult:
        started = time.perf_counter()
        cache_id = check_cache_id(cache_id)
        check_text("query", query, self.policy.max_prompt_chars)
        rule = await self._hit_rule(threshold)
        attributes = check_attributes(attributes or {})
        ttl_s = check_ttl(ttl_s, self.policy.default_ttl_s)

        vector_box: list[FloatArray] = []
        if use_cache:
            hits = await self._finder.find(
                cache_id,
                query,
                rule,
                1,
                attributes,
                (Strategy.EXACT, Strategy.SEMANTIC),
                vector_box,
                self._clock(),
            )
            if hits:
                await self._record_lookup(cache_id, True, time.perf_counter() - started)
                hit = hits[0]
                self._touch_later(cache_id, [hit.entry.id])
                return QueryResult(
                    query=query,
                    response=hit.entry.response,
                    hit=hit,
                    entry_id=hit.entry.id,
                    embedding_dimension=await self._dimension(
                        cache_id, vector_box[0] if vector_box else None
                    ),
                    processing_time_s=time.perf_counter() - started,
                )

        # Everything that shapes the stored entry is in the key: a caller with another TTL
        # does not join (and so does not inherit) a flight that stores with this one's.
        key = (cache_id, normalize_prompt(query), tuple(sorted(attributes.items())), ttl_s)

        async def answer_and_store() -> str:
            # Room for the entry, an embedder that answers, and vectors the cache can hold,
            # before paying for an LLM call.
            await self._admit(cache_id)
            vector = vector_box[0] if vector_box else await self._embed_one(query)
            await self.store.check_dimension(cache_id, int(vector.shape[0]))
            try:
                response = await self.upstream.complete(query)
            except Exception:
                metrics.UPSTREAM_CALLS.labels("error").inc()
                raise
            metrics.UPSTREAM_CALLS.labels("ok").inc()
            await self._put(cache_id, query, response, attributes, ttl_s, vector)
            return response

        # The miss is counted once the entry is stored, so that a new cache counts it too.
        try:
            response = await self._single_flight.run(key, answer_and_store)
        except Exception:
            if use_cache:  # still counted
                await self._record_lookup(cache_id, False, time.perf_counter() - started)
            raise
        if use_cache:
            await self._record_lookup(cache_id, False, time.perf_counter() - started)
        return QueryResult(
            query=query,
            response=response,
            hit=None,
            entry_id=entry_id(cache_id, query, attributes),
            embedding_dimension=await self._dimension(
                cache_id, vector_box[0] if vector_box else None
            ),
            processing_time_s=time.perf_counter() - started,
        )

    async def search(
        self,
        cache_id: str,
        prompt: str,
        *,
        threshold: float | None = None,
        max_results: int = 1,
        attributes: Mapping[str, str] | None = None,
        strategies: Sequence[Strategy] = (Strategy.SEMANTIC,),
    ) -> SearchResult:
        started = time.perf_counter()
        cache_id = check_cache_id(cache_id)
        check_text("prompt", prompt, self.policy.max_prompt_chars)
        rule = await self._hit_rule(threshold)
        k = check_max_results(max_results)
        attributes = check_attributes(attributes or {})
        ordered = list(dict.fromkeys(strategies)) or [Strategy.SEMANTIC]
        vector_box: list[FloatArray] = []
        hits = await self._finder.find(
            cache_id, prompt, rule, k, attributes, ordered, vector_box, self._clock()
        )
        await self._record_lookup(cache_id, bool(hits), time.perf_counter() - started)
        self._touch_later(cache_id, [hit.entry.id for hit in hits])
        dimension = await self._dimension(cache_id, vector_box[0] if vector_box else None)
        return SearchResult(hits, dimension, time.perf_counter() - started)

    async def _admit(self, cache_id: str) -> None:
        limit = self.policy.max_caches
        if not await self.store.admits(cache_id, limit):
            raise CacheLimitError(
                f"cache {cache_id!r} would be one cache too many: this deployment holds at most "
                f"{limit} caches (max_caches); flush caches no longer used, or raise the limit"
            )

    async def _record_lookup(self, cache_id: str, hit: bool, seconds: float) -> None:
        """Counts a look-up. Never raises: an answer already obtained (and stored) is not
        turned into an error because a counter could not be written."""
        self.latency.record(cache_id, hit, seconds)
        try:
            await self.store.add_counters(cache_id, {"hits" if hit else "misses": 1})
        except Exception as exc:
            metrics.COUNTER_WRITE_FAILURES.inc()
            log.warning(
                "counting a %s in cache %r failed: %s", "hit" if hit else "miss", cache_id, exc
            )

    def _touch_later(self, cache_id: str, entry_ids: list[str]) -> None:
        """Refreshes LRU recency after the answer has gone: recency is a hint for eviction,
        not data, so the caller does not wait for the store's write."""
        if not entry_ids:
            return
        now = self._clock()

        async def touch() -> None:
            try:
                for entry_id in entry_ids:
                    await self.store.touch(cache_id, entry_id, now)
            except Exception:
                log.exception("refreshing recency failed")

        task = asyncio.create_task(touch())
        self._background.add(task)
        task.add_done_callback(self._background.discard)

    async def drain(self) -> None:
        """Waits for background work (recency refreshes) to finish."""
        while self._background:
            await asyncio.gather(*self._background, return_exceptions=True)

    # -- writes --------------------------------------------------------------------------

    async def set(
        self,
        cache_id: str,
        prompt: str,
        response: str,
        *,
        attributes: Mapping[str, str] | None = None,
        ttl_s: float | None = None,
    ) -> str:
        cache_id = check_cache_id(cache_id)
        check_text("prompt", prompt, self.policy.max_prompt_chars)
        check_text("response", response, self.policy.max_response_chars)
        attributes = check_attributes(attributes or {})
        ttl_s = check_ttl(ttl_s, self.policy.default_ttl_s)
        await self._admit(cache_id)
        vector = await self._embed_one(prompt)
        return await self._put(cache_id, prompt, response, attributes, ttl_s, vector)

    async def _put(
        self,
        cache_id: str,
        prompt: str,
        response: str,
        attributes: Mapping[str, str],
        ttl_s: float | None,
        vector: FloatArray,
    ) -> str:
        now = self._clock()
        entry = CacheEntry(
            cache_id=cache_id,
            id=entry_id(cache_id, prompt, attributes),
            prompt=prompt,
            response=response,
            attributes=dict(attributes),
            created_at=now,
            expires_at=now + ttl_s if ttl_s is not None else None,
        )
        outcome = await self.store.put(
            entry, vector, self.policy.max_cache_size, now, max_caches=self.policy.max_caches
        )
        metrics.EVICTIONS.inc(outcome.evicted)
        return entry.id

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
        await self.store.add_counters(
            cache_id, {"reported_right" if correct else "reported_wrong": 1}
        )
        return report

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
        return StatsSnapshot(
            cache_id=cache_id,
            cache_size=size,
            max_cache_size=self.policy.max_cache_size,
            threshold=threshold,
            threshold_source=source,
            counters=CacheCounters.of(counts, self.latency.of(cache_id)),
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
