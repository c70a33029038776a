"""SemanticCache: the cache's behaviour, independent of gRPC.

Look-up order for a query: an exact repeat of a stored prompt in the same scope (no embedder
call, similarity 1.0), then the nearest stored prompt by embedding (hit when cosine similarity
>= threshold). On a miss, the upstream LLM answers (once per prompt and scope, however many ask
at the same time) and the answer is stored.

This module holds the look-ups and writes; SemanticCache's mixins hold the rest:
cache_hit_rules (threshold, verifier band, the verified policy's verdicts and explorations),
cache_bookkeeping (admission, counting, what follows an answer) and cache_admin (the model,
the threshold in force, feedback, deletes, flushes, statistics, the hit policy, expiry).
"""

from __future__ import annotations

import asyncio
import collections
import time
from collections.abc import Callable, Mapping, Sequence

from cache_server import metrics
from cache_server.cache_admin import DEFAULT_THRESHOLD
from cache_server.cache_bookkeeping import LookupBookkeeping
from cache_server.cache_hit_rules import HitRules
from cache_server.cache_types import CachePolicy, Embedder, FloatArray, QueryResult, SearchResult
from cache_server.cross_encoder_band import Verifier
from cache_server.decisions import Asked, DecisionLog, Route
from cache_server.entries import (
    AnswerCost,
    CacheEntry,
    check_attributes,
    check_cache_id,
    check_max_results,
    check_text,
    check_ttl,
    entry_id,
    normalize_prompt,
)
from cache_server.learned_thresholds.engine import VerifiedEngine
from cache_server.learned_thresholds.judge import ExactJudge
from cache_server.learned_thresholds.policy import VerifiedSettings
from cache_server.lookup import Finder, Hit, Strategy
from cache_server.reindex import Reindexer
from cache_server.savings import PriceTable
from cache_server.single_flight import SingleFlight
from cache_server.stats import LookupLatency
from cache_server.store.base import CacheStore
from cache_server.transfer import CacheTransfer
from cache_server.upstream import Upstream

__all__ = [
    "DEFAULT_THRESHOLD",
    "CachePolicy",
    "Embedder",
    "QueryResult",
    "SearchResult",
    "SemanticCache",
]


