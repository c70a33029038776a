"""Protobuf for the verified hit policy: the request's policy enum, the cache's policy, and
what GetStats reports of it."""

from __future__ import annotations

from typing import Any

from cache_server.cache_types import StatsSnapshot
from cache_server.entries import DEFAULT_CACHE_ID, InvalidInputError
from cache_server.learned_thresholds.policy import HitPolicy
from protos.semcache.cache.v1 import cache_pb2 as pb

_NAMES: dict[int, str] = {
    pb.HIT_POLICY_THRESHOLD: "threshold",
    pb.HIT_POLICY_VERIFIED: "verified",
}


_ACCOUNTINGS: dict[int, str] = {
    pb.ERROR_ACCOUNTING_HITS: "hits",
    pb.ERROR_ACCOUNTING_REQUESTS: "requests",
}


def _named(value: int, names: dict[int, str], what: str) -> str | None:
    """The name of a request's enum value (None: 0, unspecified: the cache's or server's)."""
    if value == 0:
        return None
    if value not in names:
        raise InvalidInputError(f"unknown {what} {value}")
    return names[value]


def policy_name(value: int) -> str | None:
    """The policy a request names."""
    return _named(value, _NAMES, "hit policy")


def accounting_name(value: int) -> str | None:
    """What a request's max_error_rate bounds."""
    return _named(value, _ACCOUNTINGS, "error accounting")


def policy_pb(cache_id: str, policy: HitPolicy) -> pb.CachePolicy:
    return pb.CachePolicy(
        cache_id=cache_id or DEFAULT_CACHE_ID,
        policy=policy.name,
        max_error_rate=policy.max_error_rate,
        source="cache" if policy.source == "cache" else "server",
        error_accounting=policy.over,
    )


def stats_fields(snapshot: StatsSnapshot) -> dict[str, Any]:
    counters = snapshot.counters
    fields: dict[str, Any] = {
        "verified_hits": counters.verified_hits,
        "explorations": counters.explorations,
        "explorations_wrong": counters.explorations_wrong,
    }
    if snapshot.policy is not None:
        fields["policy"] = snapshot.policy.name
        fields["max_error_rate"] = snapshot.policy.max_error_rate
        fields["error_accounting"] = snapshot.policy.over
    if snapshot.learned is not None:
        learned = snapshot.learned
        fields["learned"] = pb.LearnedThresholds(
            entries=learned.entries,
            observations=learned.observations,
            pooled_observations=learned.pooled_observations,
            threshold_p10=learned.threshold_p10,
            threshold_p50=learned.threshold_p50,
            threshold_p90=learned.threshold_p90,
            entries_not_serving=learned.entries_not_serving,
            pool_threshold=learned.pool_threshold,
            serving_level=learned.serving_level,
            prior=learned.prior,
            shift=learned.shift,
            window_requests=learned.window_requests,
            window_candidates=learned.window_candidates,
        )
    return fields
