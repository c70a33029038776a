"""Chat completions through the cache (the Chat RPC; the gateway's OpenAI-compatible route).

The cache server reads each request itself (cache_server.chat_scope): its prompt, the last
user message, is looked up exactly, then semantically, within its scope, a digest of all else
that shapes the answer. On a miss the upstream answers once per key, however many callers ask
at the same time: the call runs in a flight (cache_server.single_flight) whose events (the
chunks of a stream, or the whole answer) every caller follows from the first, so a caller who
joins late still gets the whole stream, and one who leaves does not stop it for the others. A
complete answer (`finish_reason` "stop", text, no tool calls) is stored; an answer cut short,
or an upstream that fails, stores nothing. A request that is not cacheable, or that arrives
while the cache cannot be reached (embedder or store down), is passed to the upstream as it
is: the user is served, nothing is stored.
"""

from __future__ import annotations

import json
import logging
import time
from collections.abc import AsyncIterator, Mapping
from dataclasses import dataclass, field
from typing import Any

from cache_server import metrics
from cache_server.access import NotPermittedError, caller
from cache_server.cache import SemanticCache
from cache_server.chat_scope import ChatScope, scope_of
from cache_server.embedder_client import EmbedderUnavailableError
from cache_server.entries import (
    check_attributes,
    check_cache_id,
    check_ttl,
    normalize_prompt,
)
from cache_server.lookup import Hit, Strategy
from cache_server.savings import cost_of
from cache_server.single_flight import Broadcast, SingleFlight
from cache_server.spending import Spending
from cache_server.store.base import ModelMismatchError, StoreUnavailableError
from cache_server.upstream import ChatUpstream, UpstreamError, UpstreamHTTPError

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class ChatCall:
    cache_id: str
    prompt: str  # "" : the last message's text (the cache server reads it from the body)
    attributes: Mapping[str, str]
    body: Mapping[str, Any]
    stream: bool
    cacheable: bool = True
    use_cache: bool = True
    threshold: float | None = None
    ttl_s: float | None = None


@dataclass(frozen=True)
class Routed:
    """The first event: the scope the answer is looked up and stored under (empty when not
    cached) and why it is passed through uncached (None: it is cached)."""

    chat_scope: str
    uncacheable: str | None


@dataclass(frozen=True)
class Chunk:
    json: str


@dataclass(frozen=True)
class Completion:
    json: str


@dataclass(frozen=True)
class Failed:
    """The upstream failed, in words fit for the client: the status to answer (0: it could
    not be reached, timed out or broke off), an error in OpenAI's shape (empty with status 0)
    and a message; never the upstream's own body (cache_server.upstream.UpstreamHTTPError)."""

    status: int
    body: str
    message: str


@dataclass(frozen=True)
class Stored:
    entry_id: str


ChatEvent = Routed | Hit | Chunk | Completion | Failed | Stored
UpstreamEvent = Chunk | Completion | Failed | Stored


@dataclass
class _Answer:
    """What the upstream said, gathered from its chunks or its whole answer."""

    text: list[str] = field(default_factory=list)
    finish_reason: str | None = None
    tool_calls: bool = False
    usage: Mapping[str, Any] | None = None  # the whole answer, or the chunk, with `usage`

    def read(self, text: str, part: str) -> None:
        """Takes a whole answer (`part` "message") or one chunk of a stream ("delta")."""
        try:
            parsed = json.loads(text)
        except ValueError:
            return
        if not isinstance(parsed, dict):
            return
        if isinstance(parsed.get("usage"), Mapping):
            self.usage = parsed
        choices = parsed.get("choices")
        for choice in choices if isinstance(choices, list) else []:
            if isinstance(choice, dict):
                self.take(choice, part)

    def take(self, choice: Mapping[str, Any], part: str) -> None:
        if choice.get("index", 0) != 0:
            return
        message = choice.get(part) or {}
        if isinstance(message.get("content"), str):
            self.text.append(message["content"])
        if message.get("tool_calls") or message.get("function_call"):
            self.tool_calls = True
        if choice.get("finish_reason"):
            self.finish_reason = str(choice["finish_reason"])

    def complete_text(self, *, streamed: bool) -> str | None:
        """The answer's text when it is whole: finished with "stop" (a whole answer that
        names no finish reason counts too; a stream must end with one), no tool calls."""
        text = "".join(self.text)
        finished = self.finish_reason == "stop" or (not streamed and self.finish_reason is None)
        if not finished or self.tool_calls or not text.strip():
            return None
        return text


