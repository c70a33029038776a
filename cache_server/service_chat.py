"""The Chat RPC: ChatCompletions' events as protobuf, its failures as gRPC statuses."""

from __future__ import annotations

import json
import logging
import time
from collections.abc import AsyncIterator
from typing import Any

import grpc

from cache_server import metrics
from cache_server.chat import (
    ChatCall,
    ChatCompletions,
    ChatEvent,
    Chunk,
    Completion,
    Failed,
    Routed,
)
from cache_server.entries import InvalidInputError
from cache_server.entry_pb import STRATEGY_TO_PB, entry_pb
from cache_server.lookup import Hit
from cache_server.statuses import abort_failed, elapsed_ms
from protos.semcache.cache.v1 import cache_pb2 as pb
from service_runtime.chat_route import CHAT_SCOPE_KEY, UNCACHEABLE_KEY

log = logging.getLogger(__name__)
Context = grpc.aio.ServicerContext[Any, Any]


def chat_call(request: pb.ChatRequest) -> ChatCall:
    try:
        body = json.loads(request.body_json)
    except ValueError as exc:
        raise InvalidInputError(f"body_json is not JSON: {exc}") from exc
    if not isinstance(body, dict):
        raise InvalidInputError("body_json must be a JSON object (a chat-completions request)")
    return ChatCall(
        cache_id=request.cache_id,
        prompt=request.prompt,
        attributes=dict(request.attributes),
        body=body,
        stream=request.stream,
        cacheable=request.cacheable,
        use_cache=request.use_cache if request.HasField("use_cache") else True,
        threshold=request.similarity_threshold
        if request.HasField("similarity_threshold")
        else None,
        ttl_s=request.ttl_seconds if request.HasField("ttl_seconds") else None,
    )


def event_pb(event: ChatEvent) -> pb.ChatEvent:
    assert not isinstance(event, Routed)  # sent as initial metadata
    if isinstance(event, Hit):
        hit = pb.ChatHit(
            entry=entry_pb(event),
            similarity=event.similarity,
            strategy=STRATEGY_TO_PB[event.strategy],
        )
        return pb.ChatEvent(hit=hit)
    if isinstance(event, Chunk):
        return pb.ChatEvent(chunk_json=event.json)
    if isinstance(event, Completion):
        return pb.ChatEvent(completion_json=event.json)
    if isinstance(event, Failed):
        failure = pb.ChatUpstreamError(status=event.status, body=event.body, message=event.message)
        return pb.ChatEvent(upstream_error=failure)
    return pb.ChatEvent(stored=pb.ChatStored(entry_id=event.entry_id))


async def chat_events(
    chat: ChatCompletions, request: pb.ChatRequest, context: Context
) -> AsyncIterator[pb.ChatEvent]:
    started = time.perf_counter()
    try:
        async for event in chat.run(chat_call(request)):
            if isinstance(event, Routed):  # how the request is handled, as initial metadata
                metadata = [(CHAT_SCOPE_KEY, event.chat_scope)] if event.chat_scope else []
                if event.uncacheable is not None:
                    metadata.append((UNCACHEABLE_KEY, event.uncacheable))
                await context.send_initial_metadata(metadata)
                continue
            yield event_pb(event)
    except Exception as exc:
        await abort_failed("Chat", exc, context, started)
    metrics.RPCS.labels("Chat", "OK").inc()
    log.info("Chat OK in %.1f ms", elapsed_ms(started))
