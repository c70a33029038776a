"""SemanticCache: the cache's behaviour, independent of gRPC.

Look-up order for a query: an exact repeat of a stored prompt in the same scope (no embedder
call, similarity 1.0), then the nearest stored prompt by embedding (hit when cosine similarity
>= threshold). On a miss, the upstream LLM answers (once per prompt and scope, however many ask
at the same time) and the answer is stored.
"""

from __future__ import annotations

import asyncio
import collections
import logging
import time
from collections.abc import Callable, Mapping, Sequence

import numpy as np

from cache_server import metrics
from cache_server.cache_admin import DEFAULT_THRESHOLD, CacheAdmin
from cache_server.cache_types import (
    CachePolicy,
    Embedder,
    FloatArray,
    QueryResult,
    SearchResult,
)
from cache_server.entries import (
    CacheEntry,
    check_attributes,
    check_cache_id,
    check_max_results,
    check_text,
    check_threshold,
    check_ttl,
    entry_id,
    normalize_prompt,
    prompt_key,
)
from cache_server.feedback import served_mark
from cache_server.lookup import Finder, Hit, Strategy
from cache_server.reindex import Reindexer
from cache_server.single_flight import SingleFlight
from cache_server.stats import LookupLatency
from cache_server.store.base import CacheLimitError, CacheStore, ModelMismatchError
from cache_server.upstream import Upstream
from cache_server.verification import Band, Verifier
from cache_server.verified.engine import VerifiedEngine
from cache_server.verified.judge import ExactJudge
from cache_server.verified.policy import (
    HitPolicy,
    VerifiedSettings,
)

__all__ = [
    "DEFAULT_THRESHOLD",
    "CachePolicy",
    "Embedder",
    "QueryResult",
    "SearchResult",
    "SemanticCache",
]

log = logging.getLogger(__name__)
# Caches not held yet whose misses wait for their first entry to be counted.
MAX_PENDING_CACHES = 1024


