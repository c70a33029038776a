"""The values SemanticCache takes and gives: its policy, its results, what it needs of the
embedder."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Protocol

import numpy as np
import numpy.typing as npt

from cache_server.embedder_client import EmbedderModel
from cache_server.learned_thresholds.engine import Learned
from cache_server.learned_thresholds.policy import HitPolicy
from cache_server.lookup import Hit
from cache_server.savings import Savings
from cache_server.stats import CacheCounters

FloatArray = npt.NDArray[np.float32]


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
    decisions_per_cache: int = 200  # recent decisions kept per cache (cache_server.decisions)


@dataclass(frozen=True)
class QueryResult:
    query: str
    response: str
    hit: Hit | None
    entry_id: str
    embedding_dimension: int
    processing_time_s: float
    policy: str = "threshold"
    explored: bool = False  # verified: a near answer was judged against the upstream's


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
    policy: HitPolicy | None = None
    learned: Learned | None = None
    savings: Savings = field(default_factory=Savings)
