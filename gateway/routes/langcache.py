"""The LangCache-compatible API (/v1/caches/{cacheId}/...), so that applications written
against the official `langcache` SDK can point its server_url here.

Field names, status codes and error bodies follow the LangCache API: camelCase JSON, 201 on
set, 204 on delete-by-id and flush, 200 with `deletedEntriesCount` on delete-by-attributes,
RFC 7807 errors with LangCache's `type` URIs.
"""

from __future__ import annotations

import logging
from enum import StrEnum
from typing import TYPE_CHECKING, Annotated, Self

from fastapi import APIRouter, Path, Request, Response
from pydantic import BaseModel, ConfigDict, Field, model_validator

from gateway.fast_json import json_response, search_answer
from gateway.metrics import LOOKUPS
from gateway.problems import LANGCACHE
from gateway.routes.deps import CACHE_ID_PATTERN, CacheStub, Settings, call
from gateway.routes.policy_fields import (
    ACCOUNTING_DESCRIPTION,
    ERROR_RATE_DESCRIPTION,
    POLICY_DESCRIPTION,
    Accounting,
    PolicyName,
    accounting_pb,
    policy_pb,
)
from gateway.settings import GatewaySettings
from protos.semcache.cache.v1 import cache_pb2 as pb
from service_runtime.logs import outgoing_metadata

if TYPE_CHECKING:
    from protos.semcache.cache.v1.cache_pb2_grpc import CacheServiceAsyncStub

log = logging.getLogger("gateway")

router = APIRouter(
    prefix="/v1/caches/{cacheId}", tags=["LangCache-compatible API"], responses=LANGCACHE
)

CacheIdPath = Annotated[
    str,
    Path(
        alias="cacheId",
        description="The cache (namespace)",
        pattern=CACHE_ID_PATTERN,
    ),
]
EntryIdPath = Annotated[
    str,
    Path(
        alias="entryId",
        description="An entry id as Set returned it (32 lowercase hex characters); any other "
        "id is simply not found",
        max_length=256,
    ),
]
Attributes = Annotated[
    dict[str, str],
    Field(description="Attributes (string to string) that scope the entry or the look-up"),
]


class SearchStrategy(StrEnum):
    EXACT = "exact"
    SEMANTIC = "semantic"


_TO_PB = {
    SearchStrategy.EXACT: pb.SEARCH_STRATEGY_EXACT,
    SearchStrategy.SEMANTIC: pb.SEARCH_STRATEGY_SEMANTIC,
}
LOOKUP_HIT, LOOKUP_MISS = LOOKUPS.labels("hit"), LOOKUPS.labels("miss")


class Camel(BaseModel):
    """camelCase on the wire. Fields this API does not know (a newer SDK's) are ignored and
    logged, so that a client upgrade never breaks every call."""

    model_config = ConfigDict(populate_by_name=True, extra="allow")

    @model_validator(mode="after")
    def _drop_unknown_fields(self) -> Self:
        extra = self.__pydantic_extra__
        if extra:
            log.info(
                "ignoring unknown fields of %s: %s", type(self).__name__, ", ".join(sorted(extra))
            )
            extra.clear()
        return self


class SetRequest(Camel):
    prompt: str = Field(min_length=1)
    response: str = Field(min_length=1)
    attributes: Attributes = Field(default_factory=dict)
    ttl_millis: int | None = Field(
        None, alias="ttlMillis", gt=0, description="Time to live, milliseconds"
    )


class SetResponse(Camel):
    entry_id: str = Field(alias="entryId")


class SearchRequest(Camel):
    prompt: str = Field(min_length=1)
    similarity_threshold: float | None = Field(
        None,
        alias="similarityThreshold",
        ge=0.0,
        le=1.0,
        description="Minimum cosine similarity (higher is stricter)",
    )
    search_strategies: list[SearchStrategy] | None = Field(
        None, alias="searchStrategies", description="Tried in order; default [semantic]"
    )
    attributes: Attributes = Field(default_factory=dict)
    max_results: int = Field(1, alias="maxResults", ge=1, le=100)
    policy: PolicyName | None = Field(None, description=POLICY_DESCRIPTION)
    max_error_rate: float | None = Field(
        None, alias="maxErrorRate", gt=0.0, le=0.5, description=ERROR_RATE_DESCRIPTION
    )
    error_accounting: Accounting | None = Field(
        None, alias="errorAccounting", description=ACCOUNTING_DESCRIPTION
    )


