"""What SemanticCache asks of the verified policy: serve or explore, learn from explorations
and feedback, the cache's policy, and what has been learned so far.

Per cache, the pool's curve is kept in memory and fitted again once POOL_REFIT_AFTER
observations have been added through this process, or POOL_REFRESH_S after the last fit
(observations added by other replicas on a shared Redis). Entry curves are memoised by their
evidence, so an entry is fitted again only when it has learned something.
"""

from __future__ import annotations

import asyncio
import collections
import itertools
import logging
import random
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field

import numpy as np

from cache_server import metrics
from cache_server.entries import CacheEntry, prompt_key
from cache_server.learned_thresholds import evidence, model
from cache_server.learned_thresholds.judge import Judge
from cache_server.learned_thresholds.policy import (
    HitPolicy,
    VerifiedSettings,
    decode,
    encode,
    resolve,
)
from cache_server.store.base import CacheStore

log = logging.getLogger(__name__)

POOL_REFIT_AFTER = 16
POOL_REFRESH_S = 5.0
MEMO_SIZE = 4096
MAX_PENDING = 10_000
SAMPLE_ENTRIES = 1000


@dataclass(frozen=True)
class Decision:
    serve: bool
    audit: bool  # sure enough to serve, explored anyway to keep learning
    probability: float  # the lower confidence bound of P(right)


@dataclass(frozen=True)
class Learned:
    entries: int
    observations: int
    pooled_observations: int
    threshold_p10: float
    threshold_p50: float
    threshold_p90: float
    entries_not_serving: int
    pool_threshold: float


_GENERATIONS = itertools.count()


@dataclass
class _Pool:
    curve: model.Curve
    support: model.Support
    fitted_at: float
    added: int = 0
    # Names this fit for ever (an object's id() is reused once the object is freed): the
    # entry fits made under its prior are memoised by it.
    generation: int = field(default_factory=lambda: next(_GENERATIONS))


@dataclass(frozen=True)
class _Fitted:
    """One entry's curve under the pool's prior, and its own observations' support."""

    curve: model.Curve
    support: model.Support


@dataclass(frozen=True)
class _Pending:
    entry: CacheEntry
    similarity: float
    deadline: float


