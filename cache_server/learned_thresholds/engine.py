"""What SemanticCache asks of the verified policy: serve or explore, learn from explorations
and feedback, the cache's policy, and what has been learned so far.

Per cache, the cache's belief (model.cache_belief over its pooled observations, from the
served model's calibrated prior) is kept in memory and computed again once POOL_REFIT_AFTER
observations have been added through this process, POOL_REFRESH_S after the last time
(observations added by other replicas on a shared Redis), or when the embedder serves another
model (its own prior). The serving level is chosen on this server's recent requests of the
cache (WINDOW of them, in memory: a statistic of traffic, not evidence; while it holds few
candidates, where the cache's pooled observations were made stands in for it) and chosen again
every LEVEL_EVERY requests or after a refit.
"""

from __future__ import annotations

import asyncio
import collections
import hashlib
import itertools
import logging
import math
import random
import time
from collections.abc import Awaitable, Callable, Mapping
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
from service_runtime import tracing

log = logging.getLogger(__name__)

POOL_REFIT_AFTER = 16
POOL_REFRESH_S = 5.0
MAX_PENDING = 10_000
SAMPLE_ENTRIES = 1000
WINDOW = 4096
LEVEL_EVERY = 64
MIN_WINDOW_CANDIDATES = 32


@dataclass(frozen=True)
class ModelPrior:
    """The embedding model served now (its identity: learned state belongs to it) and the
    prior shipped with it (None: uninformed)."""

    identity: str
    calibrated: model.Calibrated | None


UNKNOWN_MODEL = ModelPrior("", None)


@dataclass(frozen=True)
class Decision:
    serve: bool
    explore: bool  # ask the upstream and judge the candidate (served or not)
    p_wrong: float  # the candidate's posterior P(wrong)
    level: float  # the level it was compared with


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
    serving_level: float
    prior: str
    shift: float
    window_requests: int
    window_candidates: int


_GENERATIONS = itertools.count()


@dataclass
class _Pool:
    belief: model.Belief
    prior: ModelPrior
    fitted_at: float
    counts: np.ndarray  # the pooled observations per band: where candidates have been
    added: int = 0
    generation: int = field(default_factory=lambda: next(_GENERATIONS))


class _Window:
    """A cache's recent requests on this server: (prompt digest, candidate similarity or
    NaN when there was no semantic candidate), and the levels chosen on them."""

    def __init__(self) -> None:
        self.requests: collections.deque[tuple[bytes, float]] = collections.deque(maxlen=WINDOW)
        self.since = LEVEL_EVERY
        self.levels: dict[tuple[float, str], float] = {}
        self.generation = -1

    def note(self, prompt: str, similarity: float | None) -> None:
        digest = hashlib.blake2b(prompt_key(prompt).encode(), digest_size=8).digest()
        self.requests.append((digest, math.nan if similarity is None else similarity))
        self.since += 1

    def counts(self, accounting: model.Accounting) -> tuple[np.ndarray, int]:
        """Candidates per band, and requests, of the window: every request (`requests`), or
        each distinct question once, at its latest similarity (`hits`: a question asked again
        is the same hit, right or wrong, and must not dilute the error of the others)."""
        if accounting == "hits":
            values = np.fromiter(dict(self.requests).values(), dtype=np.float64)
        else:
            values = np.fromiter((s for _, s in self.requests), dtype=np.float64)
        similarities = values[~np.isnan(values)]
        counts = np.bincount(model.bands_of(similarities), minlength=model.BANDS)
        return counts.astype(np.float64), int(values.shape[0])


@dataclass(frozen=True)
class _Pending:
    entry: CacheEntry
    similarity: float
    deadline: float


async def _no_model() -> ModelPrior:
    return UNKNOWN_MODEL


