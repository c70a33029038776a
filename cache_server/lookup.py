"""Finding the hits for one prompt: what SemanticCache.query and .search look up.

Strategies in the order asked; the first that finds anything answers. Exact: a stored prompt
equal to this one (surrounding whitespace ignored) in the same scope, similarity 1.0, no
embedder call. Semantic: the nearest stored prompts by embedding at or above the threshold or,
with a verifier (cache_server.cross_encoder_band), those its band and verdicts let through. Either
way, an entry the application reported wrong for this prompt (cache_server.feedback) is
skipped, and the next-best ones are searched for instead.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable, Mapping, Sequence
from dataclasses import dataclass
from enum import Enum

import numpy as np
import numpy.typing as npt

from cache_server.cross_encoder_band import Band, Verifier
from cache_server.entries import CacheEntry, prompt_key
from cache_server.feedback import is_excluded
from cache_server.store.base import CacheStore
from service_runtime import tracing

FloatArray = npt.NDArray[np.float32]
Rule = tuple[float, Band | None]  # the similarity threshold, and the verifier's band if any
Found = list[tuple[CacheEntry, float]]


class Strategy(Enum):
    EXACT = "exact"
    SEMANTIC = "semantic"


@dataclass(frozen=True)
class Hit:
    entry: CacheEntry
    similarity: float
    strategy: Strategy


class Finder:
    def __init__(
        self,
        store: CacheStore,
        embed_one: Callable[[str], Awaitable[FloatArray]],
        verifier: Verifier | None,
        check_model: Callable[[str], Awaitable[None]],
    ) -> None:
        self.store = store
        self._embed_one = embed_one
        self.verifier = verifier
        self._check_model = check_model

    async def find(
        self,
        cache_id: str,
        prompt: str,
        rule: Rule,
        k: int,
        attributes: Mapping[str, str],
        strategies: Sequence[Strategy],
        vector_box: list[FloatArray],
        now: float,
    ) -> list[Hit]:
        """Up to `k` hits. A semantic look-up leaves its query vector in `vector_box`, so that
        a miss can store it without embedding the prompt again."""
        allowed = _Exclusions(self.store, cache_id, prompt, now)
        for strategy in strategies:
            if strategy is Strategy.EXACT:
                with tracing.span("store.find_exact", self._described(cache_id)) as span:
                    entry = await self.store.find_exact(cache_id, prompt, attributes, now)
                    if span is not None:
                        span.set_attribute("semcache.store.found", int(entry is not None))
                if entry is not None and await allowed([(entry, 1.0)]):
                    return [Hit(entry, 1.0, Strategy.EXACT)]
                continue
            await self._check_model(cache_id)  # the query's vector is comparable to the cache's
            vector = await self._embed_one(prompt)
            vector_box.append(vector)
            found = await self.nearest(cache_id, prompt, vector, k, rule, attributes, now)
            kept = await allowed(found) if found else found
            if len(kept) < len(found):
                # Entries reported wrong for this prompt: the next-best ones instead.
                wider = k + len(allowed.excluded or {})
                found = await self.nearest(cache_id, prompt, vector, wider, rule, attributes, now)
                kept = (await allowed(found))[:k]
            if kept:
                # float32 rounding can give 1.0000001 for a vector and itself: clamp.
                return [Hit(e, min(1.0, max(0.0, s)), Strategy.SEMANTIC) for e, s in kept]
        return []

    async def nearest(
        self,
        cache_id: str,
        prompt: str,
        vector: FloatArray,
        k: int,
        rule: Rule,
        attributes: Mapping[str, str],
        now: float,
    ) -> Found:
        """The stored entries that are hits for `prompt`, nearest first."""
        threshold, band = rule
        if band is None or self.verifier is None:
            return await self._search(cache_id, vector, k, threshold, attributes, now)
        found = await self._search(
            cache_id, vector, max(k, band.candidates), band.low, attributes, now
        )
        if not found:
            return found
        verdict = await self.verifier.keep(prompt, [(e.prompt, s) for e, s in found], band, k)
        return [item for item, ok in zip(found, verdict, strict=True) if ok][:k]

    async def _search(
        self,
        cache_id: str,
        vector: FloatArray,
        k: int,
        min_similarity: float,
        attributes: Mapping[str, str],
        now: float,
    ) -> Found:
        """The store's vector search, in a span when traces are on."""
        described = self._described(cache_id, k=k, min_similarity=min_similarity)
        with tracing.span("store.search", described) as span:
            found = await self.store.search(cache_id, vector, k, min_similarity, attributes, now)
            if span is not None:
                span.set_attribute("semcache.store.found", len(found))
        return found

    def _described(self, cache_id: str, **more: float) -> dict[str, str | float] | None:
        """A store span's attributes (None while traces are off: nothing to build)."""
        if not tracing.enabled():
            return None
        return {"semcache.cache_id": cache_id, "semcache.store.backend": self.store.backend} | {
            f"semcache.{name}": value for name, value in more.items()
        }


class _Exclusions:
    """Filters out the entries reported wrong for one prompt; asks the store once, and only
    when there is a candidate to filter."""

    def __init__(self, store: CacheStore, cache_id: str, prompt: str, now: float) -> None:
        self._store = store
        self._cache_id = cache_id
        self._prompt = prompt
        self._now = now
        self.excluded: dict[str, float] | None = None

    async def __call__(self, entries: Found) -> Found:
        if self.excluded is None:
            self.excluded = await self._store.excluded(self._cache_id, prompt_key(self._prompt))
        kept = []
        for entry, similarity in entries:
            if entry.id in self.excluded:
                # Which answer was judged: a search reply may round created_at (Redis returns
                # sortable fields shortened); the entry itself has it exactly.
                exact = await self._store.get(self._cache_id, entry.id, self._now)
                if exact is None or is_excluded(exact, self.excluded):
                    continue
            kept.append((entry, similarity))
        return kept
