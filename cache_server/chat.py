"""Chat completions through the cache (the gateway's OpenAI-compatible route).

A cacheable request is looked up like a LangCache search: its prompt (the last user message)
exactly, then semantically, within its attributes (the scope). On a miss the upstream answers
once per key, however many callers ask at the same time: the call runs in a flight of its own
whose events (the chunks of a stream, or the whole answer) every caller follows from the first,
so a caller who joins late still gets the whole stream, and one who leaves does not stop it for
the others. A complete answer (`finish_reason` "stop", text, no tool calls) is stored; an
answer cut short, or an upstream that fails, stores nothing. A request that is not cacheable is
passed to the upstream as it is.
"""

from __future__ import annotations

import asyncio
import json
import logging
from collections.abc import AsyncIterator, Callable, Coroutine, Hashable, Mapping
from dataclasses import dataclass, field
from typing import Any

from cache_server import metrics
from cache_server.cache import SemanticCache
from cache_server.entries import (
    check_attributes,
    check_cache_id,
    check_text,
    check_ttl,
    normalize_prompt,
)
from cache_server.lookup import Hit, Strategy
from cache_server.upstream import ChatUpstream, UpstreamError, UpstreamHTTPError

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class ChatCall:
    cache_id: str
    prompt: str
    attributes: Mapping[str, str]
    body: Mapping[str, Any]
    stream: bool
    cacheable: bool = True
    use_cache: bool = True
    threshold: float | None = None
    ttl_s: float | None = None


@dataclass(frozen=True)
class Chunk:
    json: str


@dataclass(frozen=True)
class Completion:
    json: str


@dataclass(frozen=True)
class Failed:
    status: int
    body: str
    message: str


@dataclass(frozen=True)
class Stored:
    entry_id: str


ChatEvent = Hit | Chunk | Completion | Failed | Stored


@dataclass
class _Answer:
    """What the upstream said, gathered from its chunks or its whole answer."""

    text: list[str] = field(default_factory=list)
    finish_reason: str | None = None
    tool_calls: bool = False

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


class Broadcast:
    """Events of one flight, in order, for every follower from the first event on."""

    def __init__(self) -> None:
        self.events: list[ChatEvent] = []
        self.done = False
        self._changed = asyncio.Event()

    def publish(self, event: ChatEvent) -> None:
        self.events.append(event)
        self._wake()

    def close(self) -> None:
        self.done = True
        self._wake()

    def _wake(self) -> None:
        self._changed.set()
        self._changed = asyncio.Event()

    async def follow(self) -> AsyncIterator[ChatEvent]:
        seen = 0
        while True:
            while seen < len(self.events):
                seen += 1
                yield self.events[seen - 1]
            if self.done:
                return
            await self._changed.wait()


class _Flight:
    def __init__(self, broadcast: Broadcast, task: asyncio.Task[None]) -> None:
        self.broadcast = broadcast
        self.task = task
        self.followers = 0


class ChatCompletions:
    def __init__(self, cache: SemanticCache, upstream: ChatUpstream) -> None:
        self.cache = cache
        self.upstream = upstream
        self._flights: dict[Hashable, _Flight] = {}

    @property
    def in_flight(self) -> int:
        return len(self._flights)

    async def run(self, call: ChatCall) -> AsyncIterator[ChatEvent]:
        if not call.cacheable:  # a flight of its own, shared with nobody
            async for event in self._join(object(), lambda b: self._produce(call, b, store=False)):
                yield event
            return
        cache_id = check_cache_id(call.cache_id)
        check_text("prompt", call.prompt, self.cache.policy.max_prompt_chars)
        attributes = check_attributes(call.attributes)
        ttl_s = check_ttl(call.ttl_s, self.cache.policy.default_ttl_s)
        if call.use_cache:
            found = await self.cache.search(
                cache_id,
                call.prompt,
                threshold=call.threshold,
                attributes=attributes,
                strategies=(Strategy.EXACT, Strategy.SEMANTIC),
            )
            if found.hits:
                yield found.hits[0]
                return
        # Everything that shapes the stored entry or the relayed answer is in the key.
        key = (
            cache_id,
            normalize_prompt(call.prompt),
            tuple(sorted(attributes.items())),
            ttl_s,
            call.stream,
        )
        scoped = ChatCall(cache_id, call.prompt, attributes, call.body, call.stream, ttl_s=ttl_s)
        async for event in self._join(key, lambda b: self._produce(scoped, b, store=True)):
            yield event

    async def _join(
        self, key: Hashable, produce: Callable[[Broadcast], Coroutine[Any, Any, None]]
    ) -> AsyncIterator[ChatEvent]:
        flight = self._flights.get(key)
        if flight is None:
            broadcast = Broadcast()
            task = asyncio.ensure_future(produce(broadcast))
            flight = self._flights[key] = _Flight(broadcast, task)
            landed = flight
            task.add_done_callback(lambda _: self._land(key, landed))
        flight.followers += 1
        try:
            async for event in flight.broadcast.follow():
                yield event
        finally:
            flight.followers -= 1
            if flight.followers == 0 and not flight.task.done():
                # Nobody listens any more: stop paying for the upstream's tokens.
                self._land(key, flight)
                flight.task.cancel()

    def _land(self, key: Hashable, flight: _Flight) -> None:
        if self._flights.get(key) is flight:
            del self._flights[key]

    async def _produce(self, call: ChatCall, broadcast: Broadcast, *, store: bool) -> None:
        answer = _Answer()
        try:
            if call.stream:
                async for chunk in self.upstream.chat_stream(call.body):
                    broadcast.publish(Chunk(chunk))
                    for choice in _choices(chunk):
                        answer.take(choice, "delta")
            else:
                whole = await self.upstream.chat(call.body)
                broadcast.publish(Completion(whole))
                for choice in _choices(whole):
                    answer.take(choice, "message")
        except UpstreamHTTPError as exc:
            metrics.UPSTREAM_CALLS.labels("error").inc()
            broadcast.publish(Failed(exc.status, exc.body, str(exc)))
            broadcast.close()
            return
        except UpstreamError as exc:
            metrics.UPSTREAM_CALLS.labels("error").inc()
            log.warning("chat completion upstream failed: %s", exc)
            broadcast.publish(Failed(0, "", str(exc)))
            broadcast.close()
            return
        except BaseException:
            broadcast.close()
            raise
        metrics.UPSTREAM_CALLS.labels("ok").inc()
        entry_id = ""
        text = answer.complete_text(streamed=call.stream) if store else None
        if text is not None:
            try:
                entry_id = await self.cache.set(
                    call.cache_id,
                    call.prompt,
                    text,
                    attributes=call.attributes,
                    ttl_s=call.ttl_s,
                )
            except Exception as exc:  # the answer was given; only its storing failed
                log.warning("storing a chat completion in cache %r failed: %s", call.cache_id, exc)
        broadcast.publish(Stored(entry_id))
        broadcast.close()


def _choices(text: str) -> list[Mapping[str, Any]]:
    try:
        parsed = json.loads(text)
    except ValueError:
        return []
    choices = parsed.get("choices") if isinstance(parsed, dict) else None
    return [c for c in choices if isinstance(c, dict)] if isinstance(choices, list) else []
