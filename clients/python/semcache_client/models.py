"""What the cache service answers, as plain typed Python values.

Fields mirror the proto messages of `semcache.cache.v1` field for field (same names, same
units), with three changes: enums are Python enums, a sub-message that is absent is None
(`QueryResult.cached_data` on a miss, `ServerInfo.verifier` without a verifier), and
`Entry.expires_at` is None for an entry that never expires (0 on the wire).

Units: similarity is the cosine similarity of L2-normalised embeddings, in [0, 1] for the
texts that matter; a hit is similarity >= threshold, so a HIGHER threshold is STRICTER. Times
are Unix seconds; durations are seconds unless named `*_ms`.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from enum import StrEnum
from typing import Any


class HitPolicy(StrEnum):
    """How a cache decides that a semantic candidate is a hit (docs/verified.md)."""

    THRESHOLD = "threshold"  # at or above the similarity threshold
    VERIFIED = "verified"  # per-entry thresholds learned online, under max_error_rate


class ErrorAccounting(StrEnum):
    """What `max_error_rate` bounds under the verified policy (docs/verified.md)."""

    HITS = "hits"  # wrong semantic hits / semantic hits served
    REQUESTS = "requests"  # vCache's: wrong hits / all requests (misses, explorations right)


class SearchStrategy(StrEnum):
    EXACT = "exact"  # the prompt exactly as stored (surrounding whitespace ignored)
    SEMANTIC = "semantic"  # nearest stored prompts by embedding similarity


@dataclass(frozen=True)
class CachedData:
    """The stored entry a hit was answered from."""

    cached_response: str
    similarity_score: float
    cached_query: str
    cache_timestamp: float  # when the entry was stored, Unix seconds
    entry_id: str
    strategy: SearchStrategy | None


@dataclass(frozen=True)
class QueryResult:
    query: str
    response: str
    cache_hit: bool
    cached_data: CachedData | None  # on a hit only
    embedding_dimension: int
    processing_time: float  # seconds spent in the cache server
    entry_id: str  # the entry holding `response` (the hit, or the one stored on a miss)
    explored: bool  # verified policy: the upstream answered and the stored answer was judged
    policy: str  # "threshold" or "verified"


@dataclass(frozen=True)
class Entry:
    id: str  # 32 lowercase hex characters
    prompt: str
    response: str
    attributes: dict[str, str]
    created_at: float  # Unix seconds
    expires_at: float | None  # Unix seconds; None: never expires


@dataclass(frozen=True)
class SearchHit:
    entry: Entry
    similarity: float
    strategy: SearchStrategy | None


@dataclass(frozen=True)
class SearchResult:
    hits: list[SearchHit]  # best first
    embedding_dimension: int
    processing_time: float  # seconds

    @property
    def best(self) -> SearchHit | None:
        return self.hits[0] if self.hits else None


@dataclass(frozen=True)
class LearnedThresholds:
    """Verified policy: what was learned per entry (a sample of up to 1,000 entries)."""

    entries: int
    observations: int
    pooled_observations: int
    threshold_p10: float
    threshold_p50: float
    threshold_p90: float
    entries_not_serving: int
    pool_threshold: float
    # The level on P(wrong) at which candidates are served now (-1: none is), chosen on the
    # recent requests of this server to keep the expected error within max_error_rate.
    serving_level: float = 0.0
    prior: str = ""  # where the curve started: "calibrated" or "uninformed"
    shift: float = 0.0  # this cache's curve from the prior, in logits (negative: more wrong)
    window_requests: int = 0  # requests in the window the serving level was chosen on
    window_candidates: int = 0  # distinct semantic candidates in that window


@dataclass(frozen=True)
class CacheStats:
    cache_id: str
    cache_size: int
    max_cache_size: int
    current_threshold: float
    hits: int
    misses: int
    hit_rate: float  # hits / (hits + misses); 0 without look-ups
    evictions: int
    expirations: int
    lookup_p50_ms: float
    lookup_p95_ms: float
    lookup_p99_ms: float
    lookups_measured: int
    threshold_source: str  # "operator", "calibrated" or "default"
    reported_wrong: int
    reported_right: int
    policy: str  # "threshold" or "verified"
    max_error_rate: float
    verified_hits: int
    explorations: int
    explorations_wrong: int
    learned: LearnedThresholds | None
    error_accounting: str = ""  # what max_error_rate bounds: "hits" or "requests"


@dataclass(frozen=True)
class VerifierBand:
    """Where the cache server asks its verifier: below `low` a miss, at or above `high` a hit,
    in between a hit only when the verifier's probability >= `threshold`."""

    model_id: str
    low: float
    high: float
    threshold: float
    source: str
    candidates: int


