"""The hit policy of a cache, a semcache extension beside the LangCache-compatible API:
`GET|PUT /v1/caches/{cacheId}/policy` (docs/verified.md). Same conventions (camelCase JSON,
RFC 7807 errors with LangCache's `type` URIs). Also the policy fields the other routes share."""

from __future__ import annotations

from fastapi import APIRouter
from pydantic import Field

from gateway.problems import LANGCACHE
from gateway.routes.deps import CacheStub, Settings, call
from gateway.routes.langcache import CacheIdPath, Camel
from gateway.routes.policy_fields import (
    ACCOUNTING_DESCRIPTION,
    ERROR_RATE_DESCRIPTION,
    Accounting,
    PolicyName,
    accounting_pb,
    policy_pb,
)
from protos.semcache.cache.v1 import cache_pb2 as pb
from service_runtime.logs import outgoing_metadata

router = APIRouter(
    prefix="/v1/caches/{cacheId}", tags=["Hit policy (semcache extension)"], responses=LANGCACHE
)


class PolicyRequest(Camel):
    policy: PolicyName | None = Field(
        description="threshold or verified; null: back to the server's default"
    )
    max_error_rate: float | None = Field(
        None, alias="maxErrorRate", gt=0.0, le=0.5, description=ERROR_RATE_DESCRIPTION
    )
    error_accounting: Accounting | None = Field(
        None, alias="errorAccounting", description=ACCOUNTING_DESCRIPTION
    )


class PolicyResponse(Camel):
    cache_id: str = Field(alias="cacheId")
    policy: str = Field(description="threshold or verified")
    max_error_rate: float = Field(alias="maxErrorRate")
    error_accounting: str = Field(alias="errorAccounting", description="hits or requests")
    source: str = Field(description='"cache" (set for this cache) or "server" (the default)')


def _response(reply: pb.CachePolicy) -> PolicyResponse:
    return PolicyResponse(
        cache_id=reply.cache_id,
        policy=reply.policy,
        max_error_rate=reply.max_error_rate,
        error_accounting=reply.error_accounting or "hits",
        source=reply.source,
    )


@router.get("/policy", response_model=PolicyResponse, response_model_by_alias=True)
async def get_policy(cache: CacheStub, settings: Settings, cache_id: CacheIdPath) -> PolicyResponse:
    """The cache's hit policy: its own, else the server's default."""
    reply = await call(
        cache.GetCachePolicy(
            pb.GetCachePolicyRequest(cache_id=cache_id),
            timeout=settings.request_timeout_s,
            metadata=outgoing_metadata(),
        )
    )
    return _response(reply)


@router.put("/policy", response_model=PolicyResponse, response_model_by_alias=True)
async def set_policy(
    body: PolicyRequest, cache: CacheStub, settings: Settings, cache_id: CacheIdPath
) -> PolicyResponse:
    """Sets the cache's hit policy; it outlives a flush (configuration, not data)."""
    request = pb.SetCachePolicyRequest(
        cache_id=cache_id,
        policy=policy_pb(body.policy),
        error_accounting=accounting_pb(body.error_accounting),
    )
    if body.max_error_rate is not None:
        request.max_error_rate = body.max_error_rate
    reply = await call(
        cache.SetCachePolicy(
            request, timeout=settings.request_timeout_s, metadata=outgoing_metadata()
        )
    )
    return _response(reply)
