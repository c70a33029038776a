"""LangCache conversational search: `POST /v1/caches/{cacheId}/conversations/search`.

The prompt is first rewritten into a standalone question using `context`, the conversation's
earlier questions (conversational query reformulation, gateway.reformulation), then searched
exactly as `POST .../entries/search` searches; the answer says which question was searched
(`actualPrompt`). A rewrite costs one upstream LLM call, once: it is kept in the cache
server's store (cache `__reformulations__`, scoped by the application's cache id) and found
again by exact match of the whole reformulation prompt, so a repeat asks no LLM, through any
gateway, after any restart. No context, or no upstream LLM (the cache server's demo
responder): the prompt is searched as it is.
"""

from __future__ import annotations

import contextlib
import logging
from enum import StrEnum
from typing import TYPE_CHECKING, Annotated

import grpc
from fastapi import APIRouter, Response
from pydantic import AfterValidator, Field, StringConstraints, ValidationInfo, field_validator

from gateway.errors import CacheCallError, ProblemError
from gateway.fast_json import search_answer
from gateway.problems import LANGCACHE
from gateway.reformulation import (
    MAX_CONTEXT_ITEMS,
    MAX_PROMPT_CHARS,
    REFORMULATION_CACHE_ID,
    SCOPE_ATTRIBUTE,
    reformulation_prompt,
    standalone_question,
)
from gateway.routes.deps import CacheStub, Settings, call
from gateway.routes.langcache import (
    CacheEntry,
    CacheIdPath,
    Camel,
    SearchRequest,
    SearchResponse,
    search_reply,
)
from gateway.settings import GatewaySettings
from protos.semcache.cache.v1 import cache_pb2 as pb
from service_runtime.logs import outgoing_metadata

if TYPE_CHECKING:
    from protos.semcache.cache.v1.cache_pb2_grpc import CacheServiceAsyncStub as CacheClient

log = logging.getLogger("gateway")

REFORMULATION_HEADER = "X-Semcache-Reformulation"


class Reformulation(StrEnum):
    """How `actualPrompt` was obtained (the X-Semcache-Reformulation response header)."""

    NONE = "none"  # no context: the prompt as it is
    CACHED = "cached"  # a rewrite kept from an earlier request
    UPSTREAM = "upstream"  # rewritten by the upstream LLM now (and kept)
    NO_LLM = "no-llm"  # no upstream LLM is configured: the prompt as it is


router = APIRouter(
    prefix="/v1/caches/{cacheId}", tags=["LangCache-compatible API"], responses=LANGCACHE
)


def _not_blank(value: str) -> str:
    if not value.strip():
        raise ValueError("blank: a question needs some text")
    return value


# The last question: searched as it is when there is no context, so the cache server's limit
# on a prompt applies, as on POST .../entries/search.
LastQuestion = Annotated[str, StringConstraints(min_length=1), AfterValidator(_not_blank)]
EarlierQuestion = Annotated[
    str, StringConstraints(min_length=1, max_length=MAX_PROMPT_CHARS), AfterValidator(_not_blank)
]


class ConversationalSearchRequest(SearchRequest):
    prompt: LastQuestion = Field(
        description="The last question, as the user asked it (maybe a follow-up)"
    )
    context: list[EarlierQuestion] | None = Field(
        None,
        max_length=MAX_CONTEXT_ITEMS,
        description="The conversation's earlier questions, oldest first; empty or absent: "
        f"the prompt is searched as it is. At most {MAX_CONTEXT_ITEMS}, and the "
        f"reformulation prompt they make with `prompt` at most {MAX_PROMPT_CHARS} characters",
    )

    @field_validator("context")
    @classmethod
    def _context_fits(cls, value: list[str] | None, info: ValidationInfo) -> list[str] | None:
        if not value:
            return value
        prompt = info.data.get("prompt")
        if isinstance(prompt, str):
            size = len(reformulation_prompt(value, prompt))
            if size > MAX_PROMPT_CHARS:
                raise ValueError(
                    f"the reformulation prompt of this context and prompt has {size} "
                    f"characters; the limit is {MAX_PROMPT_CHARS}: send fewer or shorter "
                    "earlier questions"
                )
        return value


class ConversationalSearchResponse(Camel):
    actual_prompt: str = Field(
        alias="actualPrompt",
        description="The question searched: the standalone rewrite of the prompt, or the "
        "prompt itself (no context, or no upstream LLM)",
    )
    data: list[CacheEntry] = Field(description="As POST .../entries/search answers, best first")