@dataclass(frozen=True)
class ServerInfo:
    embedder_model_id: str
    embedding_dimension: int
    embedder_fallback_model: bool
    upstream: str  # "openai-compatible" or "demo"
    demo_responder: bool
    upstream_model: str
    store_backend: str  # "embedded" or "redis"
    default_threshold: float
    max_cache_size: int
    embedder_serving: bool
    embedder_addresses: list[str] = field(default_factory=list)
    store_serving: bool = True
    threshold_source: str = ""
    verifier: VerifierBand | None = None


@dataclass(frozen=True)
class CachePolicy:
    cache_id: str
    policy: str  # "threshold" or "verified"
    max_error_rate: float
    source: str  # "cache" (set for this cache) or "server" (the server's default)
    error_accounting: str = ""  # what max_error_rate bounds: "hits" or "requests"


@dataclass(frozen=True)
class Decision:
    """One look-up decision of the cache server (CacheClient.list_decisions). Prompts are
    truncated to 500 characters (`*_truncated` says when); answers are never included."""

    at: float  # Unix seconds
    prompt: str
    prompt_truncated: bool
    entry_id: str  # the entry served (hit) or the nearest considered (miss, explored); "": none
    entry_prompt: str
    entry_prompt_truncated: bool
    similarity: float  # 0 when no entry
    strategy: SearchStrategy | None  # None when no entry
    policy: str  # "threshold" or "verified"
    outcome: str  # "hit", "miss" or "explored"
    route: str  # the call it was made for: "query", "search" or "chat"
    latency_ms: float
    threshold: float  # the similarity threshold, or the verified policy's max_error_rate


@dataclass(frozen=True)
class RecentDecisions:
    decisions: list[Decision]  # newest first
    kept: int  # decisions this cache server keeps for the cache now
    capacity: int  # the most it keeps per cache


@dataclass(frozen=True)
class CacheSummary:
    """A cache the caller administers (CacheClient.list_caches)."""

    cache_id: str
    cache_size: int
    policy: str  # "threshold" or "verified"
    policy_source: str  # "cache" (set for this cache) or "server" (the server's default)


@dataclass(frozen=True)
class FeedbackResult:
    feedback_id: str
    entry_id: str
    entry_prompt: str  # the stored prompt the asked one was matched to
    correct: bool
    served_for_prompt: bool  # false after a "wrong" report: not served again for that prompt
    duplicate: bool = False  # this reporter gave this verdict on this answer before
    learned: bool = False  # an observation for the verified policy (the answer was served)


# The events of a Chat call (CacheClient.chat), in the order the server sends them: a
# cacheable request answered from the cache gets one ChatHit; otherwise ChatChunk events in
# order (a stream) or one ChatCompletion, then ChatStored; or a ChatUpstreamError, and nothing
# more (chunks relayed before it stand; nothing is stored).


@dataclass(frozen=True)
class ChatHit:
    """Answered from the cache: the stored entry (its `response` is the answer's text)."""

    entry: Entry
    similarity: float
    strategy: SearchStrategy | None


@dataclass(frozen=True)
class ChatChunk:
    """One chunk of the upstream's stream: the JSON of an SSE `data:` line, as it came."""

    json: str

    @property
    def data(self) -> Any:
        """The chunk parsed (a `chat.completion.chunk` object)."""
        return json.loads(self.json)


@dataclass(frozen=True)
class ChatCompletion:
    """The upstream's whole answer (no stream): its JSON as it sent it."""

    json: str

    @property
    def data(self) -> Any:
        """The answer parsed (a `chat.completion` object)."""
        return json.loads(self.json)


@dataclass(frozen=True)
class ChatUpstreamError:
    """The upstream LLM failed (an event, not an exception: the call itself went well).
    `status` and `body` are what to answer with: a refused operator key is 502, the
    upstream's 429 a 429, an error about the request its own status and message, never the
    upstream's own body; status 0 when it could not be reached, timed out or broke off a
    stream. Nothing was stored."""

    status: int
    body: str
    message: str


@dataclass(frozen=True)
class ChatStored:
    """The answer is complete; `entry_id` is the entry now holding it, None when nothing was
    stored (not cacheable, tool calls, an answer cut short, or the store refused it)."""

    entry_id: str | None


ChatEvent = ChatHit | ChatChunk | ChatCompletion | ChatUpstreamError | ChatStored


@dataclass(frozen=True)
class ReindexProgress:
    """Where a re-embedding of one cache stands (CacheClient.reindex): entries done of total,
    and the identity of the model being reached (its ONNX file's sha256)."""

    cache_id: str
    done: int
    total: int
    model: str
    finished: bool


@dataclass(frozen=True)
class ChatRoute:
    """How the cache server handled a chat request. `chat_scope`: the digest of all that
    shapes the answer, which the answer is looked up and stored under (attribute
    `chat_scope`: name it in a `search` to find chat answers); None when not cached.
    `uncacheable`: why the request was passed to the upstream uncached (tools, n > 1, a last
    message that is not the user's or too long, the cache unavailable...); None when cached."""

    chat_scope: str | None
    uncacheable: str | None
