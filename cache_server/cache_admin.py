"""SemanticCache's housekeeping: the embedder's model (its identity, checked against a cache's
vectors, the dimension answers report) and the threshold in force, background work, feedback,
deletes, flushes, statistics, the cache's hit policy and expiry (a mixin: cache_server.cache
holds the look-ups and writes, cache_hit_rules and cache_bookkeeping what they call)."""

from __future__ import annotations

import asyncio
import contextlib
import logging
import math
import time
import uuid
from collections.abc import Callable, Coroutine, Mapping
from dataclasses import dataclass
from typing import Any

import numpy as np

from cache_server import metrics, store_size
from cache_server.cache_types import CachePolicy, Embedder, FloatArray, StatsSnapshot
from cache_server.decisions import DecisionLog
from cache_server.embedder_client import EmbedderModel, EmbedderUnavailableError
from cache_server.entries import (
    CacheEntry,
    EntryNotFoundError,
    check_attributes,
    check_cache_id,
    check_entry_id,
    check_text,
    normalize_prompt,
    prompt_key,
)
from cache_server.feedback import Feedback, learned_mark, served_mark, verdict_mark
from cache_server.learned_thresholds.engine import ModelPrior, VerifiedEngine
from cache_server.learned_thresholds.model import Calibrated
from cache_server.learned_thresholds.policy import (
    HitPolicy,
    check_accounting,
    check_max_error_rate,
    resolve,
)
from cache_server.savings import PriceTable, Savings
from cache_server.stats import CacheCounters, LookupLatency
from cache_server.store.base import CacheLimitError, CacheStore, ModelMismatchError

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class FeedbackOutcome:
    report: Feedback
    duplicate: bool  # this reporter gave this verdict on this answer before: nothing changed
    learned: bool  # an observation for the verified policy (the answer was served for it)


# How long an answer that needs no embedding waits for the embedder's model info when it has
# not been learned yet (only right after start, with the embedder away).
MODEL_PROBE_TIMEOUT_S = 0.5
DEFAULT_THRESHOLD = 0.85


