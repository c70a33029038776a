"""POST /v1/chat/completions: the OpenAI chat-completions API, with caching.

`OpenAI(base_url="http://localhost:8000/v1", api_key=...)` gets semantic caching with no other
change. The cache server does the work (the Chat RPC: look-up, one upstream call per key,
storing); this route translates: scope and steering in (gateway.openai_wire), a completion or
a stream of server-sent chunks out, with `X-Semcache-*` headers saying what happened, and
errors in OpenAI's shape (gateway.errors renders every refusal on this path so).
"""

from __future__ import annotations

import json
import logging
from collections.abc import AsyncIterator
from typing import Any

import grpc
from fastapi import APIRouter, Request
from fastapi.responses import JSONResponse, Response, StreamingResponse
from pydantic import BaseModel, ConfigDict, Field

from gateway import openai_wire as wire
from gateway.errors import CacheCallError, ProblemError, answered
from gateway.routes.deps import CACHE_ID_PATTERN, CacheStub, Settings
from protos.semcache.cache.v1 import cache_pb2 as pb
from service_runtime.chat_route import CHAT_SCOPE_KEY, UNCACHEABLE_KEY
from service_runtime.logs import outgoing_metadata, request_id

log = logging.getLogger("gateway")
router = APIRouter(tags=["OpenAI-compatible"])


class ChatMessage(BaseModel):
    model_config = ConfigDict(extra="allow")
    role: str = Field(description="system, developer, user, assistant, tool")
    content: str | list[dict[str, Any]] | None = Field(
        None, description="Text, or content parts; the last user message's text is the key"
    )


class SemcacheOptions(BaseModel):
    """`extra_body={"semcache": {...}}`; the `X-Semcache-*` headers of the same names win."""

    model_config = ConfigDict(extra="forbid")
    cache_id: str | None = Field(
        None, pattern=CACHE_ID_PATTERN, description="The cache to use (default: default)"
    )
    threshold: float | None = Field(None, ge=0, le=1, description="Similarity for a hit")
    bypass: bool | None = Field(None, description="Skip the look-up; the answer is stored")
    ttl_seconds: float | None = Field(None, ge=0, description="Time to live of a stored answer")
    attributes: dict[str, str] | None = Field(None, description="More scope of your own")


class ChatCompletionRequest(BaseModel):
    """OpenAI's chat-completions request: every field of it is accepted and passed upstream."""

    model_config = ConfigDict(extra="allow")
    model: str
    messages: list[ChatMessage] = Field(min_length=1)
    stream: bool | None = False
    semcache: SemcacheOptions | None = None


class OpenAIError(BaseModel):
    message: str
    type: str = Field(description="invalid_request_error, authentication_error, ...")
    param: str | None = None
    code: str | None = None


class OpenAIErrorResponse(BaseModel):
    """Every error of this route, in OpenAI's shape (the SDK raises its own exceptions)."""

    error: OpenAIError


ERRORS: dict[int | str, str] = {
    400: "Invalid request, or steering out of range",
    401: "Missing or wrong API key",
    403: "The key does not hold this cache, may not pass uncached requests through, or the "
    "model is not offered here",
    413: "Request body too large",
    415: "Not JSON",
    429: "The key's rate limit or daily upstream budget, or one cache more than max_caches (or "
    "the upstream's own 429)",
    500: "A bug in the gateway",
    502: "The upstream LLM could not be reached, failed, broke off, or refused the gateway's "
    "credentials",
    503: "The cache server or the embedder is unavailable",
    504: "The upstream LLM or the cache server timed out",
}


def _headers(**values: str | None) -> dict[str, str]:
    return {
        f"X-Semcache-{name.replace('_', '-').title()}": value
        for name, value in values.items()
        if value is not None
    }


