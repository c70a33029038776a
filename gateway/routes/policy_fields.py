"""The hit-policy fields the REST routes share (docs/verified.md): the policy names, their
protobuf values, and what GetStats reports of the verified policy."""

from __future__ import annotations

from typing import Literal

from pydantic import BaseModel, Field

from protos.semcache.cache.v1 import cache_pb2 as pb

PolicyName = Literal["threshold", "verified"]
POLICY_DESCRIPTION = (
    "Hit policy for this request (semcache extension): threshold (similarity decides) or "
    "verified (served only while the learned chance of a wrong answer stays below the max "
    "error rate); default: the cache's, else the server's"
)
ERROR_RATE_DESCRIPTION = (
    "Verified policy: the share of served hits (or of requests, see the error accounting) "
    "that may be wrong, in (0, 0.5] (semcache extension); default: the cache's, else the "
    "server's"
)
Accounting = Literal["hits", "requests"]
ACCOUNTING_DESCRIPTION = (
    "Verified policy: what the max error rate bounds (semcache extension): hits (wrong hits "
    "over semantic hits served) or requests (over all requests, misses and explorations "
    "counting as right: vCache's); default: the cache's, else the server's"
)
_TO_PB = {"threshold": pb.HIT_POLICY_THRESHOLD, "verified": pb.HIT_POLICY_VERIFIED}
_ACCOUNTING_PB = {"hits": pb.ERROR_ACCOUNTING_HITS, "requests": pb.ERROR_ACCOUNTING_REQUESTS}


def policy_pb(name: PolicyName | None) -> pb.HitPolicy.ValueType:
    return _TO_PB[name] if name is not None else pb.HIT_POLICY_UNSPECIFIED


def accounting_pb(name: Accounting | None) -> pb.ErrorAccounting.ValueType:
    return _ACCOUNTING_PB[name] if name is not None else pb.ERROR_ACCOUNTING_UNSPECIFIED


class LearnedThresholds(BaseModel):
    """What the verified policy has learned (a sample of up to 1,000 entries with evidence)."""

    entries: int = Field(description="Entries with observations, in the sample")
    observations: int = Field(description="Their observations")
    pooled_observations: int = Field(description="Observations pooled for the whole cache")
    threshold_p10: float = Field(description="Similarity from which entries are served: p10")
    threshold_p50: float
    threshold_p90: float
    entries_not_serving: int = Field(description="Entries served at no similarity yet")
    pool_threshold: float = Field(description="Same for a fresh entry (0: none served)")
    serving_level: float = Field(
        0.0, description="P(wrong) up to which candidates are served now (-1: none is)"
    )
    prior: str = Field("", description="calibrated (the model's) or uninformed")
    shift: float = Field(0.0, description="This cache's curve from the prior, in logits")
    window_requests: int = Field(0, description="Recent requests the level was chosen on")
    window_candidates: int = Field(0, description="... and their semantic candidates")

    @classmethod
    def of(cls, learned: pb.LearnedThresholds) -> LearnedThresholds:
        return cls(
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
