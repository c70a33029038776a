"""Which hit policy a request runs under, and the verified policy's settings.

Order: the request's own (`policy`, `max_error_rate`, `error_accounting`), else the cache's
(SetCachePolicy, PUT /v1/caches/{cacheId}/policy), else the server's (CACHE_HIT_POLICY,
CACHE_MAX_ERROR_RATE, CACHE_VERIFIED_ACCOUNTING). A request or cache that names `verified`
without a bound or an accounting gets the next one down the line.
"""

from __future__ import annotations

import json
import math
from dataclasses import dataclass
from typing import Literal

from cache_server.entries import InvalidInputError
from cache_server.learned_thresholds.model import ACCOUNTINGS, Accounting

PolicyName = Literal["threshold", "verified"]
POLICIES: tuple[PolicyName, ...] = ("threshold", "verified")
MAX_ERROR_RATE_LIMIT = 0.5


@dataclass(frozen=True)
class VerifiedSettings:
    default_policy: PolicyName = "threshold"
    max_error_rate: float = 0.02
    accounting: Accounting = "hits"  # what δ bounds: wrong hits / hits, or / requests
    confidence: float = 0.9  # that the expected error of the hits served stays within δ
    min_similarity: float = 0.70  # candidates below: a plain miss, nothing learned
    audit_rate: float = 0.01  # least share of served candidates explored, to keep learning
    # Share of served candidates explored while their band's belief is all prior; it falls as
    # the band gathers evidence of its own (half of it once that weighs as much as the prior).
    unproven_explore_rate: float = 0.3
    # A candidate not served is explored (judged) unless the chance that it was within the
    # level is below this: rejected by a wide margin, a plain miss.
    explore_chance: float = 0.01
    judge: Literal["auto", "exact", "embedding", "llm"] = "auto"
    judge_threshold: float = 0.9  # the embedding judge's answer similarity
    pending_ttl_s: float = 600.0  # a Search's exploration waits this long for the Set
    policy_refresh_s: float = 2.0  # a cache's policy read from the store at most this often


@dataclass(frozen=True)
class HitPolicy:
    name: PolicyName
    max_error_rate: float
    source: Literal["request", "cache", "server"]
    # What max_error_rate bounds; None only in a cache's stored policy that named none (the
    # server's applies). A resolved policy always has one.
    accounting: Accounting | None = None

    @property
    def over(self) -> Accounting:
        return self.accounting or "hits"

    @property
    def verified(self) -> bool:
        return self.name == "verified"


def check_policy_name(name: str) -> PolicyName:
    if name not in POLICIES:
        raise InvalidInputError(f"policy must be one of {', '.join(POLICIES)}, not {name!r}")
    return "verified" if name == "verified" else "threshold"


def check_max_error_rate(value: float | None) -> float | None:
    if value is None:
        return None
    if not math.isfinite(value) or not 0.0 < value <= MAX_ERROR_RATE_LIMIT:
        raise InvalidInputError(
            f"max_error_rate must be in (0, {MAX_ERROR_RATE_LIMIT}] (a share of served "
            f"hits, e.g. 0.02 for at most 2% wrong), not {value!r}"
        )
    return value


def check_accounting(name: str | None) -> Accounting | None:
    if not name:
        return None
    for known in ACCOUNTINGS:
        if name == known:
            return known
    raise InvalidInputError(
        f"error accounting must be one of {', '.join(ACCOUNTINGS)} (what max_error_rate "
        f"bounds: wrong hits over hits, or over all requests), not {name!r}"
    )


def resolve(
    settings: VerifiedSettings,
    cache: HitPolicy | None,
    name: str | None,
    max_error_rate: float | None,
    accounting: str | None = None,
) -> HitPolicy:
    """The policy for one request: its own, else the cache's, else the server's (each of the
    bound and the accounting separately)."""
    rate = check_max_error_rate(max_error_rate)
    over = check_accounting(accounting)
    fallback_rate = cache.max_error_rate if cache is not None else settings.max_error_rate
    fallback_over = (cache.accounting if cache is not None else None) or settings.accounting
    if name:
        return HitPolicy(
            check_policy_name(name), rate or fallback_rate, "request", over or fallback_over
        )
    if cache is not None:
        return HitPolicy(cache.name, rate or fallback_rate, "cache", over or fallback_over)
    return HitPolicy(
        settings.default_policy, rate or fallback_rate, "server", over or fallback_over
    )


def encode(policy: HitPolicy) -> str:
    return json.dumps(
        {
            "policy": policy.name,
            "max_error_rate": policy.max_error_rate,
            "accounting": policy.accounting,
        }
    )


def decode(raw: str | None) -> HitPolicy | None:
    """A cache's stored policy; None when none is set or it cannot be read (logged by the
    caller's store as any bad row would be: the server's default applies)."""
    if not raw:
        return None
    try:
        data = json.loads(raw)
        return HitPolicy(
            check_policy_name(str(data["policy"])),
            float(check_max_error_rate(float(data["max_error_rate"])) or 0.02),
            "cache",
            check_accounting(data.get("accounting")),
        )
    except (ValueError, KeyError, TypeError, InvalidInputError):
        return None
