"""Feedback on served answers, a semcache extension beside the LangCache-compatible API:
`POST /v1/caches/{cacheId}/entries/{entryId}/feedback`. Same conventions (camelCase JSON, RFC
7807 errors with LangCache's `type` URIs)."""

from __future__ import annotations

from fastapi import APIRouter, Request
from pydantic import Field

from gateway.problems import LANGCACHE
from gateway.routes.deps import CacheStub, Settings, call
from gateway.routes.langcache import CacheIdPath, Camel, EntryIdPath
from protos.semcache.cache.v1 import cache_pb2 as pb
from service_runtime.logs import outgoing_metadata

router = APIRouter(
    prefix="/v1/caches/{cacheId}", tags=["Feedback (semcache extension)"], responses=LANGCACHE
)


class FeedbackRequest(Camel):
    prompt: str = Field(
        min_length=1, description="The prompt your application asked and got this entry for"
    )
    correct: bool = Field(description="Whether the entry's answer was right for that prompt")


class FeedbackResponse(Camel):
    feedback_id: str = Field(alias="feedbackId")
    entry_id: str = Field(alias="entryId")
    entry_prompt: str = Field(alias="entryPrompt", description="The prompt the entry stores")
    correct: bool
    served_for_prompt: bool = Field(
        alias="servedForPrompt",
        description="Whether the entry may still be served for this prompt (false once "
        "reported wrong, until reported right or its answer changes)",
    )
    duplicate: bool = Field(
        False,
        description="You gave this verdict on this answer for this prompt before: "
        "nothing changed (a report counts once)",
    )
    learned: bool = Field(
        False,
        description="The report is evidence for the verified hit policy: the cache served "
        "this answer for this prompt, and you had not reported on it before",
    )


@router.post(
    "/entries/{entryId}/feedback",
    status_code=201,
    response_model=FeedbackResponse,
    response_model_by_alias=True,
)
async def submit_feedback(
    body: FeedbackRequest,
    request: Request,
    cache: CacheStub,
    settings: Settings,
    cache_id: CacheIdPath,
    entry_id: EntryIdPath,
) -> FeedbackResponse:
    """Says whether an answer served from this entry was right for `prompt`. Kept for
    `make feedback-export` (training data); a wrong one stops the entry being served for that
    prompt. 404 when the entry is gone."""
    reply = await call(
        cache.SubmitFeedback(
            pb.SubmitFeedbackRequest(
                cache_id=cache_id,
                entry_id=entry_id,
                prompt=body.prompt,
                correct=body.correct,
                reporter=reporter_of(request),
            ),
            timeout=settings.request_timeout_s,
            metadata=outgoing_metadata(),
        )
    )
    return FeedbackResponse(
        feedback_id=reply.feedback_id,
        entry_id=reply.entry_id,
        entry_prompt=reply.entry_prompt,
        correct=reply.correct,
        served_for_prompt=reply.served_for_prompt,
        duplicate=reply.duplicate,
        learned=reply.learned,
    )


def reporter_of(request: Request) -> str:
    """Who reports, as far as the gateway can vouch for it. With keys, nothing: the cache
    server names the reporter by the key it checked. Without, each client address is one
    reporter. Never a header or a token nobody checked (made-up tokens would make one client
    many reporters)."""
    if request.app.state.keys.keyed:
        return ""
    client = request.client
    return f"ip:{client.host if client is not None else 'unknown'}"