@router.post(
    "/conversations/search",
    response_model=ConversationalSearchResponse,
    response_model_by_alias=True,
    responses={
        200: {
            "headers": {
                REFORMULATION_HEADER: {
                    "description": "none (no context), cached (a kept rewrite), upstream "
                    "(rewritten by the LLM now), no-llm (no upstream LLM: the prompt as it is)",
                    "schema": {"type": "string", "enum": [r.value for r in Reformulation]},
                }
            }
        }
    },
)
async def conversational_search(
    body: ConversationalSearchRequest,
    response: Response,
    cache: CacheStub,
    settings: Settings,
    cache_id: CacheIdPath,
) -> ConversationalSearchResponse:
    """Rewrites `prompt` into a standalone question using `context` (the earlier questions,
    oldest first) through the upstream LLM, once per conversation (the rewrite is cached),
    then searches like POST .../entries/search. `actualPrompt` is the question searched."""
    question, how = await _standalone(cache, settings, cache_id, body.context or [], body.prompt)
    response.headers[REFORMULATION_HEADER] = how.value
    reply = await search_reply(
        body.model_copy(update={"prompt": question}), cache, settings, cache_id
    )
    found = SearchResponse.model_validate(search_answer(reply))
    return ConversationalSearchResponse(actual_prompt=question, data=found.data)


async def _standalone(
    cache: CacheClient,
    settings: GatewaySettings,
    cache_id: str,
    context: list[str],
    prompt: str,
) -> tuple[str, Reformulation]:
    """The question to search, and how it was obtained."""
    if not context:
        return prompt, Reformulation.NONE
    rpc = _Reformulations(cache, settings, cache_id)
    text = reformulation_prompt(context, prompt)
    try:
        kept = await rpc.kept(text)
        if kept is not None:
            answer, entry_id, how = kept.response, kept.id, Reformulation.CACHED
        elif await rpc.demo_responder():
            # No LLM to rewrite with (and the demo responder's text is no question).
            return prompt, Reformulation.NO_LLM
        else:
            answer, entry_id = await rpc.ask(text)
            how = Reformulation.UPSTREAM
    except CacheCallError as error:
        if error.error.code() is grpc.StatusCode.INVALID_ARGUMENT:
            # Only a cache server with a smaller prompt limit than the default gets here.
            detail = f"context: the cache server refused the reformulation prompt: {error}"
            raise ProblemError(
                400, detail, fields=[{"field": "context", "rule": "length", "message": detail}]
            ) from error
        raise
    question = standalone_question(answer)
    if question is None:
        await rpc.forget(entry_id)  # the next request asks again
        log.warning("the upstream LLM's rewrite held no usable question: %r", answer[:200])
        raise ProblemError(
            424, "the upstream LLM gave no usable standalone question; nothing was kept; retry"
        )
    return question, how


class _Reformulations:
    """The rewrites kept in the cache server's store: cache REFORMULATION_CACHE_ID, one entry
    per reformulation prompt (its key) and application cache (attribute SCOPE_ATTRIBUTE)."""

    def __init__(self, cache: CacheClient, settings: GatewaySettings, cache_id: str) -> None:
        self._cache = cache
        self._timeout = settings.request_timeout_s
        self._scope = {SCOPE_ATTRIBUTE: cache_id}

    async def kept(self, text: str) -> pb.Entry | None:
        """The rewrite kept for exactly this reformulation prompt, if any. Exact match only
        (no embedding, no threshold): another conversation's rewrite, however near its
        prompt, is never found."""
        reply = await call(
            self._cache.Search(
                pb.SearchRequest(
                    cache_id=REFORMULATION_CACHE_ID,
                    prompt=text,
                    max_results=1,
                    attributes=self._scope,
                    strategies=[pb.SEARCH_STRATEGY_EXACT],
                    policy=pb.HIT_POLICY_THRESHOLD,
                ),
                timeout=self._timeout,
                metadata=outgoing_metadata(),
            )
        )
        return reply.hits[0].entry if reply.hits else None

    async def demo_responder(self) -> bool:
        """Whether the cache server has no upstream LLM (its demo responder answers)."""
        info = await call(
            self._cache.GetServerInfo(
                pb.GetServerInfoRequest(), timeout=self._timeout, metadata=outgoing_metadata()
            )
        )
        return info.demo_responder

    async def ask(self, text: str) -> tuple[str, str]:
        """The upstream LLM's answer to the reformulation prompt and the entry that keeps it.
        The cache server asks once however many ask at the same time (single flight) and
        stores the answer; an upstream failure stores nothing."""
        reply = await call(
            self._cache.Query(
                pb.QueryRequest(
                    cache_id=REFORMULATION_CACHE_ID,
                    query=text,
                    use_cache=False,
                    attributes=self._scope,
                    policy=pb.HIT_POLICY_THRESHOLD,
                ),
                timeout=self._timeout,
                metadata=outgoing_metadata(),
            )
        )
        return reply.response, reply.entry_id

    async def forget(self, entry_id: str) -> None:
        with contextlib.suppress(CacheCallError):
            await call(
                self._cache.Delete(
                    pb.DeleteRequest(cache_id=REFORMULATION_CACHE_ID, entry_id=entry_id),
                    timeout=self._timeout,
                    metadata=outgoing_metadata(),
                )
            )