class ChatCompletions:
    def __init__(
        self,
        cache: SemanticCache,
        upstream: ChatUpstream,
        allowed_models: frozenset[str] = frozenset({"*"}),
        spending: Spending | None = None,
    ) -> None:
        self.cache = cache
        self.upstream = upstream
        self.spending = spending
        self.allowed_models = allowed_models  # what the upstream may be asked for; "*": any
        self._flights = SingleFlight()

    def _check_allowed(self, body: Mapping[str, Any], uncacheable: str | None) -> None:
        """No open proxy: only the operator's models, and a request that would not be cached
        only for a key that may pass requests through (service_runtime.tenants)."""
        model = body.get("model")
        if "*" not in self.allowed_models and model not in self.allowed_models:
            offered = ", ".join(sorted(self.allowed_models))
            raise NotPermittedError(f"model {str(model)[:80]!r} is not offered here: {offered}")
        tenant = caller().tenant
        if uncacheable is not None and not tenant.passthrough:
            who = f"key {tenant.id!r}" if tenant.keyed else "a caller without a key"
            raise NotPermittedError(
                f"{who} may not pass uncached requests to the upstream LLM ({uncacheable}); "
                "only cacheable requests are served"
            )

    @property
    def in_flight(self) -> int:
        return self._flights.in_flight

    async def run(self, call: ChatCall) -> AsyncIterator[ChatEvent]:
        # Chat never reaches the caches the cache server keeps for itself.
        cache_id = check_cache_id(call.cache_id, reserved=False)
        attributes = check_attributes(call.attributes, writing=True)
        ttl_s = check_ttl(call.ttl_s, self.cache.policy.default_ttl_s)
        scope = scope_of(
            call.body,
            attributes,
            prompt=call.prompt,
            stream=call.stream,
            cacheable=call.cacheable,
            max_prompt_chars=self.cache.policy.max_prompt_chars,
        )
        self._check_allowed(call.body, scope.uncacheable)
        if scope.uncacheable is None and call.use_cache:
            try:
                found = await self.cache.search(
                    cache_id,
                    scope.prompt,
                    threshold=call.threshold,
                    attributes=scope.attributes,
                    strategies=(Strategy.EXACT, Strategy.SEMANTIC),
                    route="chat",
                )
            except (EmbedderUnavailableError, StoreUnavailableError, ModelMismatchError) as exc:
                # The user is still served: by the upstream, uncached (the refusal is logged
                # and counted for the operator).
                log.warning("chat look-up in cache %r failed, passing through: %s", cache_id, exc)
                metrics.CHAT_PASSED_THROUGH.labels("cache_unavailable").inc()
                why = (
                    "the cache holds another embedding model's vectors (make reindex)"
                    if isinstance(exc, ModelMismatchError)
                    else "the cache is unavailable"
                )
                scope = ChatScope("", attributes, why, scope.upstream_body)
            else:
                if found.hits:
                    yield Routed(scope.digest, None)
                    yield found.hits[0]
                    return
        elif scope.uncacheable is not None:
            metrics.CHAT_PASSED_THROUGH.labels("uncacheable" if call.cacheable else "asked").inc()
        if self.spending is not None:
            # Before any answer starts: a key that spent its budget gets a plain refusal (429
            # with Retry-After) rather than an upstream failure mid-stream.
            await self.spending.check()
        yield Routed(scope.digest, scope.uncacheable)
        cached = scope.uncacheable is None
        # Everything that shapes the stored entry or the relayed answer is in the key; a
        # request passed through is a flight of its own, shared with nobody.
        key = (cache_id, normalize_prompt(scope.prompt), scope.digest, ttl_s, call.stream)

        async def produce(broadcast: Broadcast[UpstreamEvent]) -> None:
            await self._produce(cache_id, scope, ttl_s, call.stream, broadcast, store=cached)

        async for event in self._flights.follow(key if cached else None, produce):
            yield event

    async def _produce(
        self,
        cache_id: str,
        scope: ChatScope,
        ttl_s: float | None,
        stream: bool,
        broadcast: Broadcast[UpstreamEvent],
        *,
        store: bool = False,
    ) -> None:
        answer = _Answer()
        started = time.perf_counter()
        try:
            if stream:
                async for chunk in self.upstream.chat_stream(scope.upstream_body):
                    broadcast.publish(Chunk(chunk))
                    answer.read(chunk, "delta")
            else:
                whole = await self.upstream.chat(scope.upstream_body)
                broadcast.publish(Completion(whole))
                answer.read(whole, "message")
        except UpstreamError as exc:
            # What the client is told was decided with the error (cache_server.upstream); the
            # log keeps what the upstream said, or why it could not be asked.
            metrics.UPSTREAM_CALLS.labels("error").inc()
            log.warning("chat completion upstream failed: %s", exc.detail)
            failed = (
                Failed(exc.client_status, exc.client_body, str(exc))
                if isinstance(exc, UpstreamHTTPError)
                else Failed(0, "", str(exc))
            )
            # The marker that tests/processes.py scans for, as statuses.abort logs it.
            log.info("error answered: upstream-error %d %s", failed.status, failed.message)
            broadcast.publish(failed)
            broadcast.close()
            return
        except BaseException:
            broadcast.close()
            raise
        metrics.UPSTREAM_CALLS.labels("ok").inc()
        seconds = time.perf_counter() - started
        entry_id = ""
        text = answer.complete_text(streamed=stream) if store else None
        if text is not None:
            asked = str(scope.upstream_body.get("model") or "")
            cost = cost_of(answer.usage, asked, seconds) if answer.usage is not None else None
            try:
                entry_id = await self.cache.set_scoped(
                    cache_id,
                    scope.prompt,
                    text,
                    attributes=scope.attributes,
                    ttl_s=ttl_s,
                    cost=cost,
                )
            except Exception as exc:  # the answer was given; only its storing failed
                log.warning("storing a chat completion in cache %r failed: %s", cache_id, exc)
        broadcast.publish(Stored(entry_id))
        broadcast.close()
