"""The LLM asked on a miss: an OpenAI-compatible chat-completions API, or the demo responder.

Concurrent misses on the same prompt in the same scope call the upstream once (see
cache_server.single_flight).
"""

from __future__ import annotations

import json
import logging
import time
import uuid
from collections.abc import AsyncIterator, Mapping
from typing import Any, Protocol

import httpx

log = logging.getLogger(__name__)


class UpstreamError(RuntimeError):
    """The upstream LLM failed or timed out; nothing was stored."""


class UpstreamHTTPError(UpstreamError):
    """The upstream answered with an error status; its body is passed on as it came."""

    def __init__(self, status: int, body: str) -> None:
        super().__init__(f"upstream LLM answered HTTP {status}: {body[:200]}")
        self.status = status
        self.body = body


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


class Upstream(Protocol):
    kind: str  # "openai-compatible" or "demo"
    model: str

    async def complete(self, prompt: str) -> str: ...

    async def close(self) -> None: ...


class DemoResponder:
    """Answers without any LLM, so the stack runs out of the box. Clearly labelled."""

    kind = "demo"
    model = "demo-responder"

    async def complete(self, prompt: str) -> str:
        return self._answer(prompt)

    @staticmethod
    def _answer(prompt: str) -> str:
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
    ) -> None:
        """`timeout_s` bounds connecting and sending; `read_timeout_s` the wait for the answer
        (a whole completion, or each chunk of a stream), which a long completion needs."""
        self.model = model
        self._max_tokens = max_tokens
        headers = {"Authorization": f"Bearer {api_key}"} if api_key else {}
        timeout = httpx.Timeout(timeout_s, read=read_timeout_s)
        self._client = httpx.AsyncClient(
            base_url=base_url.rstrip("/"), headers=headers, timeout=timeout
        )

    async def complete(self, prompt: str) -> str:
        body: dict[str, object] = {
            "model": self.model,
            "messages": [{"role": "user", "content": prompt}],
        }
        if self._max_tokens is not None:
            body["max_tokens"] = self._max_tokens
        reply = await self.chat(body)
        try:
            content = json.loads(reply)["choices"][0]["message"]["content"]
        except (ValueError, KeyError, IndexError, TypeError) as exc:
            raise UpstreamError("upstream LLM answer has no choices[0].message.content") from exc
        if not isinstance(content, str) or not content.strip():
            raise UpstreamError("upstream LLM returned an empty answer")
        return content

    async def chat(self, body: Mapping[str, Any]) -> str:
        try:
            reply = await self._client.post("/chat/completions", json=dict(body))
        except httpx.TimeoutException as exc:
            raise UpstreamError(f"upstream LLM timed out ({type(exc).__name__})") from exc
        except httpx.HTTPError as exc:
            raise UpstreamError(f"upstream LLM unreachable: {exc}") from exc
        if reply.status_code != 200:
            raise UpstreamHTTPError(reply.status_code, reply.text)
        return reply.text

    async def chat_stream(self, body: Mapping[str, Any]) -> AsyncIterator[str]:
        try:
            async with self._client.stream("POST", "/chat/completions", json=dict(body)) as reply:
                if reply.status_code != 200:
                    raise UpstreamHTTPError(reply.status_code, (await reply.aread()).decode())
                async for line in reply.aiter_lines():
                    if not line.startswith("data:"):
                        continue  # blank separators, `event:` and `:` comment lines
                    data = line[5:].strip()
                    if data == "[DONE]":
                        return
                    yield data
        except httpx.TimeoutException as exc:
            raise UpstreamError(f"upstream LLM timed out ({type(exc).__name__})") from exc
        except httpx.HTTPError as exc:
            raise UpstreamError(f"upstream LLM stream broke off: {exc}") from exc
        # The connection closed before [DONE]: the answer may be cut short.
        raise UpstreamError("upstream LLM stream ended without [DONE]")

    async def close(self) -> None:
        await self._client.aclose()