class VerifiedEngine:
    def __init__(
        self,
        settings: VerifiedSettings,
        store: CacheStore,
        judge: Judge,
        *,
        rng: random.Random | None = None,
        monotonic: Callable[[], float] = time.monotonic,
        model_prior: Callable[[], Awaitable[ModelPrior]] = _no_model,
    ) -> None:
        self.settings = settings
        self.store = store
        self.judge = judge
        self.z = model.z_for(settings.confidence)
        self._rng = rng or random.Random()
        self._monotonic = monotonic
        self._model_prior = model_prior
        self._pools: dict[str, _Pool] = {}
        self._windows: dict[str, _Window] = {}
        self._policies: dict[str, tuple[HitPolicy | None, float]] = {}
        self._pending: collections.OrderedDict[tuple[str, str, str], _Pending] = (
            collections.OrderedDict()
        )

    def follow(self, model_prior: Callable[[], Awaitable[ModelPrior]]) -> None:
        """Where the served model and its prior come from (the cache's embedder)."""
        self._model_prior = model_prior

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
        self,
        cache_id: str,
        name: str | None,
        max_error_rate: float | None,
        accounting: str | None = None,
    ) -> HitPolicy:
        return resolve(
            self.settings, await self.cache_policy(cache_id), name, max_error_rate, accounting
        )

    async def set_cache_policy(self, cache_id: str, policy: HitPolicy | None) -> HitPolicy:
        await self.store.set_cache_policy(cache_id, encode(policy) if policy else None)
        self._policies[cache_id] = (policy, self._monotonic())
        return resolve(self.settings, policy, None, None)

    # -- deciding --------------------------------------------------------------------------

    def note(self, cache_id: str, prompt: str, similarity: float | None) -> None:
        """One request of the cache under the verified policy, with the similarity of its
        semantic candidate (None: an exact repeat, or no candidate at the floor)."""
        self._window(cache_id).note(prompt, similarity)

    def _window(self, cache_id: str) -> _Window:
        window = self._windows.get(cache_id)
        if window is None:
            window = self._windows[cache_id] = _Window()
            if len(self._windows) > MAX_PENDING:
                self._windows.pop(next(iter(self._windows)))
        return window

    async def decide(
        self, cache_id: str, hit: CacheEntry, similarity: float, policy: HitPolicy
    ) -> Decision:
        pool = await self._pool(cache_id)
        level = self._level(cache_id, pool, similarity, policy)
        similarities, labels = evidence.decode(await self.store.evidence(cache_id, hit.id))
        p_wrong, weight = model.entry_belief(
            pool.belief.at(similarity), similarity, similarities, labels
        )
        # Within the level, or within the bound on its own (adding a hit no likelier to be
        # wrong than δ, with a margin for what is not known of it, never breaks the bound: how
        # an entry with evidence of its own is served where its band is not, or on a server
        # that has seen no traffic of this cache yet).
        alone = p_wrong + self.z * model.sd(p_wrong, weight) <= policy.max_error_rate
        bar = max(level, policy.max_error_rate)
        if p_wrong <= level or alone:
            # Served, except a share: the chance that serving it is wrong, and more while its
            # band's belief is still mostly the prior's (a prior may be wrong about this
            # traffic, and only what is explored can tell).
            share = max(
                self.settings.audit_rate,
                model.chance_above(p_wrong, weight, bar),
                self.settings.unproven_explore_rate * pool.belief.unproven(similarity),
            )
            explore = self._rng.random() < share
            return Decision(not explore, explore, p_wrong, level)
        # Not served: judged against the upstream's answer (which the request pays for
        # anyway) unless it was rejected by a wide margin.
        within = 1.0 - model.chance_above(p_wrong, weight, bar)
        return Decision(False, within >= self.settings.explore_chance, p_wrong, level)

    def _level(self, cache_id: str, pool: _Pool, similarity: float, policy: HitPolicy) -> float:
        window = self._window(cache_id)
        key = (policy.max_error_rate, policy.over)
        if window.since >= LEVEL_EVERY or window.generation != pool.generation:
            window.levels.clear()
            window.since = 0
            window.generation = pool.generation
        known = window.levels.get(key)
        if known is not None:
            return known
        counts, requests = self._traffic(window, pool, policy)
        if not counts.any():  # nothing known of this cache's traffic: this candidate alone
            counts = np.zeros(model.BANDS)
            counts[model.band_of(similarity)] = 1.0
            return model.serving_level(
                pool.belief, counts, 1, policy.max_error_rate, policy.over, self.z
            )
        level = model.serving_level(
            pool.belief, counts, requests, policy.max_error_rate, policy.over, self.z
        )
        window.levels[key] = level
        return level

    @staticmethod
    def _traffic(window: _Window, pool: _Pool, policy: HitPolicy) -> tuple[np.ndarray, int]:
        """Candidates per band and requests the level is chosen on: this server's recent
        requests, and while they hold few candidates (a server just started, or a replica new
        to this cache), also where the cache's pooled observations were made (in the store,
        shared by replicas): a sample of its candidates, biased to those explored."""
        counts, requests = window.counts(policy.over)
        if counts.sum() < MIN_WINDOW_CANDIDATES:
            extra = pool.counts
            counts = counts + extra
            requests += int(extra.sum())
        return counts, requests

    async def _pool(self, cache_id: str) -> _Pool:
        pool = self._pools.get(cache_id)
        now = self._monotonic()
        prior = await self._model_prior()
        if (
            pool is None
            or pool.prior != prior
            or pool.added >= POOL_REFIT_AFTER
            or now - pool.fitted_at > POOL_REFRESH_S
        ):
            blob = await self.store.pooled_evidence(cache_id)
            similarities, labels = evidence.decode(blob)
            belief = await asyncio.to_thread(
                model.cache_belief, prior.calibrated, similarities, labels
            )
            counts = np.bincount(model.bands_of(similarities), minlength=model.BANDS)
            pool = _Pool(belief, prior, now, counts.astype(np.float64))
            self._pools[cache_id] = pool
            if len(self._pools) > MAX_PENDING:
                self._pools.pop(next(iter(self._pools)))
        return pool

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
        with tracing.span("verified.judge", {"semcache.judge.kind": self.judge.kind}):
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
        self._windows.pop(cache_id, None)
        for key in [k for k in self._pending if k[0] == cache_id]:
            del self._pending[key]

    # -- what has been learned ---------------------------------------------------------------

    @staticmethod
    def _serving_thresholds(belief: model.Belief, blobs: list[bytes], level: float) -> list[float]:
        """Each sampled entry's serving similarity at `level` (None ones left out): the lowest
        similarity from which every higher band serves it. Pure: runs in a worker thread."""
        thresholds: list[float] = []
        for blob in blobs:
            similarities, labels = evidence.decode(blob)
            served = [
                model.entry_belief(belief.at(s), s, similarities, labels)[0] <= level
                for s in model.CENTRES
            ]
            if not served[-1]:
                continue
            below = [i for i, ok in enumerate(served) if not ok]
            thresholds.append((below[-1] + 1) * model.BAND if below else 0.0)
        return thresholds

    async def learned(self, cache_id: str, policy: HitPolicy) -> Learned:
        blobs = await self.store.sample_evidence(cache_id, SAMPLE_ENTRIES)
        pool = await self._pool(cache_id)
        window = self._windows.get(cache_id) or _Window()
        counts, requests = self._traffic(window, pool, policy)
        level = model.serving_level(
            pool.belief, counts, requests, policy.max_error_rate, policy.over, self.z
        )
        # Up to SAMPLE_ENTRIES entries: off the event loop, which look-ups share.
        thresholds = await asyncio.to_thread(self._serving_thresholds, pool.belief, blobs, level)
        quantiles = np.quantile(thresholds, [0.1, 0.5, 0.9]) if thresholds else [0.0] * 3
        return Learned(
            entries=len(blobs),
            observations=sum(evidence.count(blob) for blob in blobs),
            pooled_observations=evidence.count(await self.store.pooled_evidence(cache_id)),
            threshold_p10=float(quantiles[0]),
            threshold_p50=float(quantiles[1]),
            threshold_p90=float(quantiles[2]),
            entries_not_serving=len(blobs) - len(thresholds),
            pool_threshold=pool.belief.serving_threshold(level) or 0.0,
            serving_level=level,
            prior="calibrated" if pool.prior.calibrated is not None else "uninformed",
            shift=pool.belief.shift,
            window_requests=requests,
            window_candidates=int(counts.sum()),
        )


def _scope(attributes: Mapping[str, str]) -> str:
    return "\0".join(f"{k}\0{v}" for k, v in sorted(attributes.items()))