@router.post(
    "/v1/chat/completions",
    summary="Chat completion, served from the cache when it can be",
    response_description="A chat.completion, or (stream) server-sent chat.completion.chunk "
    "events ending with [DONE]",
    responses={
        200: {"content": {"text/event-stream": {}}},
        **{
            status: {"model": OpenAIErrorResponse, "description": what}
            for status, what in ERRORS.items()
        },
    },
)
async def chat_completions(
    body: ChatCompletionRequest, request: Request, cache: CacheStub, settings: Settings
) -> Response:
    raw: dict[str, Any] = await request.json()
    try:
        # JSON may carry lone surrogates (\udc00), which no UTF-8 text can hold.
        json.dumps(raw, ensure_ascii=False).encode()
    except UnicodeEncodeError:
        raise ProblemError(400, "the request holds text that is not valid Unicode") from None
    try:
        steer = wire.steering(request.headers, raw)
        plan = wire.plan(raw)
    except wire.ChatRequestError as exc:
        raise ProblemError(400, str(exc), fields=[{"field": exc.param or "body"}]) from exc
    # The cache server reads the key, the scope and whether it can be cached from the body.
    message = pb.ChatRequest(
        cache_id=steer.cache_id,
        attributes=steer.attributes,
        cacheable=True,
        body_json=json.dumps(plan.upstream_body),
        stream=plan.stream,
        use_cache=not steer.bypass,
    )
    if steer.threshold is not None:
        message.similarity_threshold = steer.threshold
    if steer.ttl_seconds is not None:
        message.ttl_seconds = steer.ttl_seconds
    call = cache.Chat(message, metadata=outgoing_metadata(), timeout=settings.chat_timeout_s)
    events = aiter(call)
    try:
        first: pb.ChatEvent = await anext(events)
        routed = dict(await call.initial_metadata() or ())
    except grpc.aio.AioRpcError as error:
        raise CacheCallError(error) from error
    uncacheable = routed.get(UNCACHEABLE_KEY)
    outcome = "uncacheable" if uncacheable else "bypass" if steer.bypass else "miss"
    headers = _headers(
        cache=outcome,
        cache_id=steer.cache_id or "default",
        chat_scope=str(routed[CHAT_SCOPE_KEY]) if CHAT_SCOPE_KEY in routed else None,
    )
    if uncacheable:
        headers["X-Semcache-Uncacheable"] = str(uncacheable)
    kind = first.WhichOneof("event")
    if kind == "hit":
        return _hit(first.hit, body, raw, headers, stream=plan.stream)
    if kind == "upstream_error":
        return _upstream_error(first.upstream_error, headers)
    if plan.stream:
        return StreamingResponse(
            _relay(first, events, call), media_type="text/event-stream", headers=headers
        )
    completion = first.completion_json
    async for event in events:  # `stored` follows the completion
        if event.WhichOneof("event") == "stored" and event.stored.entry_id:
            headers["X-Semcache-Entry-Id"] = event.stored.entry_id
    return Response(completion, media_type="application/json", headers=headers)


def _hit(
    hit: pb.ChatHit,
    body: ChatCompletionRequest,
    raw: dict[str, Any],
    headers: dict[str, str],
    *,
    stream: bool,
) -> Response:
    strategy = "exact" if hit.strategy == pb.SEARCH_STRATEGY_EXACT else "semantic"
    headers = {
        **headers,
        **_headers(
            cache="hit",
            similarity=f"{hit.similarity:.4f}",
            strategy=strategy,
            entry_id=hit.entry.id,
        ),
    }
    if not stream:
        return JSONResponse(wire.completion(body.model, hit.entry.response), headers=headers)
    options = raw.get("stream_options")
    usage = isinstance(options, dict) and bool(options.get("include_usage"))

    async def replay() -> AsyncIterator[bytes]:
        for chunk in wire.chunks(body.model, hit.entry.response, include_usage=usage):
            yield wire.sse(json.dumps(chunk))
        yield wire.DONE

    return StreamingResponse(replay(), media_type="text/event-stream", headers=headers)


def _upstream_error(error: pb.ChatUpstreamError, headers: dict[str, str]) -> JSONResponse:
    if not error.status:
        log.warning("chat completion: upstream failed: %s", error.message)
    status, content = _upstream_failure(error)
    return JSONResponse(content, status_code=status, headers=headers)


def _upstream_failure(error: pb.ChatUpstreamError) -> tuple[int, dict[str, Any]]:
    """The answer to an upstream failure, as the cache server worded it for the client (it
    owns the upstream call: an error in OpenAI's shape with the status to answer, or status 0
    when the upstream could not be reached, timed out or broke off), in OpenAI's four fields."""
    status = error.status or (504 if "timed out" in error.message else 502)
    try:
        given = json.loads(error.body) if error.body else None
    except ValueError:
        given = None
    fields = given.get("error") if isinstance(given, dict) else None
    if not isinstance(fields, dict) or not isinstance(fields.get("message"), str):
        fields = wire.error_body(status, error.message, code="upstream_error")["error"]
    content = {"error": {key: fields.get(key) for key in ("message", "type", "param", "code")}}
    answered(status, fields["message"])
    return status, content


async def _relay(
    first: pb.ChatEvent,
    events: AsyncIterator[pb.ChatEvent],
    call: grpc.aio.UnaryStreamCall[pb.ChatRequest, pb.ChatEvent],
) -> AsyncIterator[bytes]:
    """The upstream's chunks as they arrive; an upstream or cache-server failure after the
    stream began ends it with an OpenAI error event (the SDK raises it), never [DONE]."""
    event = first
    try:
        while True:
            kind = event.WhichOneof("event")
            if kind == "chunk_json":
                yield wire.sse(event.chunk_json)
            elif kind == "upstream_error":
                log.warning(
                    "chat completion: upstream failed mid-stream: %s", event.upstream_error.message
                )
                _, content = _upstream_failure(event.upstream_error)
                yield wire.sse(json.dumps(content))
                return
            elif kind == "stored":
                yield wire.DONE
                return
            try:
                event = await anext(events)
            except StopAsyncIteration:
                yield wire.DONE
                return
    except grpc.aio.AioRpcError as error:
        log.warning("chat completion stream broke off: %s %s", error.code().name, error.details())
        content = wire.error_body(
            503,
            f"the cache server stopped answering mid-stream (request id {request_id.get()})",
            code="cache_unavailable",
        )
        yield wire.sse(json.dumps(content))
    finally:
        call.cancel()  # a client that left stops the call (and, alone, the upstream's)
