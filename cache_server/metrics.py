"""The cache server's Prometheus metrics (all caches together; per-cache figures: GetStats)."""

from __future__ import annotations

from prometheus_client import CollectorRegistry, Counter, Histogram

REGISTRY = CollectorRegistry()

LOOKUPS = Counter(
    "semcache_cache_lookups_total",
    "Look-ups by outcome (hit, miss)",
    ["outcome"],
    registry=REGISTRY,
)
LOOKUP_SECONDS = Histogram(
    "semcache_cache_lookup_seconds",
    "Time the cache server spent on a look-up, seconds, by outcome: a hit (exact check, "
    "embedding, vector search) or a miss (the same, then the upstream call and the write)",
    ["outcome"],
    buckets=(0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30),
    registry=REGISTRY,
)
UPSTREAM_CALLS = Counter(
    "semcache_cache_upstream_calls_total",
    "Calls to the upstream LLM by outcome",
    ["outcome"],
    registry=REGISTRY,
)
MODEL_MISMATCHES = Counter(
    "semcache_cache_model_mismatches_total",
    "Similarity searches refused because the cache holds vectors of another embedding model "
    "(make reindex re-embeds them)",
    registry=REGISTRY,
)
FEEDBACK_REPORTS = Counter(
    "semcache_cache_feedback_reports_total",
    "Feedback reports by what they did: learned (an observation for the verified policy), kept "
    "(stored, but on an answer never served for that prompt, or already learned from this "
    "reporter), duplicate (the same verdict again: nothing changed)",
    ["outcome"],
    registry=REGISTRY,
)
CHAT_PASSED_THROUGH = Counter(
    "semcache_cache_chat_passed_through_total",
    "Chat requests passed to the upstream uncached, by why: uncacheable (tools, n > 1, too "
    "long...), asked (the caller said so), cache_unavailable (embedder or store down)",
    ["reason"],
    registry=REGISTRY,
)
EVICTIONS = Counter("semcache_cache_evictions_total", "Entries evicted (LRU)", registry=REGISTRY)
EXPIRATIONS = Counter(
    "semcache_cache_expirations_total", "Expired entries purged", registry=REGISTRY
)
COUNTER_WRITE_FAILURES = Counter(
    "semcache_cache_counter_write_failures_total",
    "Hit/miss counts the store could not record (the answers themselves were given)",
    registry=REGISTRY,
)
RPCS = Counter(
    "semcache_cache_rpcs_total",
    "RPCs by method and status code",
    ["method", "code"],
    registry=REGISTRY,
)
ERRORS = Counter(
    "semcache_cache_errors_total",
    "Calls answered with an error, by method and reason (the reason sent to the caller: "
    "invalid-input, embedder-unavailable, upstream-failed, store-unavailable, ...)",
    ["method", "reason"],
    registry=REGISTRY,
)
VERIFIER_CALLS = Counter(
    "semcache_cache_verifier_calls_total",
    "Score calls to the verifier by outcome (ok, error: grey-zone candidates then missed)",
    ["outcome"],
    registry=REGISTRY,
)
VERIFIER_VERDICTS = Counter(
    "semcache_cache_verifier_verdicts_total",
    "Grey-zone candidates the verifier was asked about, by verdict (hit, rejected)",
    ["verdict"],
    registry=REGISTRY,
)
VERIFIED_DECISIONS = Counter(
    "semcache_cache_verified_decisions_total",
    "Semantic candidates under the verified policy, by decision (served, explored, audited)",
    ["decision"],
    registry=REGISTRY,
)
VERIFIED_OBSERVATIONS = Counter(
    "semcache_cache_verified_observations_total",
    "Observations learned by the verified policy, by verdict on the cached answer",
    ["verdict"],
    registry=REGISTRY,
)