class SemanticCache(HitRules, LookupBookkeeping):
    def __init__(
        self,
        store: CacheStore,
        embedder: Embedder,
        upstream: Upstream,
        policy: CachePolicy,
        clock: Callable[[], float] = time.time,
        verifier: Verifier | None = None,
        verified: VerifiedEngine | None = None,
        prices: PriceTable | None = None,
    ) -> None:
        self.store = store
        self.embedder = embedder
        self.upstream = upstream
        self.policy = policy
        self.verifier = verifier
        self.prices = prices or PriceTable({})
        self._finder = Finder(store, self._embed_one, verifier, self._check_model)
        self.verified = verified or VerifiedEngine(VerifiedSettings(), store, ExactJudge())
        self.verified.follow(self._model_prior)
        self.latency = LookupLatency(max_caches=policy.max_caches)
        self.decisions = DecisionLog(policy.decisions_per_cache, policy.max_caches)
        self._clock = clock
        self._single_flight = SingleFlight()
        self._pending_counts = collections.OrderedDict()
        self.reindexer = Reindexer(store, embedder.embed, self._served_model)
        self.transfer = CacheTransfer(store, embedder.embed, self._model, policy, clock)
        self._background: set[asyncio.Task[None]] = set()

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
        error_accounting: str | None = None,
    ) -> QueryResult:
        started = time.perf_counter()
        cache_id = check_cache_id(cache_id)
        check_text("query", query, self.policy.max_prompt_chars)
        hit_policy = await self.verified.policy_for(
            cache_id, policy, max_error_rate, error_accounting
        )
        rule = await self._hit_rule(threshold, hit_policy)
        attributes = check_attributes(attributes or {}, writing=True)
        ttl_s = check_ttl(ttl_s, self.policy.default_ttl_s)

        vector_box: list[FloatArray] = []
        explore: Hit | None = None
        asked = Asked.of(query, "query", hit_policy, rule[0])
        found: list[Hit] = []  # the candidates, before the verified policy's verdict
        unsure: list[Hit] = []
        if use_cache:
            hits = found = await self._finder.find(
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
            if hit_policy.verified:
                hits, unsure = await self._verify(cache_id, query, hits, hit_policy, counts)
                explore = unsure[0] if unsure else None
            if hits:
                hit = hits[0]
                await self._record_lookup(
                    cache_id, asked, time.perf_counter() - started, counts, hits=hits
                )
                self._served_later(cache_id, query, [hit])
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
                completion = await self.upstream.answer(query)
            except Exception:
                metrics.UPSTREAM_CALLS.labels("error").inc()
                raise
            metrics.UPSTREAM_CALLS.labels("ok").inc()
            response = completion.text
            # An exploration is judged once per flight, whoever else waits on it. The fresh
            # answer is stored under this prompt's own entry (never over the near one), so a
            # repeat is an exact hit; when the near answer was judged right, the new entry
            # starts with what the near one has learned (the same answer, the same
            # neighbourhood).
            right = explore is not None and await self._judge(explore, cache_id, query, response)
            stored = await self._put(
                cache_id, query, response, attributes, ttl_s, vector, completion.cost
            )
            if explore is not None and right:
                learned = await self.store.evidence(cache_id, explore.entry.id)
                await self.store.inherit_evidence(cache_id, stored.id, stored.created_at, learned)
            return response, stored.id

        # The miss is counted once the entry is stored, so that a new cache counts it too.
        try:
            response, holder = await self._single_flight.run(key, answer_and_store)
        except Exception:
            if use_cache:  # still counted
                await self._record_lookup(
                    cache_id, asked, time.perf_counter() - started, unsure=unsure, found=found
                )
            raise
        if use_cache:
            await self._record_lookup(
                cache_id, asked, time.perf_counter() - started, unsure=unsure, found=found
            )
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
        error_accounting: str | None = None,
        route: Route = "search",
    ) -> SearchResult:
        """Look-up only. `route`: the call it is made for, as the recent decisions name it
        ("chat" when the Chat RPC looks up through it)."""
        started = time.perf_counter()
        cache_id = check_cache_id(cache_id)
        check_text("prompt", prompt, self.policy.max_prompt_chars)
        hit_policy = await self.verified.policy_for(
            cache_id, policy, max_error_rate, error_accounting
        )
        rule = await self._hit_rule(threshold, hit_policy)
        k = check_max_results(max_results)
        attributes = check_attributes(attributes or {})
        ordered = list(dict.fromkeys(strategies)) or [Strategy.SEMANTIC]
        vector_box: list[FloatArray] = []
        hits = found = await self._finder.find(
            cache_id, prompt, rule, k, attributes, ordered, vector_box, self._clock()
        )
        counts: dict[str, int] = {}
        unsure: list[Hit] = []
        if hit_policy.verified:
            hits, unsure = await self._verify(cache_id, prompt, hits, hit_policy, counts)
            if unsure and not hits:
                # The application asks its LLM next and stores the answer (Set): that answer
                # judges the nearest candidate, as an exploration's would.
                top = unsure[0]
                self.verified.remember_search(
                    cache_id, prompt, attributes, top.entry, top.similarity
                )
        await self._record_lookup(
            cache_id,
            Asked.of(prompt, route, hit_policy, rule[0]),
            time.perf_counter() - started,
            counts,
            hits=hits,
            unsure=unsure,
            found=found,
        )
        self._served_later(cache_id, prompt, hits)
        dimension = await self._dimension(cache_id, vector_box[0] if vector_box else None)
        return SearchResult(hits, dimension, time.perf_counter() - started)

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
        cost: AnswerCost | None = None,
    ) -> str:
        """`set` for the cache server's own surfaces (chat), whose attributes may carry the
        scope only it writes (entries.SERVER_ATTRIBUTES), and the upstream cost of the answer
        when it has just been produced (what its hits save)."""
        cache_id = check_cache_id(cache_id)
        check_text("prompt", prompt, self.policy.max_prompt_chars)
        check_text("response", response, self.policy.max_response_chars)
        attributes = check_attributes(attributes)
        ttl_s = check_ttl(ttl_s, self.policy.default_ttl_s)
        await self._admit(cache_id)
        vector = await self._embed_one(prompt)
        stored = await self._put(cache_id, prompt, response, attributes, ttl_s, vector, cost)
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
        cost: AnswerCost | None = None,
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
            cost=cost,
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
        await self._count_pending(cache_id)
        return entry
