"""What an operator looks at, a semcache extension beside the LangCache-compatible API: the
recent decisions on a cache (`GET /v1/caches/{cacheId}/decisions`) and the caches the key
administers (`GET /v1/caches`). Same conventions (camelCase JSON, RFC 7807 errors with
LangCache's `type` URIs). Admin keys only when keys are set: the cache server decides."""

from __future__ import annotations

from typing import Annotated, Literal

from fastapi import APIRouter, Query
from pydantic import Field

from gateway.problems import LANGCACHE
from gateway.routes.deps import CacheStub, Settings, call
from gateway.routes.langcache import CacheIdPath, Camel
from protos.semcache.cache.v1 import cache_pb2 as pb
from service_runtime.logs import outgoing_metadata

router = APIRouter(
    prefix="/v1/caches", tags=["Operations (semcache extension)"], responses=LANGCACHE
)

_STRATEGIES: dict[int, Literal["exact", "semantic"]] = {
    pb.SEARCH_STRATEGY_EXACT: "exact",
    pb.SEARCH_STRATEGY_SEMANTIC: "semantic",
}


class Decision(Camel):
    at: float = Field(description="When, Unix seconds")
    prompt: str = Field(description="The prompt asked, truncated to 500 characters")
    prompt_truncated: bool = Field(alias="promptTruncated")
    entry_id: str | None = Field(
        alias="entryId",
        description="The entry served (hit) or the nearest one considered (miss, explored); "
        "null when none",
    )
    entry_prompt: str | None = Field(
        alias="entryPrompt", description="That entry's prompt, truncated to 500 characters"
    )
    entry_prompt_truncated: bool = Field(alias="entryPromptTruncated")
    similarity: float = Field(description="The entry's similarity to the prompt (0: no entry)")
    strategy: Literal["exact", "semantic"] | None = Field(description="null when no entry")
    policy: str = Field(description="threshold or verified")
    outcome: str = Field(
        description="hit (a stored answer was served), miss, or explored (verified policy: "
        "the near answer was judged against a fresh one instead of served)"
    )
    route: str = Field(description="The call it was made for: query, search or chat")
    latency_ms: float = Field(alias="latencyMs", description="Time in the cache server")
    threshold: float = Field(
        description="The similarity threshold in force, or the verified policy's bound "
        "(maxErrorRate)"
    )


class DecisionsResponse(Camel):
    decisions: list[Decision] = Field(description="Newest first")
    kept: int = Field(description="Decisions kept for this cache now, on this cache server")
    capacity: int = Field(description="The most kept per cache (CACHE_DECISIONS_PER_CACHE)")


class CacheSummary(Camel):
    cache_id: str = Field(alias="cacheId")
    cache_size: int = Field(alias="cacheSize", description="Entries held now")
    policy: str = Field(description="threshold or verified")
    policy_source: str = Field(
        alias="policySource", description='"cache" (set for this cache) or "server" (the default)'
    )


class CachesResponse(Camel):
    caches: list[CacheSummary]


def _decision(d: pb.Decision) -> Decision:
    entry = bool(d.entry_id)
    return Decision(
        at=d.at,
        prompt=d.prompt,
        prompt_truncated=d.prompt_truncated,
        entry_id=d.entry_id if entry else None,
        entry_prompt=d.entry_prompt if entry else None,
        entry_prompt_truncated=d.entry_prompt_truncated,
        similarity=d.similarity,
        strategy=_STRATEGIES.get(d.strategy) if entry else None,
        policy=d.policy,
        outcome=d.outcome,
        route=d.route,
        latency_ms=d.latency_ms,
        threshold=d.threshold,
    )


@router.get("/{cacheId}/decisions", response_model=DecisionsResponse, response_model_by_alias=True)
async def list_decisions(
    cache: CacheStub,
    settings: Settings,
    cache_id: CacheIdPath,
    limit: Annotated[int, Query(ge=1, le=1000, description="Most decisions returned")] = 50,
) -> DecisionsResponse:
    """The last look-up decisions the cache server made on this cache, newest first: the
    prompt asked, the entry served or the nearest considered, the similarity, strategy,
    policy and outcome. Kept in memory per cache server (bounded; lost on restart; each
    replica has its own), prompts truncated, answers never included. Admin keys."""
    reply = await call(
        cache.ListDecisions(
            pb.ListDecisionsRequest(cache_id=cache_id, limit=limit),
            timeout=settings.request_timeout_s,
            metadata=outgoing_metadata(),
        )
    )
    return DecisionsResponse(
        decisions=[_decision(d) for d in reply.decisions],
        kept=reply.kept,
        capacity=reply.capacity,
    )


@router.get("", response_model=CachesResponse, response_model_by_alias=True)
async def list_caches(cache: CacheStub, settings: Settings) -> CachesResponse:
    """The caches that hold entries or have a policy, with their size and policy: with keys,
    only the caches the key administers (a key without the admin action: 403)."""
    reply = await call(
        cache.ListCaches(
            pb.ListCachesRequest(),
            timeout=settings.request_timeout_s,
            metadata=outgoing_metadata(),
        )
    )
    return CachesResponse(
        caches=[
            CacheSummary(
                cache_id=c.cache_id,
                cache_size=c.cache_size,
                policy=c.policy,
                policy_source=c.policy_source,
            )
            for c in reply.caches
        ]
    )
