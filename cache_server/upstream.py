"""The LLM asked on a miss: an OpenAI-compatible chat-completions API, or the demo responder.

Concurrent misses on the same prompt in the same scope call the upstream once (see
cache_server.single_flight).
"""

from __future__ import annotations

import contextlib
import json
import logging
import re
import time
import uuid
from collections.abc import AsyncIterator, Mapping
from dataclasses import dataclass
from typing import Any, Protocol

import httpx
from opentelemetry.trace import SpanKind

from cache_server.entries import AnswerCost
from cache_server.savings import cost_of
from cache_server.spending import Spending, usage_in
from service_runtime import tracing

log = logging.getLogger(__name__)


class UpstreamError(RuntimeError):
    """The upstream LLM failed or timed out; nothing was stored. The message is what a client
    is told, in fixed words (no address, no exception text); `detail` is what the log is told."""

    @property
    def detail(self) -> str:
        """The message and the cause it was raised from: its type, its text, the URL asked."""
        cause = self.__cause__
        if cause is None:
            return str(self)
        where = ""
        if isinstance(cause, httpx.RequestError):
            with contextlib.suppress(RuntimeError):  # no request attached
                where = f" ({cause.request.method} {cause.request.url})"
        return f"{self}: {type(cause).__name__}: {cause}{where}"


CREDENTIALS_REFUSED = "the upstream refused the gateway's credentials"
RATE_LIMITED = "the upstream LLM is rate limiting; retry later"
# The upstream's errors about the request it was sent (the caller's, on the chat route): passed
# on with their status and the upstream's own `error.message`, when it answered in OpenAI's
# shape. Any other error is the deployment's, not the caller's.
_ABOUT_THE_REQUEST = frozenset({400, 404, 413, 422})
_WORD = re.compile(r"[A-Za-z0-9_.\-\[\]]{1,100}")
_SECRET = re.compile(r"\bsk-|bearer ", re.IGNORECASE)


class UpstreamHTTPError(UpstreamError):
    """The upstream answered with an error status. What a client is told is decided here:
    `client_status`, the message and `client_body` (an error in OpenAI's shape). A 401 or 403
    (the operator's key refused) is a 502 that says so and no more; a 429 stays a 429; an error
    about the request (400, 404, 413, 422) keeps its status and the upstream's own message;
    any other is a 502. The upstream's `status` and `body` are for the log only (`detail`)."""

    def __init__(self, status: int, body: str) -> None:
        self.status = status
        self.body = body
        self.client_status, message, error = _client_view(status, body)
        self.client_body = json.dumps({"error": error})
        super().__init__(message)

    @property
    def detail(self) -> str:
        return f"{self}: the upstream answered HTTP {self.status}: {self.body[:4000]}"


def _client_view(status: int, body: str) -> tuple[int, str, dict[str, Any]]:
    """What a client is told of the upstream's error answer: status, message, error object."""
    if status in (401, 403):
        error = _error(CREDENTIALS_REFUSED, "server_error", "upstream_auth_failed")
        return 502, CREDENTIALS_REFUSED, error
    if status == 429:
        return 429, RATE_LIMITED, _error(RATE_LIMITED, "rate_limit_error", "rate_limit_exceeded")
    own = _own_error(body) if status in _ABOUT_THE_REQUEST else None
    if own is not None:
        return (
            status,
            f"the upstream LLM refused the request (HTTP {status}): {own['message']}",
            own,
        )
    what = "refused the request" if 400 <= status < 500 else "failed"
    message = f"the upstream LLM {what} (HTTP {status})"
    return 502, message, _error(message, "server_error", "upstream_error")


def _error(message: str, kind: str, code: str | None, param: str | None = None) -> dict[str, Any]:
    return {"message": message, "type": kind, "param": param, "code": code}


def _own_error(body: str) -> dict[str, Any] | None:
    """The upstream's error in OpenAI's shape, its message and short names only (none of the
    rest of its body); None when it has none, or when its message names a key."""
    try:
        parsed = json.loads(body)
    except ValueError:
        return None
    error = parsed.get("error") if isinstance(parsed, dict) else None
    message = error.get("message") if isinstance(error, dict) else None
    if not isinstance(message, str) or not message.strip() or _SECRET.search(message):
        return None
    assert isinstance(error, dict)

    def word(key: str) -> str | None:
        value = error.get(key)
        return value if isinstance(value, str) and _WORD.fullmatch(value) else None

    kind = word("type") or "invalid_request_error"
    return _error(message.strip()[:1000], kind, word("code"), word("param"))


