"""Sending calls over a client's channels, with the plan of semcache_client._calls: one
invoker for blocking code, one for asyncio. Each address is one channel (gRPC's round_robin
policy inside it spreads calls over every address a DNS name resolves to). A server-streaming
call is started here and read by semcache_client.streams."""

from __future__ import annotations

import asyncio
import threading
import time
from collections.abc import Iterator
from typing import Any, Protocol, cast

import grpc

from semcache_client._calls import AddressRotation, CallPlan, RequestT, ResponseT, Rpc, serialize
from semcache_client.config import ClientConfig
from semcache_client.errors import FailedCall


class SyncStreamCall(Protocol):
    """What grpc's blocking server-streaming call offers: its replies, its initial metadata,
    and cancel()."""

    def __iter__(self) -> Iterator[Any]: ...

    def __next__(self) -> Any: ...

    def initial_metadata(self) -> Any: ...

    def cancel(self) -> bool: ...


def _sync_channel(config: ClientConfig, target: str) -> grpc.Channel:
    options = config.all_channel_options()
    if config.tls is None:
        return grpc.insecure_channel(target, options=options)
    return grpc.secure_channel(target, config.tls.credentials(), options=options)


def _aio_channel(config: ClientConfig, target: str) -> grpc.aio.Channel:
    options = config.all_channel_options()
    if config.tls is None:
        return grpc.aio.insecure_channel(target, options=options)
    return grpc.aio.secure_channel(target, config.tls.credentials(), options=options)


class SyncInvoker:
    """Blocking calls; safe to share between threads."""

    def __init__(self, config: ClientConfig) -> None:
        self.config = config
        self._rotation = AddressRotation(config.addresses)
        self._channels = [_sync_channel(config, target) for target in config.addresses]
        self._callables: dict[tuple[int, str], grpc.UnaryUnaryMultiCallable[Any, Any]] = {}
        self._stream_callables: dict[tuple[int, str], grpc.UnaryStreamMultiCallable[Any, Any]] = {}
        self._lock = threading.Lock()
        self._closed = False

    def _callable(self, index: int, rpc: Rpc[Any, Any]) -> grpc.UnaryUnaryMultiCallable[Any, Any]:
        key = (index, rpc.path)
        with self._lock:
            found = self._callables.get(key)
            if found is None:
                found = self._channels[index].unary_unary(
                    rpc.path, request_serializer=serialize, response_deserializer=rpc.deserialize
                )
                self._callables[key] = found
        return found

    def call(
        self,
        rpc: Rpc[RequestT, ResponseT],
        request: RequestT,
        timeout_s: float | None,
        request_id: str | None,
    ) -> ResponseT:
        if self._closed:
            raise RuntimeError("this client is closed")
        plan = CallPlan(self.config, rpc, self._rotation, timeout_s, request_id)
        while True:
            index, remaining_s = plan.next_try()
            try:
                response = self._callable(index, rpc)(
                    request, timeout=remaining_s, metadata=plan.metadata
                )
                plan.succeeded()
                return cast(ResponseT, response)
            except grpc.RpcError as error:
                wait_s = plan.failed(cast(FailedCall, error))
            time.sleep(wait_s)

    def _stream_callable(
        self, index: int, rpc: Rpc[Any, Any]
    ) -> grpc.UnaryStreamMultiCallable[Any, Any]:
        key = (index, rpc.path)
        with self._lock:
            found = self._stream_callables.get(key)
            if found is None:
                found = self._channels[index].unary_stream(
                    rpc.path, request_serializer=serialize, response_deserializer=rpc.deserialize
                )
                self._stream_callables[key] = found
        return found

    def stream(
        self,
        rpc: Rpc[RequestT, ResponseT],
        request: RequestT,
        timeout_s: float | None,
        request_id: str | None,
    ) -> tuple[SyncStreamCall, CallPlan]:
        """Starts a server-streaming call on the next address (one try: never retried); the
        deadline covers the whole stream."""
        if self._closed:
            raise RuntimeError("this client is closed")
        plan = CallPlan(self.config, rpc, self._rotation, timeout_s, request_id)
        index, remaining_s = plan.next_try()
        call = self._stream_callable(index, rpc)(
            request, timeout=remaining_s, metadata=plan.metadata
        )
        return cast(SyncStreamCall, call), plan

    def close(self) -> None:
        if self._closed:
            return
        self._closed = True
        for channel in self._channels:
            channel.close()


