"""The savings part of GET /cache/stats: what a cache's hits saved (cache_server.savings)."""

from __future__ import annotations

from pydantic import BaseModel, Field

from protos.semcache.cache.v1 import cache_pb2 as pb


class Savings(BaseModel):
    """What the cache's hits saved since its last flush. Only hits on answers whose upstream
    cost is known (stored after an upstream call that reported its usage) add tokens, seconds
    and money; answers stored by `Set` (POST /v1/caches/{cacheId}/entries) have none."""

    hits_with_cost: int = Field(description="Hits on answers with a known upstream cost")
    hits_without_cost: int = Field(
        description="Hits on answers with no known cost (stored by Set, or the upstream "
        "reported no usage): counted, adding no tokens, seconds or money"
    )
    prompt_tokens: int = Field(description="Upstream prompt tokens not spent")
    completion_tokens: int = Field(description="Upstream completion tokens not spent")
    upstream_seconds: float = Field(description="Upstream waiting not spent, seconds")
    cost: float = Field(description="Money not spent, in `currency` (the server's CACHE_PRICES)")
    currency: str = Field(description="The price table's currency")
    hits_unpriced: int = Field(
        description="Hits with a known cost whose model has no price: tokens saved, no money"
    )

    @classmethod
    def of(cls, reply: pb.Savings) -> Savings:
        return cls(
            hits_with_cost=reply.hits_with_cost,
            hits_without_cost=reply.hits_without_cost,
            prompt_tokens=reply.prompt_tokens,
            completion_tokens=reply.completion_tokens,
            upstream_seconds=reply.upstream_seconds,
            cost=reply.cost,
            currency=reply.currency or "USD",
            hits_unpriced=reply.hits_unpriced,
        )
