"""semcache-client: typed gRPC clients of semcache's cache server and embedder.

    from semcache_client import CacheClient

    with CacheClient("localhost:50051") as cache:
        answer = cache.query("What is the capital of France?")

See the package README for balancing, deadlines and retries, TLS, errors and LangChain.
"""

from __future__ import annotations

from semcache_client.async_cache_client import AsyncCacheClient
from semcache_client.cache_client import CacheClient
from semcache_client.config import ClientConfig, RetryPolicy, Timeouts, TlsConfig
from semcache_client.embedder_client import AsyncEmbedderClient, EmbedderClient
from semcache_client.embedding_models import (
    Embeddings,
    EmbedMetadata,
    ModelInfo,
    Scores,
    VerifierInfo,
)
from semcache_client.errors import (
    Cancelled,
    DeadlineExceeded,
    ErrorReason,
    FailedPrecondition,
    InternalError,
    InvalidArgument,
    NotFound,
    PermissionDenied,
    ResourceExhausted,
    SemcacheError,
    Unauthenticated,
    Unavailable,
    Unimplemented,
)
from semcache_client.models import (
    CachedData,
    CachePolicy,
    CacheStats,
    CacheSummary,
    ChatChunk,
    ChatCompletion,
    ChatEvent,
    ChatHit,
    ChatRoute,
    ChatStored,
    ChatUpstreamError,
    Decision,
    Entry,
    ErrorAccounting,
    FeedbackResult,
    HitPolicy,
    LearnedThresholds,
    QueryResult,
    RecentDecisions,
    ReindexProgress,
    SearchHit,
    SearchResult,
    SearchStrategy,
    ServerInfo,
    VerifierBand,
)
from semcache_client.streams import AsyncChatStream, ChatStream

__all__ = [
    "AsyncCacheClient",
    "AsyncChatStream",
    "AsyncEmbedderClient",
    "CacheClient",
    "CachePolicy",
    "CacheStats",
    "CacheSummary",
    "CachedData",
    "Cancelled",
    "ChatChunk",
    "ChatCompletion",
    "ChatEvent",
    "ChatHit",
    "ChatRoute",
    "ChatStored",
    "ChatStream",
    "ChatUpstreamError",
    "ClientConfig",
    "DeadlineExceeded",
    "Decision",
    "EmbedMetadata",
    "EmbedderClient",
    "Embeddings",
    "Entry",
    "ErrorAccounting",
    "ErrorReason",
    "FailedPrecondition",
    "FeedbackResult",
    "HitPolicy",
    "InternalError",
    "InvalidArgument",
    "LearnedThresholds",
    "ModelInfo",
    "NotFound",
    "PermissionDenied",
    "QueryResult",
    "RecentDecisions",
    "ReindexProgress",
    "ResourceExhausted",
    "RetryPolicy",
    "Scores",
    "SearchHit",
    "SearchResult",
    "SearchStrategy",
    "SemcacheError",
    "ServerInfo",
    "Timeouts",
    "TlsConfig",
    "Unauthenticated",
    "Unavailable",
    "Unimplemented",
    "VerifierBand",
    "VerifierInfo",
]