class CacheEntry(Camel):
    id: str
    prompt: str
    response: str
    attributes: dict[str, str]
    similarity: float = Field(description="Cosine similarity to the prompt searched")
    search_strategy: SearchStrategy = Field(alias="searchStrategy")


class SearchResponse(Camel):
    data: list[CacheEntry]


class DeleteQueryRequest(Camel):
    attributes: Attributes = Field(
        default_factory=dict, description="Entries carrying all of these go; none: all entries"
    )


class DeleteQueryResponse(Camel):
    deleted_entries_count: int = Field(alias="deletedEntriesCount")


@router.post("/entries", status_code=201, response_model=SetResponse, response_model_by_alias=True)
async def set_entry(
    body: SetRequest, cache: CacheStub, settings: Settings, cache_id: CacheIdPath
) -> SetResponse:
    """Stores a prompt and its response."""
    request = pb.SetRequest(
        cache_id=cache_id, prompt=body.prompt, response=body.response, attributes=body.attributes
    )
    if body.ttl_millis is not None:
        request.ttl_seconds = body.ttl_millis / 1000.0
    reply = await call(
        cache.Set(request, timeout=settings.request_timeout_s, metadata=outgoing_metadata())
    )
    return SetResponse(entry_id=reply.entry_id)


@router.post("/entries/search", response_model=SearchResponse, response_model_by_alias=True)
async def search(body: SearchRequest, http_request: Request, cache_id: CacheIdPath) -> Response:
    """Entries whose prompt means the same as `prompt`, best first."""
    # A hot path, served like POST /query (gateway/fast_json.py): no injected dependencies,
    # the answer rendered straight from the reply in SearchResponse's shape.
    state = http_request.app.state
    reply = await search_reply(body, state.cache, state.settings, cache_id)
    return json_response(search_answer(reply))


async def search_reply(
    body: SearchRequest, cache: CacheServiceAsyncStub, settings: GatewaySettings, cache_id: str
) -> pb.SearchResponse:
    """The cache server's answer to a LangCache search (counted as a hit or a miss)."""
    request = pb.SearchRequest(
        cache_id=cache_id,
        prompt=body.prompt,
        max_results=body.max_results,
        attributes=body.attributes,
        strategies=[_TO_PB[s] for s in body.search_strategies or []],
        policy=policy_pb(body.policy),
        error_accounting=accounting_pb(body.error_accounting),
    )
    if body.similarity_threshold is not None:
        request.similarity_threshold = body.similarity_threshold
    if body.max_error_rate is not None:
        request.max_error_rate = body.max_error_rate
    reply = await call(
        cache.Search(request, timeout=settings.request_timeout_s, metadata=outgoing_metadata())
    )
    (LOOKUP_HIT if reply.hits else LOOKUP_MISS).inc()
    return reply


@router.delete("/entries/{entryId}", status_code=204, response_class=Response)
async def delete_entry(
    cache: CacheStub, settings: Settings, cache_id: CacheIdPath, entry_id: EntryIdPath
) -> Response:
    """Deletes one entry; 404 when there is none with that id."""
    await call(
        cache.Delete(
            pb.DeleteRequest(cache_id=cache_id, entry_id=entry_id),
            timeout=settings.request_timeout_s,
            metadata=outgoing_metadata(),
        )
    )
    return Response(status_code=204)


@router.delete("/entries", response_model=DeleteQueryResponse, response_model_by_alias=True)
async def delete_entries(
    body: DeleteQueryRequest, cache: CacheStub, settings: Settings, cache_id: CacheIdPath
) -> DeleteQueryResponse:
    """Deletes the entries that carry all the given attributes (all entries when none)."""
    reply = await call(
        cache.DeleteEntries(
            pb.DeleteEntriesRequest(cache_id=cache_id, attributes=body.attributes),
            timeout=settings.request_timeout_s,
            metadata=outgoing_metadata(),
        )
    )
    return DeleteQueryResponse(deleted_entries_count=reply.deleted_count)


@router.post("/flush", status_code=204, response_class=Response)
async def flush(cache: CacheStub, settings: Settings, cache_id: CacheIdPath) -> Response:
    """Deletes every entry of the cache."""
    await call(
        cache.Flush(
            pb.FlushRequest(cache_id=cache_id),
            timeout=settings.request_timeout_s,
            metadata=outgoing_metadata(),
        )
    )
    return Response(status_code=204)