class VerifiedEngine:
    def __init__(
        self,
        settings: VerifiedSettings,
        store: CacheStore,
        judge: Judge,
        *,
        rng: random.Random | None = None,
        monotonic: Callable[[], float] = time.monotonic,
    ) -> None:
        self.settings = settings
        self.store = store
        self.judge = judge
        self.z = model.z_for(settings.confidence)
        self._rng = rng or random.Random()
        self._monotonic = monotonic
        self._pools: dict[str, _Pool] = {}
        self._memo: collections.OrderedDict[tuple[int, bytes], _Fitted] = collections.OrderedDict()
        self._policies: dict[str, tuple[HitPolicy | None, float]] = {}
        self._pending: collections.OrderedDict[tuple[str, str, str], _Pending] = (
            collections.OrderedDict()
        )

    # -- policy ----------------------------------------------------------------------------

    async def cache_policy(self, cache_id: str, *, fresh: bool = False) -> HitPolicy | None:
        known = self._policies.get(cache_id)
        now = self._monotonic()
        if known is not None and not fresh and now - known[1] < self.settings.policy_refresh_s:
            return known[0]
        policy = decode(await self.store.cache_policy(cache_id))
        self._policies[cache_id] = (policy, now)
        if len(self._policies) > MAX_PENDING:
            self._policies.pop(next(iter(self._policies)))
        return policy

    async def policy_for(
        self, cache_id: str, name: str | None, max_error_rate: float | None
    ) -> HitPolicy:
        return resolve(self.settings, await self.cache_policy(cache_id), name, max_error_rate)

    async def set_cache_policy(self, cache_id: str, policy: HitPolicy | None) -> HitPolicy:
        await self.store.set_cache_policy(cache_id, encode(policy) if policy else None)
        self._policies[cache_id] = (policy, self._monotonic())
        return resolve(self.settings, policy, None, None)

    # -- deciding --------------------------------------------------------------------------

    async def decide(
        self, cache_id: str, hit: CacheEntry, similarity: float, delta: float
    ) -> Decision:
        pool, entry = await self._fitted(cache_id, await self.store.evidence(cache_id, hit.id))
        bound = entry.curve.lower_bound(similarity, self.z)
        floor = 1.0 - delta
        sure = bound >= floor and (
            pool.support.lower_bound(similarity, self.z) >= floor
            or entry.support.lower_bound(similarity, self.z) >= floor
        )
        audit = sure and self._rng.random() < self.settings.audit_rate
        return Decision(sure and not audit, audit, bound)

    async def _pool(self, cache_id: str) -> _Pool:
        pool = self._pools.get(cache_id)
        now = self._monotonic()
        if pool is None or pool.added >= POOL_REFIT_AFTER or now - pool.fitted_at > POOL_REFRESH_S:
            blob = await self.store.pooled_evidence(cache_id)
            similarities, labels = evidence.decode(blob)
            curve = await asyncio.to_thread(model.fit, similarities, labels, model.pool_prior())
            pool = _Pool(curve, model.Support(similarities, labels), now)
            self._pools[cache_id] = pool
            if len(self._pools) > MAX_PENDING:
                self._pools.pop(next(iter(self._pools)))
        return pool

    async def _fitted(self, cache_id: str, blob: bytes) -> tuple[_Pool, _Fitted]:
        """The cache's pool and the entry with evidence `blob` (b"": a fresh entry)."""
        pool = await self._pool(cache_id)
        key = (pool.generation, blob)
        fitted = self._memo.get(key)
        if fitted is None:
            similarities, labels = evidence.decode(blob)
            fitted = _Fitted(
                model.fit(similarities, labels, pool.curve.as_prior()),
                model.Support(similarities, labels),
            )
            self._memo[key] = fitted
            if len(self._memo) > MEMO_SIZE:
                self._memo.popitem(last=False)
        return pool, fitted

    # -- learning --------------------------------------------------------------------------

    async def learn(self, cache_id: str, entry: CacheEntry, similarity: float, right: bool) -> None:
        """One observation of `entry` at `similarity`. The entry is read again for its exact
        created_at (a Redis search reply rounds it): the observation lands on it only while it
        still holds the answer judged; the pool takes it in any case."""
        current = await self.store.get(cache_id, entry.id, time.time())
        same = current is not None and current.response == entry.response
        created_at = current.created_at if same and current is not None else entry.created_at
        await self.store.observe(cache_id, entry.id, created_at, evidence.record(similarity, right))
        pool = self._pools.get(cache_id)
        if pool is not None:
            pool.added += 1
        metrics.VERIFIED_OBSERVATIONS.labels("right" if right else "wrong").inc()

    async def judge_and_learn(
        self, cache_id: str, entry: CacheEntry, similarity: float, question: str, fresh: str
    ) -> bool:
        """Judges the cached answer against the fresh one, and learns from the verdict."""
        right = await self.judge.right(question, entry.response, fresh)
        await self.learn(cache_id, entry, similarity, right)
        counts = {"explorations": 1} | ({} if right else {"explorations_wrong": 1})
        await self.store.add_counters(cache_id, counts)
        return right

    def remember_search(
        self,
        cache_id: str,
        prompt: str,
        attributes: Mapping[str, str],
        candidate: CacheEntry,
        similarity: float,
    ) -> None:
        """A Search left `candidate` out as not sure enough: when the application stores its
        own answer for `prompt` (Set), that answer is judged against the candidate's."""
        key = (cache_id, prompt_key(prompt), _scope(attributes))
        self._pending[key] = _Pending(
            candidate, similarity, self._monotonic() + self.settings.pending_ttl_s
        )
        self._pending.move_to_end(key)
        while len(self._pending) > MAX_PENDING:
            self._pending.popitem(last=False)

    def take_search(
        self, cache_id: str, prompt: str, attributes: Mapping[str, str]
    ) -> _Pending | None:
        pending = self._pending.pop((cache_id, prompt_key(prompt), _scope(attributes)), None)
        if pending is None or pending.deadline < self._monotonic():
            return None
        return pending

    def forget_cache(self, cache_id: str) -> None:
        self._pools.pop(cache_id, None)
        for key in [k for k in self._pending if k[0] == cache_id]:
            del self._pending[key]

    # -- what has been learned ---------------------------------------------------------------

    def _serving_thresholds(self, pool: _Pool, blobs: list[bytes], delta: float) -> list[float]:
        """Each entry's serving threshold under the pool's prior (None ones left out); pure,
        so it runs in a worker thread."""
        thresholds: list[float] = []
        for blob in blobs:
            similarities, labels = evidence.decode(blob)
            curve = model.fit(similarities, labels, pool.curve.as_prior())
            threshold = curve.serving_threshold(delta, self.z)
            if threshold is not None:
                thresholds.append(threshold)
        return thresholds

    async def learned(self, cache_id: str, delta: float) -> Learned:
        blobs = await self.store.sample_evidence(cache_id, SAMPLE_ENTRIES)
        pool = await self._pool(cache_id)
        # Up to SAMPLE_ENTRIES curve fits: off the event loop, which look-ups share.
        thresholds = await asyncio.to_thread(self._serving_thresholds, pool, blobs, delta)
        observations = sum(evidence.count(blob) for blob in blobs)
        fresh = (await self._fitted(cache_id, b""))[1]  # the pool's curve, widened
        pool_threshold = fresh.curve.serving_threshold(delta, self.z)
        quantiles = np.quantile(thresholds, [0.1, 0.5, 0.9]) if thresholds else [0.0] * 3
        return Learned(
            entries=len(blobs),
            observations=observations,
            pooled_observations=evidence.count(await self.store.pooled_evidence(cache_id)),
            threshold_p10=float(quantiles[0]),
            threshold_p50=float(quantiles[1]),
            threshold_p90=float(quantiles[2]),
            entries_not_serving=len(blobs) - len(thresholds),
            pool_threshold=pool_threshold or 0.0,
        )


def _scope(attributes: Mapping[str, str]) -> str:
    return "\0".join(f"{k}\0{v}" for k, v in sorted(attributes.items()))
