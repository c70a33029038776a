"""SemanticCache's hit rules beyond the nearest neighbour: the rule a look-up runs under (the
similarity threshold with the verifier's band, cache_server.cross_encoder_band, or the verified
policy's floor), the verified policy's verdicts on the hits found, and the judging of
explorations that teaches it (cache_server.learned_thresholds). A mixin, like
cache_admin: cache_server.cache holds the look-ups and writes that call these."""

from __future__ import annotations

import logging

from cache_server import metrics
from cache_server.cache_admin import CacheAdmin
from cache_server.cross_encoder_band import Band, Verifier
from cache_server.entries import CacheEntry, check_threshold, normalize_prompt
from cache_server.learned_thresholds.engine import Decision
from cache_server.learned_thresholds.policy import HitPolicy
from cache_server.lookup import Hit, Strategy

log = logging.getLogger(__name__)


class HitRules(CacheAdmin):
    """What SemanticCache decides about hits; it provides these attributes."""

    verifier: Verifier | None

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
        """The verified policy's verdict on the hits found: (served, to explore), both
        nearest first. Exact repeats are served as they are, also when a semantic search found
        them; a semantic candidate is served, explored (the upstream answers and judges it) or
        left out. Every request is noted: the level is chosen on the recent ones."""
        served: list[Hit] = []
        explore: list[Hit] = []
        asked = normalize_prompt(prompt)
        nearest: float | None = None
        for hit in hits:
            if hit.strategy is Strategy.EXACT or normalize_prompt(hit.entry.prompt) == asked:
                served.append(hit)
                continue
            if nearest is None and not served:
                nearest = hit.similarity
            decision = await self.verified.decide(cache_id, hit.entry, hit.similarity, policy)
            if decision.serve:
                served.append(hit)
            elif decision.explore:
                explore.append(hit)
            metrics.VERIFIED_DECISIONS.labels(_label(decision)).inc()
        self.verified.note(cache_id, prompt, nearest)
        if any(hit.strategy is Strategy.SEMANTIC for hit in served):
            counts["verified_hits"] = 1
        return served, explore

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


def _label(decision: Decision) -> str:
    """served; audited (explored though it would have been served); explored; rejected (by a
    wide margin: a plain miss)."""
    if decision.serve:
        return "served"
    if not decision.explore:
        return "rejected"
    return "audited" if decision.p_wrong <= decision.level else "explored"
