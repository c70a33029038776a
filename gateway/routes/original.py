"""The original product's REST API: POST /query, GET /health, GET /cache/stats."""

from __future__ import annotations

import time
from typing import TYPE_CHECKING, Annotated

import grpc
from fastapi import APIRouter, Query, Request, Response
from fastapi.responses import JSONResponse
from pydantic import BaseModel, Field

from gateway.fast_json import json_response, query_answer
from gateway.metrics import LOOKUPS
from gateway.problems import ORIGINAL
from gateway.routes.deps import CACHE_ID_PATTERN, CacheStub, Settings, call
from gateway.routes.policy_fields import (
    ACCOUNTING_DESCRIPTION,
    ERROR_RATE_DESCRIPTION,
    POLICY_DESCRIPTION,
    Accounting,
    LearnedThresholds,
    PolicyName,
    accounting_pb,
    policy_pb,
)
from gateway.routes.stats_fields import Savings
from gateway.settings import GatewaySettings
from protos.semcache.cache.v1 import cache_pb2 as pb
from service_runtime.logs import outgoing_metadata

if TYPE_CHECKING:
    from protos.semcache.cache.v1.cache_pb2_grpc import CacheServiceAsyncStub

LOOKUP_HIT, LOOKUP_MISS = LOOKUPS.labels("hit"), LOOKUPS.labels("miss")

router = APIRouter(tags=["semantic cache"], responses=ORIGINAL)

CacheId = Annotated[
    str,
    Query(description="Cache (namespace) to use", pattern=CACHE_ID_PATTERN),
]


class QueryRequest(BaseModel):
    query: str = Field(min_length=1, description="The question")
    use_cache: bool = Field(True, description="False: skip the look-up, ask the LLM, store")
    similarity_threshold: float | None = Field(
        None,
        ge=0.0,
        le=1.0,
        description="Cosine similarity needed for a hit (higher is stricter); default 0.85",
    )
    policy: PolicyName | None = Field(None, description=POLICY_DESCRIPTION)
    max_error_rate: float | None = Field(None, gt=0.0, le=0.5, description=ERROR_RATE_DESCRIPTION)
    error_accounting: Accounting | None = Field(None, description=ACCOUNTING_DESCRIPTION)


class CachedData(BaseModel):
    cached_response: str
    similarity_score: float = Field(description="Cosine similarity to the cached question")
    cached_query: str
    cache_timestamp: float = Field(description="When it was cached, Unix seconds")


class QueryResponse(BaseModel):
    query: str
    response: str
    cache_hit: bool
    cached_data: CachedData | None = Field(description="Null on a miss")
    embedding_dimension: int
    processing_time: float = Field(description="Seconds spent answering")
    # Only in answers given under the verified policy (semcache extension): the original
    # contract's answer has exactly the fields above.
    policy: str | None = Field(None, description='"verified" (present under that policy only)')
    explored: bool | None = Field(
        None,
        description="Verified policy only: a stored answer was near but not sure enough; the "
        "LLM answered and the stored one was judged against it",
    )


class VerifierBand(BaseModel):
    """Where the verifier (a cross-encoder) is asked about candidates."""

    model: str
    low: float = Field(description="Similarity below which a candidate is a miss")
    high: float = Field(description="Similarity from which a candidate is a hit without asking")
    threshold: float = Field(description="Verifier probability for a hit in between")
    source: str = Field(description='"operator", "calibrated" or "default"')


class HealthResponse(BaseModel):
    status: str = Field(description='"healthy", or "unhealthy" (with HTTP 503)')
    timestamp: float = Field(description="Unix seconds")
    cache_server: str = Field(description='"up" or "down"')
    embedder: str = Field(description='"up", "down", or "unknown" when the cache server is down')
    down: list[str] = Field(
        description='What is unreachable: "cache_server", "embedder", "store" (Redis)'
    )
    embedder_model: str | None = None
    embedding_dimension: int | None = Field(
        None, description="Dimension of the embedder's vectors (every answer reports it)"
    )
    similarity_threshold: float | None = Field(None, description="The default hit threshold")
    threshold_source: str | None = Field(
        None,
        description='Where it comes from: "operator" (settings), "calibrated" (the model\'s '
        'manifest, make calibrate) or "default" (0.85)',
    )
    fallback_model: bool | None = Field(None, description="The packaged fallback model serves")
    demo_responder: bool | None = Field(None, description="Misses are answered by the demo")
    verifier: VerifierBand | None = Field(
        None, description="The verifier in force (make finetune-verifier); null when none"
    )


