"""The LLM asked on a miss: an OpenAI-compatible chat-completions API, or the demo responder.

Concurrent misses on the same prompt in the same scope call the upstream once (see
cache_server.single_flight).
"""

from __future__ import annotations

import logging
from typing import Protocol

import httpx

log = logging.getLogger(__name__)


class UpstreamError(RuntimeError):
    """The upstream LLM failed or timed out; nothing was stored."""


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
        return (
            "[demo responder: no upstream LLM is configured, set CACHE_UPSTREAM_BASE_URL] "
            f"You asked: {prompt.strip()}"
        )

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
        max_tokens: int | None = None,
    ) -> None:
        self.model = model
        self._max_tokens = max_tokens
        headers = {"Authorization": f"Bearer {api_key}"} if api_key else {}
        self._client = httpx.AsyncClient(
            base_url=base_url.rstrip("/"), headers=headers, timeout=httpx.Timeout(timeout_s)
        )

    async def complete(self, prompt: str) -> str:
        body: dict[str, object] = {
            "model": self.model,
            "messages": [{"role": "user", "content": prompt}],
        }
        if self._max_tokens is not None:
            body["max_tokens"] = self._max_tokens
        try:
            reply = await self._client.post("/chat/completions", json=body)
        except httpx.TimeoutException as exc:
            raise UpstreamError(f"upstream LLM timed out ({type(exc).__name__})") from exc
        except httpx.HTTPError as exc:
            raise UpstreamError(f"upstream LLM unreachable: {exc}") from exc
        if reply.status_code != 200:
            raise UpstreamError(
                f"upstream LLM answered HTTP {reply.status_code}: {reply.text[:200]}"
            )
        try:
            content = reply.json()["choices"][0]["message"]["content"]
        except (ValueError, KeyError, IndexError, TypeError) as exc:
            raise UpstreamError("upstream LLM answer has no choices[0].message.content") from exc
        if not isinstance(content, str) or not content.strip():
            raise UpstreamError("upstream LLM returned an empty answer")
        return content

    async def close(self) -> None:
        await self._client.aclose()
