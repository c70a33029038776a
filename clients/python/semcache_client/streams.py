"""The events of a Chat call as they arrive: `ChatStream` for blocking code (an iterator),
`AsyncChatStream` for asyncio (an async iterator).

A stream is one try on one address (never retried: events may already have reached the
caller, and a miss asks the upstream LLM). Its deadline covers the whole stream. A failure,
before the first event or between two, raises the same `SemcacheError` subclasses as every
other call, carrying the call's request id.
"""

from __future__ import annotations

import asyncio
from dataclasses import dataclass
from types import TracebackType
from typing import Any, cast

import grpc

from semcache_client._cache_rpcs import chat_event, chat_route
from semcache_client._calls import CallPlan
from semcache_client._invokers import SyncStreamCall
from semcache_client._stubs import cache_pb
from semcache_client.models import ChatEvent, ChatRoute


@dataclass(frozen=True)
class _CancelledHere:
    """A call the caller cancelled, as grpc reports a failed one."""

    def code(self) -> grpc.StatusCode:
        return grpc.StatusCode.CANCELLED

    def details(self) -> str | None:
        return "cancelled by the caller"

    def trailing_metadata(self) -> object:
        return ()


class ChatStream:
    """The events of one `CacheClient.chat` call, in order; iterate it once.

    The call is under way when `chat()` returns. Leaving a `with` block, or `cancel()`, ends it
    early (the cache server stops the upstream call when no caller is left for it); reading on
    after `cancel()` raises `Cancelled`. `request_id` is the id the call was sent with. Once
    the first event is read, `route` says how the cache server handled the request.
    """

    def __init__(self, call: SyncStreamCall, plan: CallPlan) -> None:
        self._call = call
        self._plan = plan
        self._ended = False
        self.route: ChatRoute | None = None

    @property
    def request_id(self) -> str:
        return self._plan.request_id

    def __iter__(self) -> ChatStream:
        return self

    def __next__(self) -> ChatEvent:
        while True:
            try:
                message = next(self._call)
            except StopIteration:
                if not self._ended:
                    self._ended = True
                    self._plan.succeeded()
                raise
            except grpc.RpcError as error:
                raise self._plan.error(error) from error
            if self.route is None:
                self.route = chat_route(self._call.initial_metadata())
            event = chat_event(message)
            if event is not None:  # else an event of a newer server: skipped
                return event

    def cancel(self) -> None:
        """Ends the call now (nothing happens if it is over)."""
        self._call.cancel()

    def __enter__(self) -> ChatStream:
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.cancel()


class AsyncChatStream:
    """The events of one `AsyncCacheClient.chat` call, in order: `async for` it once.

    The call is under way when `chat()` returns (it must be called in the client's event loop).
    Leaving an `async with` block, or `cancel()`, ends it early; reading on after `cancel()`
    raises `Cancelled`. `request_id` is the id the call was sent with. Once the first event is
    read, `route` says how the cache server handled the request.
    """

    def __init__(self, call: grpc.aio.UnaryStreamCall[Any, Any], plan: CallPlan) -> None:
        self._call = call
        self._plan = plan
        self._ended = False
        self._cancelled = False
        self.route: ChatRoute | None = None

    @property
    def request_id(self) -> str:
        return self._plan.request_id

    def __aiter__(self) -> AsyncChatStream:
        return self

    async def __anext__(self) -> ChatEvent:
        while True:
            try:
                message = await self._call.read()
            except grpc.aio.AioRpcError as error:
                raise self._plan.error(error) from error
            except asyncio.CancelledError:
                if not self._cancelled:  # the task reading was cancelled: so is the call
                    raise
                raise self._plan.error(_CancelledHere()) from None
            if self.route is None and message is not grpc.aio.EOF:
                self.route = chat_route(await self._call.initial_metadata())
            if message is grpc.aio.EOF:
                if not self._ended:
                    self._ended = True
                    self._plan.succeeded()
                raise StopAsyncIteration
            event = chat_event(cast(cache_pb.ChatEvent, message))
            if event is not None:  # else an event of a newer server: skipped
                return event

    def cancel(self) -> None:
        """Ends the call now (nothing happens if it is over)."""
        self._cancelled = self._call.cancel() or self._cancelled

    async def __aenter__(self) -> AsyncChatStream:
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.cancel()