class StatsResponse(BaseModel):
    cache_size: int
    max_cache_size: int
    current_threshold: float
    threshold_source: str = Field(description='"operator", "calibrated" or "default"')
    hits: int
    misses: int
    hit_rate: float
    evictions: int
    expirations: int
    lookup_p50_ms: float
    lookup_p99_ms: float
    reported_wrong: int = Field(0, description="Served hits reported wrong (feedback)")
    reported_right: int = Field(0, description="Served hits reported right (feedback)")
    policy: str = Field("threshold", description="The cache's hit policy")
    max_error_rate: float = Field(0.0, description="Its error rate bound (verified policy)")
    error_accounting: str = Field("hits", description="What the bound bounds: hits or requests")
    verified_hits: int = Field(0, description="Semantic hits the verified policy served")
    explorations: int = Field(0, description="Near candidates judged against a fresh answer")
    explorations_wrong: int = Field(0, description="... whose stored answer was judged wrong")
    learned: LearnedThresholds | None = Field(None, description="What it has learned")
    lookup_p95_ms: float = Field(0.0, description="Look-up latency, 95th percentile")
    savings: Savings | None = Field(None, description="What the cache's hits saved")


@router.post("/query", response_model=QueryResponse)
async def query(
    body: QueryRequest, http_request: Request, cache_id: CacheId = "default"
) -> Response:
    """Answers from the cache when a question meaning the same was answered before; else
    asks the LLM and caches the answer."""
    # The hot path: the stub and settings are read off app.state rather than injected (two
    # dependency resolutions a request), and the answer is rendered straight from the reply
    # (gateway/fast_json.py) instead of through a pydantic model: measured in
    # docs/benchmarks.md ("levers").
    started = time.perf_counter()
    state = http_request.app.state
    cache: CacheServiceAsyncStub = state.cache
    settings: GatewaySettings = state.settings
    request = pb.QueryRequest(cache_id=cache_id, query=body.query, use_cache=body.use_cache)
    if body.similarity_threshold is not None:
        request.similarity_threshold = body.similarity_threshold
    request.policy = policy_pb(body.policy)
    request.error_accounting = accounting_pb(body.error_accounting)
    if body.max_error_rate is not None:
        request.max_error_rate = body.max_error_rate
    reply = await call(
        cache.Query(request, timeout=settings.request_timeout_s, metadata=outgoing_metadata())
    )
    if body.use_cache:
        (LOOKUP_HIT if reply.cache_hit else LOOKUP_MISS).inc()
    return json_response(query_answer(reply, time.perf_counter() - started))


@router.get("/health", response_model=HealthResponse, responses={503: {"model": HealthResponse}})
async def health(cache: CacheStub, settings: Settings) -> JSONResponse:
    """200 and "healthy" when the cache server and an embedder answer; else 503, naming what
    is down."""

    result = HealthResponse(
        status="healthy", timestamp=time.time(), cache_server="up", embedder="up", down=[]
    )
    try:
        info = await cache.GetServerInfo(pb.GetServerInfoRequest(), timeout=3)
    except grpc.aio.AioRpcError:
        result.cache_server, result.embedder = "down", "unknown"
        result.down = ["cache_server"]
    else:
        result.embedder_model = info.embedder_model_id or None
        result.embedding_dimension = info.embedding_dimension or None
        result.similarity_threshold = info.default_threshold
        result.threshold_source = info.threshold_source or None
        result.fallback_model = info.embedder_fallback_model
        result.demo_responder = info.demo_responder
        if info.HasField("verifier"):
            v = info.verifier
            result.verifier = VerifierBand(
                model=v.model_id, low=v.low, high=v.high, threshold=v.threshold, source=v.source
            )
        if not info.embedder_serving:
            result.embedder = "down"
            result.down.append("embedder")
        if not info.store_serving:
            result.down.append("store")
    if result.down:
        result.status = "unhealthy"
    return JSONResponse(result.model_dump(), status_code=503 if result.down else 200)


@router.get("/cache/stats", response_model=StatsResponse)
async def stats(
    cache: CacheStub, settings: Settings, cache_id: CacheId = "default"
) -> StatsResponse:
    """Size, limits, threshold, hit counters and look-up latency of one cache."""
    reply = await call(
        cache.GetStats(
            pb.GetStatsRequest(cache_id=cache_id),
            timeout=settings.request_timeout_s,
            metadata=outgoing_metadata(),
        )
    )
    return StatsResponse(
        cache_size=reply.cache_size,
        max_cache_size=reply.max_cache_size,
        current_threshold=reply.current_threshold,
        threshold_source=reply.threshold_source,
        hits=reply.hits,
        misses=reply.misses,
        hit_rate=reply.hit_rate,
        evictions=reply.evictions,
        expirations=reply.expirations,
        lookup_p50_ms=reply.lookup_p50_ms,
        lookup_p99_ms=reply.lookup_p99_ms,
        reported_wrong=reply.reported_wrong,
        reported_right=reply.reported_right,
        policy=reply.policy or "threshold",
        max_error_rate=reply.max_error_rate,
        error_accounting=reply.error_accounting or "hits",
        verified_hits=reply.verified_hits,
        explorations=reply.explorations,
        explorations_wrong=reply.explorations_wrong,
        learned=LearnedThresholds.of(reply.learned) if reply.HasField("learned") else None,
        lookup_p95_ms=reply.lookup_p95_ms,
        savings=Savings.of(reply.savings),
    )