def _call_attributes(upstream: str, model: str) -> dict[str, str] | None:
    """The span attributes of one call of the LLM (OpenTelemetry's GenAI conventions; never a
    prompt or an answer); None while traces are off."""
    if not tracing.enabled():
        return None
    return {
        "gen_ai.operation.name": "chat",
        "gen_ai.request.model": model,
        "semcache.upstream": upstream,
    }


class ChatUpstream(Protocol):
    """An upstream that takes whole OpenAI chat-completions requests (the chat route)."""

    async def chat(self, body: Mapping[str, Any]) -> str:
        """The upstream's answer to `body` (no stream), the JSON text as it sent it."""
        ...

    def chat_stream(self, body: Mapping[str, Any]) -> AsyncIterator[str]:
        """The JSON text of each `data:` line of the upstream's stream, until `[DONE]`."""
        ...


def last_user_text(body: Mapping[str, Any]) -> str:
    """The text of the last message when it is a user's (string or text parts), else ""."""
    messages = body.get("messages")
    if not isinstance(messages, list) or not messages or not isinstance(messages[-1], dict):
        return ""
    last = messages[-1]
    content = last.get("content")
    if last.get("role") != "user":
        return ""
    if isinstance(content, str):
        return content
    if isinstance(content, list):
        return "".join(
            part.get("text", "")
            for part in content
            if isinstance(part, dict) and part.get("type") == "text"
        )
    return ""


@dataclass(frozen=True)
class Completion:
    """An upstream answer to one prompt, and what producing it cost (None: not reported)."""

    text: str
    cost: AnswerCost | None


class Upstream(Protocol):
    kind: str  # "openai-compatible" or "demo"
    model: str

    async def complete(self, prompt: str) -> str: ...

    async def answer(self, prompt: str) -> Completion:
        """`complete`, with the call's cost: what the cache stores on a miss."""
        ...

    async def close(self) -> None: ...


class DemoResponder:
    """Answers without any LLM, so the stack runs out of the box. Clearly labelled."""

    kind = "demo"
    model = "demo-responder"

    async def complete(self, prompt: str) -> str:
        return self._answer(prompt)

    async def answer(self, prompt: str) -> Completion:
        return Completion(self._answer(prompt), None)  # no upstream was paid: no cost to save

    @staticmethod
    def _answer(prompt: str) -> str:
        attributes = _call_attributes("demo", "demo-responder")
        with tracing.span("chat demo-responder", attributes, kind=SpanKind.CLIENT):
            return (
                "[demo responder: no upstream LLM is configured, set CACHE_UPSTREAM_BASE_URL] "
                f"You asked: {prompt.strip()}"
            )

    async def chat(self, body: Mapping[str, Any]) -> str:
        return json.dumps(self._completion(body))

    async def chat_stream(self, body: Mapping[str, Any]) -> AsyncIterator[str]:
        completion = self._completion(body)
        text = completion["choices"][0]["message"]["content"]
        head = {k: completion[k] for k in ("id", "created", "model")}
        first = {"index": 0, "delta": {"role": "assistant", "content": ""}, "finish_reason": None}
        yield json.dumps({**head, "object": "chat.completion.chunk", "choices": [first]})
        words = text.split(" ")
        for i in range(0, len(words), 4):
            piece = " ".join(words[i : i + 4]) + (" " if i + 4 < len(words) else "")
            delta = {"index": 0, "delta": {"content": piece}, "finish_reason": None}
            yield json.dumps({**head, "object": "chat.completion.chunk", "choices": [delta]})
        last = {"index": 0, "delta": {}, "finish_reason": "stop"}
        yield json.dumps({**head, "object": "chat.completion.chunk", "choices": [last]})

    def _completion(self, body: Mapping[str, Any]) -> dict[str, Any]:
        text = self._answer(last_user_text(body))
        message = {"role": "assistant", "content": text}
        return {
            "id": f"chatcmpl-demo-{uuid.uuid4().hex}",
            "object": "chat.completion",
            "created": int(time.time()),
            "model": str(body.get("model") or self.model),
            "choices": [{"index": 0, "message": message, "finish_reason": "stop"}],
            "usage": {"prompt_tokens": 0, "completion_tokens": 0, "total_tokens": 0},
        }

    async def close(self) -> None:
        return None


