"""The last decisions this cache server made on each cache (the ListDecisions RPC, the
gateway's GET /v1/caches/{cacheId}/decisions): what was asked, the entry served or the nearest
one considered, its similarity, the strategy, the policy and the outcome.

In memory, per process (each replica keeps its own; a restart forgets them), bounded:
`capacity` decisions per cache, the oldest going first, for at most `max_caches` caches (the
one decided on longest ago is forgotten first, as stats.LookupLatency does, so made-up cache
ids cannot grow it). Prompts are kept truncated to PROMPT_CHARS characters; answers are never
kept. Recording is a deque append, and never raises into the request it describes.
"""

from __future__ import annotations

import itertools
import logging
from collections.abc import Sequence
from typing import Literal, NamedTuple

from cache_server.entries import InvalidInputError
from cache_server.learned_thresholds.policy import HitPolicy
from cache_server.lookup import Hit
from cache_server.stats import PerCacheRings

log = logging.getLogger(__name__)

Route = Literal["query", "search", "chat"]
Outcome = Literal["hit", "miss", "explored"]
PROMPT_CHARS = 500
DEFAULT_PER_CACHE = 200
DEFAULT_LIMIT = 50
MAX_LIMIT = 1000


class Asked(NamedTuple):
    """A look-up as it was asked: the prompt, the call it was made for, and the rule it ran
    under."""

    prompt: str
    route: Route
    policy: str  # "threshold" or "verified"
    threshold: float  # the similarity threshold, or the verified policy's max_error_rate

    @classmethod
    def of(cls, prompt: str, route: Route, policy: HitPolicy, threshold: float) -> Asked:
        """`threshold`: the similarity threshold the look-up ran under; a verified look-up
        records its bound (max_error_rate) instead."""
        bound = policy.max_error_rate if policy.verified else threshold
        return cls(prompt, route, policy.name, bound)


class Decision(NamedTuple):
    """One decision, as ListDecisions reports it (the fields of the proto's Decision)."""

    at: float  # Unix seconds
    prompt: str  # truncated to PROMPT_CHARS
    prompt_truncated: bool
    entry_id: str  # the entry served (hit) or the nearest considered (miss, explored); "": none
    entry_prompt: str
    entry_prompt_truncated: bool
    similarity: float  # 0 when no entry
    strategy: str | None  # "exact", "semantic"; None when no entry
    policy: str
    outcome: Outcome
    route: Route
    latency_ms: float
    threshold: float


def _truncated(text: str) -> tuple[str, bool]:
    if len(text) <= PROMPT_CHARS:
        return text, False
    return text[:PROMPT_CHARS], True


def decided(
    served: Sequence[Hit], unsure: Sequence[Hit], found: Sequence[Hit]
) -> tuple[Outcome, Hit | None]:
    """The rule, one copy for every look-up: a hit when an entry was served (the first one);
    explored when the verified policy judges a near entry instead (the first one it explores);
    else a miss, with the nearest candidate the look-up found and did not serve, if any (a
    threshold miss finds none: nothing is searched again to name one)."""
    if served:
        return "hit", served[0]
    if unsure:
        return "explored", unsure[0]
    return "miss", found[0] if found else None


def check_limit(limit: int) -> int:
    """The most decisions a ListDecisions call returns: 0 is the default."""
    if limit == 0:
        return DEFAULT_LIMIT
    if not 1 <= limit <= MAX_LIMIT:
        raise InvalidInputError(f"limit {limit} must be between 1 and {MAX_LIMIT}")
    return limit


class DecisionLog:
    """A ring of recent decisions per cache."""

    def __init__(self, capacity: int = DEFAULT_PER_CACHE, max_caches: int = 10_000) -> None:
        self._capacity = capacity
        self._rings = PerCacheRings[Decision](capacity, max_caches)

    @property
    def capacity(self) -> int:
        """The most decisions kept per cache."""
        return self._capacity

    def record(
        self,
        cache_id: str,
        asked: Asked,
        seconds: float,
        at: float,
        *,
        served: Sequence[Hit] = (),
        unsure: Sequence[Hit] = (),
        found: Sequence[Hit] = (),
    ) -> None:
        """Keeps the decision on one look-up (`served`: the hits it answered with; `unsure`:
        the candidates the verified policy explores instead; `found`: every candidate the
        look-up found, before any policy's verdict). Never raises."""
        try:
            outcome, entry = decided(served, unsure, found)
            prompt, prompt_cut = _truncated(asked.prompt)
            entry_prompt, entry_cut = _truncated(entry.entry.prompt) if entry else ("", False)
            decision = Decision(
                at=at,
                prompt=prompt,
                prompt_truncated=prompt_cut,
                entry_id=entry.entry.id if entry else "",
                entry_prompt=entry_prompt,
                entry_prompt_truncated=entry_cut,
                similarity=float(entry.similarity) if entry else 0.0,
                strategy=entry.strategy.value if entry else None,
                policy=asked.policy,
                outcome=outcome,
                route=asked.route,
                latency_ms=seconds * 1e3,
                threshold=asked.threshold,
            )
            self._rings.append(cache_id, decision)
        except Exception:  # a lost record is never worth a failed request
            log.exception("recording a decision in cache %r failed", cache_id)

    def recent(self, cache_id: str, limit: int = DEFAULT_LIMIT) -> list[Decision]:
        """Up to `limit` of the cache's decisions, newest first."""
        ring = self._rings.get(cache_id)
        if not ring:
            return []
        return list(itertools.islice(reversed(ring), max(0, limit)))

    def kept(self, cache_id: str) -> int:
        """How many decisions are kept for the cache now."""
        ring = self._rings.get(cache_id)
        return len(ring) if ring is not None else 0

    def forget(self, cache_id: str) -> None:
        """Drops the cache's decisions (its flush)."""
        self._rings.forget(cache_id)

    def __len__(self) -> int:
        """How many caches have decisions kept."""
        return len(self._rings)