class SemanticCache(CacheAdmin):
    def __init__(
        self,
        store: CacheStore,
        embedder: Embedder,
        upstream: Upstream,
        policy: CachePolicy,
        clock: Callable[[], float] = time.time,
        verifier: Verifier | None = None,
        verified: VerifiedEngine | None = None,
    ) -> None:
        self.store = store
        self.embedder = embedder
        self.upstream = upstream
        self.policy = policy
        self.verifier = verifier
        self._finder = Finder(store, self._embed_one, verifier, self._check_model)
        self.verified = verified or VerifiedEngine(VerifiedSettings(), store, ExactJudge())
        self.latency = LookupLatency(max_caches=policy.max_caches)
        self._clock = clock
        self._single_flight = SingleFlight()
        self._pending_counts: collections.OrderedDict[str, collections.Counter[str]] = (
            collections.OrderedDict()
        )
        self.reindexer = Reindexer(store, embedder.embed, self._served_model)
        self._background: set[asyncio.Task[None]] = set()

    def band_in_force(self) -> Band | None:
        """The verifier's band for requests that set no threshold, or None (no verifier)."""
        if self.verifier is None:
            return None
        return self.verifier.band(self.embedder.model, self.threshold_in_force()[0])

    async def _hit_rule(
        self, requested: float | None, policy: HitPolicy
    ) -> tuple[float, Band | None]:
        """The similarity threshold for this request (its own, else the one in force) and the
        verifier's band (None: cosine similarity alone decides). Under the verified policy,
        the nearest candidate from its floor (the request's threshold, else
        CACHE_VERIFIED_MIN_SIMILARITY); the policy, not the verifier, decides."""
        if policy.verified:
            return check_threshold(requested, self.verified.settings.min_similarity), None
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

    async def _served_model(self) -> str:
        """The identity of the embedding model served now: its ONNX file's sha256 (its id
        where the embedder reports none); "" while no embedder has answered."""
        model = await self._model()
        return (model.onnx_sha256 or model.model_id) if model is not None else ""

    async def cache_ids(self) -> list[str]:
        return await self.store.cache_ids()

    async def _check_model(self, cache_id: str) -> None:
        """Refuses a similarity search of a cache whose vectors came from another model than
        the one that would embed the query (a meaningless comparison, never made silently)."""
        held = await self.store.vector_model(cache_id)
        if held is None:
            return
        served = await self._served_model()
        if served and held != served:
            metrics.MODEL_MISMATCHES.inc()
            raise ModelMismatchError(cache_id, held, served)

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
        policy: str | None = None,
        max_error_rate: float | None = None,
    ) -> QueryResult:
        started = time.perf_counter()
        cache_id = check_cache_id(cache_id)
        check_text("query", query, self.policy.max_prompt_chars)
        hit_policy = await self.verified.policy_for(cache_id, policy, max_error_rate)
        rule = await self._hit_rule(threshold, hit_policy)
        attributes = check_attributes(attributes or {}, writing=True)
        ttl_s = check_ttl(ttl_s, self.policy.default_ttl_s)

        vector_box: list[FloatArray] = []
        explore: Hit | None = None
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
            counts: dict[str, int] = {}
            if hits and hit_policy.verified:
                hits, unsure = await self._verify(cache_id, query, hits, hit_policy, counts)
                explore = unsure[0] if unsure else None
            if hits:
                await self._record_lookup(cache_id, True, time.perf_counter() - started, counts)
                hit = hits[0]
                self._served_later(cache_id, query, [hit.entry])
                return QueryResult(
                    query=query,
                    response=hit.entry.response,
                    hit=hit,
                    entry_id=hit.entry.id,
                    embedding_dimension=await self._dimension(
                        cache_id, vector_box[0] if vector_box else None
                    ),
                    processing_time_s=time.perf_counter() - started,
                    policy=hit_policy.name,
                )

        # Everything that shapes the stored entry is in the key: a caller with another TTL
        # does not join (and so does not inherit) a flight that stores with this one's.
        key = (cache_id, normalize_prompt(query), tuple(sorted(attributes.items())), ttl_s)

        async def answer_and_store() -> tuple[str, str]:
            # Room for the entry, an embedder that answers, and vectors the cache can hold,
            # before paying for an LLM call.
            await self._admit(cache_id)
            vector = vector_box[0] if vector_box else await self._embed_one(query)
            await self.store.check_dimension(
                cache_id, int(vector.shape[0]), await self._served_model()
            )
            try:
                response = await self.upstream.complete(query)
            except Exception:
                metrics.UPSTREAM_CALLS.labels("error").inc()
                raise
            metrics.UPSTREAM_CALLS.labels("ok").inc()
            # An exploration is judged once per flight, whoever else waits on it. The fresh
            # answer is stored under this prompt's own entry (never over the near one), so a
            # repeat is an exact hit; when the near answer was judged right, the new entry
            # starts with what the near one has learned (the same answer, the same
            # neighbourhood).
            right = explore is not None and await self._judge(explore, cache_id, query, response)
            stored = await self._put(cache_id, query, response, attributes, ttl_s, vector)
            if explore is not None and right:
                learned = await self.store.evidence(cache_id, explore.entry.id)
                await self.store.inherit_evidence(cache_id, stored.id, stored.created_at, learned)
            return response, stored.id

        # The miss is counted once the entry is stored, so that a new cache counts it too.
        try:
            response, holder = await self._single_flight.run(key, answer_and_store)
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
            entry_id=holder,
            embedding_dimension=await self._dimension(
                cache_id, vector_box[0] if vector_box else None
            ),
            processing_time_s=time.perf_counter() - started,
            policy=hit_policy.name,
            explored=explore is not None,
        )

    async def _judge(self, explore: Hit, cache_id: str, question: str, fresh: str) -> bool:
        """Whether the explored entry's answer was right; False when it cannot be told (the
        judge's embedder or LLM away): the fresh answer is then stored, nothing learned."""
        try:
            return await self.verified.judge_and_learn(
                cache_id, explore.entry, explore.similarity, question, fresh
            )
        except Exception as exc:
            metrics.VERIFIED_OBSERVATIONS.labels("unjudged").inc()
            log.warning("judging an exploration in cache %r failed: %s", cache_id, exc)
            return False

    async def _verify(
        self,
        cache_id: str,
        prompt: str,
        hits: list[Hit],
        policy: HitPolicy,
        counts: dict[str, int],
    ) -> tuple[list[Hit], list[Hit]]:
        """The verified policy's verdict on semantic hits (exact repeats are served as they
        are, also when a semantic search found them): (served, not sure enough), both nearest
        first."""
        served: list[Hit] = []
        unsure: list[Hit] = []
        asked = normalize_prompt(prompt)
        for hit in hits:
            if hit.strategy is Strategy.EXACT or normalize_prompt(hit.entry.prompt) == asked:
                served.append(hit)
                continue
            decision = await self.verified.decide(
                cache_id, hit.entry, hit.similarity, policy.max_error_rate
            )
            (served if decision.serve else unsure).append(hit)
            label = "served" if decision.serve else "audited" if decision.audit else "explored"
            metrics.VERIFIED_DECISIONS.labels(label).inc()
        if any(hit.strategy is Strategy.SEMANTIC for hit in served):
            counts["verified_hits"] = 1
        return served, unsure

    def _judge_later(
        self, cache_id: str, entry: CacheEntry, similarity: float, question: str, fresh: str
    ) -> None:
        """Judges a near answer against the fresh one after the caller has its answer."""

        async def judge() -> None:
            try:
                await self.verified.judge_and_learn(cache_id, entry, similarity, question, fresh)
            except Exception as exc:  # a lost observation slows learning, nothing more
                log.warning("judging an exploration in cache %r failed: %s", cache_id, exc)

        self._later(judge())

    async def search(
        self,
        cache_id: str,
        prompt: str,
        *,
        threshold: float | None = None,
        max_results: int = 1,
        attributes: Mapping[str, str] | None = None,
        strategies: Sequence[Strategy] = (Strategy.SEMANTIC,),
        policy: str | None = None,
        max_error_rate: float | None = None,
    ) -> SearchResult:
        started = time.perf_counter()
        cache_id = check_cache_id(cache_id)
        check_text("prompt", prompt, self.policy.max_prompt_chars)
        hit_policy = await self.verified.policy_for(cache_id, policy, max_error_rate)
        rule = await self._hit_rule(threshold, hit_policy)
        k = check_max_results(max_results)
        attributes = check_attributes(attributes or {})
        ordered = list(dict.fromkeys(strategies)) or [Strategy.SEMANTIC]
        vector_box: list[FloatArray] = []
        hits = await self._finder.find(
            cache_id, prompt, rule, k, attributes, ordered, vector_box, self._clock()
        )
        counts: dict[str, int] = {}
        if hits and hit_policy.verified:
            hits, unsure = await self._verify(cache_id, prompt, hits, hit_policy, counts)
            if unsure and not hits:
                # The application asks its LLM next and stores the answer (Set): that answer
                # judges the nearest candidate, as an exploration's would.
                top = unsure[0]
                self.verified.remember_search(
                    cache_id, prompt, attributes, top.entry, top.similarity
                )
        await self._record_lookup(cache_id, bool(hits), time.perf_counter() - started, counts)
        self._served_later(cache_id, prompt, [hit.entry for hit in hits])
        dimension = await self._dimension(cache_id, vector_box[0] if vector_box else None)
        return SearchResult(hits, dimension, time.perf_counter() - started)

    async def _admit(self, cache_id: str) -> None:
        limit = self.policy.max_caches
        if not await self.store.admits(cache_id, limit):
            raise CacheLimitError(
                f"cache {cache_id!r} would be one cache too many: this deployment holds at most "
                f"{limit} caches (max_caches); flush caches no longer used, or raise the limit"
            )

    async def _record_lookup(
        self, cache_id: str, hit: bool, seconds: float, more: Mapping[str, int] | None = None
    ) -> None:
        """Counts a look-up. Never raises: an answer already obtained (and stored) is not
        turned into an error because a counter could not be written."""
        self.latency.record(cache_id, hit, seconds)
        try:
            counts = {"hits" if hit else "misses": 1, **(more or {})}
            if not hit and not await self.store.admits(cache_id, 0):
                # A miss in a cache the store does not hold yet (a chat or search miss before
                # its answer is stored): the store keeps counters only for caches it holds, so
                # it is counted when the cache's first entry is (bounded: made-up ids are
                # forgotten first).
                pending = self._pending_counts.setdefault(cache_id, collections.Counter())
                pending.update(counts)
                self._pending_counts.move_to_end(cache_id)
                if len(self._pending_counts) > MAX_PENDING_CACHES:
                    self._pending_counts.popitem(last=False)
                return
            await self.store.add_counters(cache_id, counts)
        except Exception as exc:
            metrics.COUNTER_WRITE_FAILURES.inc()
            log.warning(
                "counting a %s in cache %r failed: %s", "hit" if hit else "miss", cache_id, exc
            )

    def _served_later(self, cache_id: str, prompt: str, served: list[CacheEntry]) -> None:
        """After the answer has gone: refreshes LRU recency (a hint for eviction, not data, so
        the caller does not wait for the store's write) and marks each answer served for this
        prompt (what makes feedback on it evidence: cache_server.feedback)."""
        if not served:
            return
        now = self._clock()
        key = prompt_key(prompt)

        async def touch() -> None:
            try:
                for entry in served:
                    await self.store.touch(cache_id, entry.id, now)
                await self.store.mark(cache_id, [served_mark(e, key) for e in served], now)
            except Exception:
                log.exception("refreshing recency failed")

        self._later(touch())

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
        """Stores an answer for `prompt` (the Set RPC); the entry's id."""
        attributes = check_attributes(attributes or {}, writing=True)
        return await self.set_scoped(cache_id, prompt, response, attributes=attributes, ttl_s=ttl_s)

    async def set_scoped(
        self,
        cache_id: str,
        prompt: str,
        response: str,
        *,
        attributes: Mapping[str, str],
        ttl_s: float | None = None,
    ) -> str:
        """`set` for the cache server's own surfaces (chat), whose attributes may carry the
        scope only it writes (entries.SERVER_ATTRIBUTES)."""
        cache_id = check_cache_id(cache_id)
        check_text("prompt", prompt, self.policy.max_prompt_chars)
        check_text("response", response, self.policy.max_response_chars)
        attributes = check_attributes(attributes)
        ttl_s = check_ttl(ttl_s, self.policy.default_ttl_s)
        await self._admit(cache_id)
        vector = await self._embed_one(prompt)
        stored = await self._put(cache_id, prompt, response, attributes, ttl_s, vector)
        pending = self.verified.take_search(cache_id, prompt, attributes)
        if pending is not None:  # a verified Search left a candidate out for this prompt
            self._judge_later(cache_id, pending.entry, pending.similarity, prompt, response)
        return stored.id

    async def _put(
        self,
        cache_id: str,
        prompt: str,
        response: str,
        attributes: Mapping[str, str],
        ttl_s: float | None,
        vector: FloatArray,
    ) -> CacheEntry:
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
            entry,
            vector,
            self.policy.max_cache_size,
            now,
            max_caches=self.policy.max_caches,
            model=await self._served_model(),
        )
        metrics.EVICTIONS.inc(outcome.evicted)
        pending = self._pending_counts.pop(cache_id, None)
        if pending:
            try:
                await self.store.add_counters(cache_id, pending)
            except Exception as exc:
                metrics.COUNTER_WRITE_FAILURES.inc()
                log.warning("counting misses in cache %r failed: %s", cache_id, exc)
        return entry