class CacheAdmin:
    """What SemanticCache does besides look-ups and writes; it provides these attributes."""

    store: CacheStore
    embedder: Embedder
    policy: CachePolicy
    verified: VerifiedEngine
    latency: LookupLatency
    decisions: DecisionLog
    prices: PriceTable
    _clock: Callable[[], float]

    _background: set[asyncio.Task[None]]

    # -- the embedder's model and the threshold in force -----------------------------------

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

    async def _model_prior(self) -> ModelPrior:
        """The served model's identity and the verified policy's prior shipped with it: the
        learned state of a cache belongs to the model its similarities came from."""
        model = await self._model()
        if model is None:
            return ModelPrior("", None)
        prior = model.verified_prior
        return ModelPrior(
            model.onnx_sha256 or model.model_id,
            Calibrated(prior[0], prior[1], prior[2]) if prior is not None else None,
        )

    async def _threshold(self) -> tuple[float, str]:
        """threshold_in_force once the model is known: the first look-ups after start use the
        calibrated threshold too."""
        if self.policy.threshold is None:
            await self._model()
        return self.threshold_in_force()

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

    # -- background work ---------------------------------------------------------------------

    def _later(self, work: Coroutine[Any, Any, None]) -> None:
        """Runs `work` in the background (drain() waits for it)."""
        task = asyncio.create_task(work)
        self._background.add(task)
        task.add_done_callback(self._background.discard)

    async def drain(self) -> None:
        """Waits for background work (recency refreshes) to finish."""
        while self._background:
            await asyncio.gather(*self._background, return_exceptions=True)

    async def feedback(
        self, cache_id: str, entry_id_: str, prompt: str, *, correct: bool, reporter: str = ""
    ) -> FeedbackOutcome:
        """Keeps the verdict of `reporter` on entry `entry_id_` served for `prompt`; a wrong one
        stops the entry being served for that prompt (cache_server.feedback). Evidence, not a
        vote: the same verdict again changes nothing, and only a report on an answer the cache
        served for that prompt, once per reporter, is an observation for the verified policy."""
        cache_id = check_cache_id(cache_id)
        check_text("prompt", prompt, self.policy.max_prompt_chars)
        now = self._clock()
        entry = (
            await self.store.get(cache_id, entry_id_, now) if check_entry_id(entry_id_) else None
        )
        if entry is None:
            raise EntryNotFoundError(f"no entry {entry_id_[:40]!r} in cache {cache_id!r}")
        key = prompt_key(prompt)
        report = Feedback(
            id=uuid.uuid4().hex,
            cache_id=cache_id,
            entry_id=entry.id,
            entry_created_at=entry.created_at,
            prompt=prompt,
            prompt_key=key,
            entry_prompt=entry.prompt,
            entry_response=entry.response,
            correct=correct,
            created_at=now,
        )
        (fresh,) = await self.store.mark(
            cache_id, [verdict_mark(entry, key, reporter, correct)], now
        )
        if not fresh:
            metrics.FEEDBACK_REPORTS.labels("duplicate").inc()
            return FeedbackOutcome(report, duplicate=True, learned=False)
        # A reporter who changes their mind is heard (the latest verdict rules exclusions),
        # and may change it back again later.
        await self.store.unmark(cache_id, [verdict_mark(entry, key, reporter, not correct)])
        await self.store.add_feedback(report)
        await self.store.add_counters(
            cache_id, {"reported_right" if correct else "reported_wrong": 1}
        )
        learned = False
        # Served for it: an exact repeat of the entry's prompt always is (no mark needed),
        # anything else when a hit left its mark.
        own_prompt = normalize_prompt(prompt) == normalize_prompt(entry.prompt)
        if own_prompt or await self.store.marked(cache_id, served_mark(entry, key)):
            (learned,) = await self.store.mark(cache_id, [learned_mark(entry, key, reporter)], now)
        if learned:
            self._learn_from_feedback_later(cache_id, entry, prompt, correct)
        metrics.FEEDBACK_REPORTS.labels("learned" if learned else "kept").inc()
        return FeedbackOutcome(report, duplicate=False, learned=learned)

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
            self.decisions.forget(cache_id)
        return deleted

    async def cache_ids(self) -> list[str]:
        return await self.store.cache_ids()

    async def size_of(self, cache_id: str) -> int:
        """How many entries the cache holds now (expired ones left out)."""
        return await self.store.count(cache_id, self._clock())

    # -- housekeeping --------------------------------------------------------------------

    async def stats_of(self, cache_id: str) -> StatsSnapshot:
        cache_id = check_cache_id(cache_id)
        size = await self.store.count(cache_id, self._clock())
        counts = await self.store.counters(cache_id)
        threshold, source = await self._threshold()
        policy = await self.verified.policy_for(cache_id, None, None)
        learned = await self.verified.learned(cache_id, policy)
        return StatsSnapshot(
            cache_id=cache_id,
            cache_size=size,
            max_cache_size=self.policy.max_cache_size,
            threshold=threshold,
            threshold_source=source,
            counters=CacheCounters.of(counts, self.latency.of(cache_id)),
            policy=policy,
            learned=learned,
            savings=Savings.of(counts, self.prices.currency),
        )

    async def cache_policy(self, cache_id: str) -> HitPolicy:
        """The cache's hit policy: its own, else the server's default."""
        cache_id = check_cache_id(cache_id)
        return await self.verified.policy_for(cache_id, None, None)

    async def set_cache_policy(
        self,
        cache_id: str,
        name: str | None,
        max_error_rate: float | None,
        accounting: str | None = None,
    ) -> HitPolicy:
        """Sets the cache's hit policy (name None: back to the server's default). The bound
        and the accounting default to the server's; an accounting not given stays unset, so
        it follows the server's."""
        cache_id = check_cache_id(cache_id)
        if not name:
            check_max_error_rate(max_error_rate)
            check_accounting(accounting)
            return await self.verified.set_cache_policy(cache_id, None)
        chosen = resolve(self.verified.settings, None, name, max_error_rate)
        # A policy may be set before a cache's first entry, but made-up ids cannot grow the
        # store without bound: at most max_caches caches have one.
        limit = self.policy.max_caches
        if (
            await self.store.cache_policy(cache_id) is None
            and await self.store.policy_count() >= limit
        ):
            raise CacheLimitError(
                f"a policy for cache {cache_id!r} would be one too many: at most {limit} caches "
                "(max_caches) may have a policy; reset the policies of caches no longer used"
            )
        return await self.verified.set_cache_policy(
            cache_id,
            HitPolicy(chosen.name, chosen.max_error_rate, "cache", check_accounting(accounting)),
        )

    async def purge_expired(self) -> int:
        outcome = await self.store.purge_expired(self._clock())
        metrics.EXPIRATIONS.inc(sum(outcome.expired.values()))
        return sum(outcome.expired.values())

    async def run_purger(self, interval_s: float) -> None:
        """Removes expired entries every `interval_s` seconds, until cancelled, and measures
        how full the store is (cache_server.store_size) at most every MEASURE_EVERY_S."""
        measured = -math.inf
        while True:
            try:
                if time.monotonic() - measured >= store_size.MEASURE_EVERY_S:
                    measured = time.monotonic()
                    await store_size.measure(self.store, self.policy.max_cache_size, self._clock())
            except Exception:  # measured again later
                log.exception("measuring the store failed")
            await asyncio.sleep(interval_s)
            try:
                purged = await self.purge_expired()
                if purged:
                    log.info("purged %d expired entries", purged)
            except Exception:  # keep purging later; a transient store error is not fatal
                log.exception("purging expired entries failed")