class OpenAICompatibleUpstream:
    """POST {base_url}/chat/completions with one user message; returns the first choice."""

    kind = "openai-compatible"

    def __init__(
        self,
        base_url: str,
        model: str,
        *,
        api_key: str | None = None,
        timeout_s: float = 30.0,
        read_timeout_s: float = 600.0,
        max_tokens: int | None = None,
        spending: Spending | None = None,
    ) -> None:
        """`timeout_s` bounds connecting and sending; `read_timeout_s` the wait for the answer
        (a whole completion, or each chunk of a stream), which a long completion needs.
        `spending`: every call is checked against, and counted to, the caller's key."""
        self.model = model
        self._max_tokens = max_tokens
        self.spending = spending
        headers = {"Authorization": f"Bearer {api_key}"} if api_key else {}
        timeout = httpx.Timeout(timeout_s, read=read_timeout_s)
        self._client = httpx.AsyncClient(
            base_url=base_url.rstrip("/"), headers=headers, timeout=timeout
        )

    async def complete(self, prompt: str) -> str:
        return (await self.answer(prompt)).text

    async def answer(self, prompt: str) -> Completion:
        body: dict[str, object] = {
            "model": self.model,
            "messages": [{"role": "user", "content": prompt}],
        }
        if self._max_tokens is not None:
            body["max_tokens"] = self._max_tokens
        started = time.perf_counter()
        reply = await self.chat(body)
        seconds = time.perf_counter() - started
        try:
            parsed = json.loads(reply)
            content = parsed["choices"][0]["message"]["content"]
        except (ValueError, KeyError, IndexError, TypeError) as exc:
            raise UpstreamError("upstream LLM answer has no choices[0].message.content") from exc
        if not isinstance(content, str) or not content.strip():
            raise UpstreamError("upstream LLM returned an empty answer")
        return Completion(content, cost_of(parsed, self.model, seconds))

    async def _spend(self, requests: int, text: str = "") -> None:
        if self.spending is not None:
            if requests:
                await self.spending.check()  # raises BudgetSpentError: the call is not made
            await self.spending.record(requests, usage_in(text) if text else 0)

    async def chat(self, body: Mapping[str, Any]) -> str:
        await self._spend(1)
        model = str(body.get("model") or self.model)
        try:
            attributes = _call_attributes(self.kind, model)
            with tracing.span(f"chat {model}", attributes, kind=SpanKind.CLIENT) as span:
                reply = await self._client.post("/chat/completions", json=dict(body))
                if span is not None:
                    span.set_attribute("http.response.status_code", reply.status_code)
        except httpx.TimeoutException as exc:
            raise UpstreamError("the upstream LLM timed out") from exc
        except httpx.ConnectError as exc:
            raise UpstreamError("the upstream LLM is unreachable") from exc
        except httpx.HTTPError as exc:
            raise UpstreamError("the upstream LLM broke off the connection") from exc
        if reply.status_code != 200:
            raise UpstreamHTTPError(reply.status_code, reply.text)
        await self._spend(0, reply.text)
        return reply.text

    async def chat_stream(self, body: Mapping[str, Any]) -> AsyncIterator[str]:
        await self._spend(1)
        model = str(body.get("model") or self.model)
        try:
            async with (
                # Not the current context: the stream yields to its consumer within it.
                tracing.async_span(
                    f"chat {model}", _call_attributes(self.kind, model), kind=SpanKind.CLIENT
                ),
                self._client.stream("POST", "/chat/completions", json=dict(body)) as reply,
            ):
                if reply.status_code != 200:
                    raise UpstreamHTTPError(reply.status_code, (await reply.aread()).decode())
                async for line in reply.aiter_lines():
                    if not line.startswith("data:"):
                        continue  # blank separators, `event:` and `:` comment lines
                    data = line[5:].strip()
                    if data == "[DONE]":
                        return
                    if '"usage"' in data:  # the last chunk, when asked with include_usage
                        await self._spend(0, data)
                    yield data
        except httpx.TimeoutException as exc:
            raise UpstreamError("the upstream LLM timed out") from exc
        except httpx.ConnectError as exc:
            raise UpstreamError("the upstream LLM is unreachable") from exc
        except httpx.HTTPError as exc:
            raise UpstreamError("the upstream LLM stream broke off") from exc
        # The connection closed before [DONE]: the answer may be cut short.
        raise UpstreamError("upstream LLM stream ended without [DONE]")

    async def close(self) -> None:
        await self._client.aclose()
