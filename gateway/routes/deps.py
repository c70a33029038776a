"""Dependencies injected into routes."""

from __future__ import annotations

from collections.abc import Awaitable
from typing import TYPE_CHECKING, Annotated, TypeVar

import grpc
from fastapi import Depends, Request

from gateway.errors import CacheCallError
from gateway.settings import GatewaySettings
from protos.semcache.cache.v1 import cache_pb2_grpc as pb_grpc
from service_runtime import cache_ids

if TYPE_CHECKING:  # the generated .pyi types the grpc.aio flavour of the stub separately
    from protos.semcache.cache.v1.cache_pb2_grpc import CacheServiceAsyncStub as CacheClient
else:
    CacheClient = pb_grpc.CacheServiceStub

T = TypeVar("T")

# The cache server's rule for cache ids, checked here too so that a bad id is a 400/422 from
# the schema, before any gRPC call.
CACHE_ID_PATTERN = cache_ids.CACHE_ID_PATTERN


async def _cache(request: Request) -> CacheClient:
    stub: CacheClient = request.app.state.cache
    return stub


async def _settings(request: Request) -> GatewaySettings:
    settings: GatewaySettings = request.app.state.settings
    return settings


CacheStub = Annotated[CacheClient, Depends(_cache)]
Settings = Annotated[GatewaySettings, Depends(_settings)]


async def call(rpc: Awaitable[T]) -> T:
    """Awaits a gRPC call; a failure is answered by the app's handler of CacheCallError, in
    the terms of the API the request came through (gateway.errors)."""
    try:
        return await rpc
    except grpc.aio.AioRpcError as error:
        raise CacheCallError(error) from error
