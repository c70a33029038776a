"""What each key spends upstream: LLM calls and tokens (from the upstream's `usage`), counted
per UTC day, and capped where the key (or the server's default) says.

The upstream client asks `check()` before it calls the LLM and reports `record()` after; the
key is the caller of the call being served (cache_server.access). Several callers that share
one flight (cache_server.single_flight) cost one call: it is counted for the caller who
started it, whose context the flight runs in. A cached answer costs nothing and is served
whatever the key has spent.
"""

from __future__ import annotations

import datetime as dt
import json
import logging
from typing import Any

from prometheus_client import Counter

from cache_server.access import BudgetSpentError, DefaultLimits, caller
from cache_server.limits import Limiter
from cache_server.metrics import REGISTRY
from cache_server.savings import Usage

log = logging.getLogger(__name__)

SPENT = Counter(
    "semcache_cache_upstream_spent_total",
    "Upstream LLM use by key: unit=requests (calls made) or tokens (the upstream's usage)",
    ["key", "unit"],
    registry=REGISTRY,
)


def _today(now: dt.datetime | None = None) -> tuple[str, float]:
    """Today's date (UTC) and the seconds until it ends."""
    now = now or dt.datetime.now(dt.UTC)
    tomorrow = (now + dt.timedelta(days=1)).replace(hour=0, minute=0, second=0, microsecond=0)
    return now.date().isoformat(), (tomorrow - now).total_seconds()


def usage_in(text: str) -> int:
    """The tokens an upstream answer (or one streamed chunk) reports, 0 when none."""
    try:
        parsed: Any = json.loads(text)
    except ValueError:
        return 0
    usage = Usage.of(parsed.get("usage")) if isinstance(parsed, dict) else None
    return usage.total if usage is not None else 0


class Spending:
    def __init__(self, limiter: Limiter, defaults: DefaultLimits) -> None:
        self.limiter = limiter
        self.defaults = defaults

    async def check(self) -> None:
        """Raises BudgetSpentError when the caller's key has spent today's allowance."""
        tenant = caller().tenant
        max_requests = (
            tenant.limits.upstream_requests_per_day or self.defaults.upstream_requests_per_day
        )
        max_tokens = tenant.limits.upstream_tokens_per_day or self.defaults.upstream_tokens_per_day
        if max_requests is None and max_tokens is None:
            return
        day, left_s = _today()
        requests, tokens = await self.limiter.spent(tenant.id, day)
        if max_requests is not None and requests >= max_requests:
            what = f"{max_requests} upstream requests"
        elif max_tokens is not None and tokens >= max_tokens:
            what = f"{max_tokens} upstream tokens"
        else:
            return
        log.warning("key %s spent its daily budget of %s", tenant.id, what)
        raise BudgetSpentError(
            f"key {tenant.id!r} has spent today's budget of {what}; cached answers are still "
            "served, new ones from tomorrow (UTC)",
            retry_after_s=left_s,
        )

    async def record(self, requests: int, tokens: int) -> None:
        """Counts an upstream call (`requests`, when it is made) or its tokens (when known)."""
        key = caller().tenant.id
        if requests:
            SPENT.labels(key, "requests").inc(requests)
        if tokens:
            SPENT.labels(key, "tokens").inc(tokens)
        day, _ = _today()
        try:
            await self.limiter.spend(key, day, requests, tokens)
        except Exception as exc:  # the answer was given; only its accounting failed
            log.warning("upstream spending of key %s not recorded: %s", key, exc)