class AsyncInvoker:
    """asyncio calls. The channels are made on the first call, in the running event loop, and
    belong to it: use the client within that one loop."""

    def __init__(self, config: ClientConfig) -> None:
        self.config = config
        self._rotation = AddressRotation(config.addresses)
        self._channels: list[grpc.aio.Channel] = []
        self._loop: asyncio.AbstractEventLoop | None = None
        self._callables: dict[tuple[int, str], grpc.aio.UnaryUnaryMultiCallable[Any, Any]] = {}
        self._stream_callables: dict[
            tuple[int, str], grpc.aio.UnaryStreamMultiCallable[Any, Any]
        ] = {}
        self._closed = False

    def _open(self) -> list[grpc.aio.Channel]:
        if self._closed:
            raise RuntimeError("this client is closed")
        loop = asyncio.get_running_loop()
        if self._loop is None:
            self._loop = loop
            self._channels = [_aio_channel(self.config, target) for target in self.config.addresses]
        elif self._loop is not loop:
            raise RuntimeError(
                "this async client belongs to the event loop it first ran in; make one client "
                "per event loop"
            )
        return self._channels

    def _callable(
        self, index: int, rpc: Rpc[Any, Any]
    ) -> grpc.aio.UnaryUnaryMultiCallable[Any, Any]:
        key = (index, rpc.path)
        found = self._callables.get(key)
        if found is None:
            found = self._channels[index].unary_unary(
                rpc.path, request_serializer=serialize, response_deserializer=rpc.deserialize
            )
            self._callables[key] = found
        return found

    async def call(
        self,
        rpc: Rpc[RequestT, ResponseT],
        request: RequestT,
        timeout_s: float | None,
        request_id: str | None,
    ) -> ResponseT:
        self._open()
        plan = CallPlan(self.config, rpc, self._rotation, timeout_s, request_id)
        while True:
            index, remaining_s = plan.next_try()
            try:
                response = await self._callable(index, rpc)(
                    request, timeout=remaining_s, metadata=plan.metadata
                )
                plan.succeeded()
                return cast(ResponseT, response)
            except grpc.aio.AioRpcError as error:
                wait_s = plan.failed(error)
            await asyncio.sleep(wait_s)

    def _stream_callable(
        self, index: int, rpc: Rpc[Any, Any]
    ) -> grpc.aio.UnaryStreamMultiCallable[Any, Any]:
        key = (index, rpc.path)
        found = self._stream_callables.get(key)
        if found is None:
            found = self._channels[index].unary_stream(
                rpc.path, request_serializer=serialize, response_deserializer=rpc.deserialize
            )
            self._stream_callables[key] = found
        return found

    def stream(
        self,
        rpc: Rpc[RequestT, ResponseT],
        request: RequestT,
        timeout_s: float | None,
        request_id: str | None,
    ) -> tuple[grpc.aio.UnaryStreamCall[Any, Any], CallPlan]:
        """Starts a server-streaming call on the next address, in the running event loop (one
        try: never retried); the deadline covers the whole stream."""
        self._open()
        plan = CallPlan(self.config, rpc, self._rotation, timeout_s, request_id)
        index, remaining_s = plan.next_try()
        call = self._stream_callable(index, rpc)(
            request, timeout=remaining_s, metadata=plan.metadata
        )
        return call, plan

    async def close(self) -> None:
        self._closed = True
        channels, self._channels = self._channels, []
        self._callables, self._stream_callables = {}, {}
        await asyncio.gather(*(channel.close() for channel in channels))
