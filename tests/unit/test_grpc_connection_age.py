"""Connections to a gRPC service are closed after max_connection_age_s, so that clients resolve
the service's name again and reach replicas added since (a Kubernetes scale-up behind a headless
Service); with 0, a client keeps its first connection."""

from __future__ import annotations

import asyncio
from typing import Any

import grpc
import pytest

from service_runtime.grpc_service import GrpcService


async def _peer(request: bytes, context: grpc.aio.ServicerContext[Any, Any]) -> bytes:
    return context.peer().encode()


async def _peers_seen(max_connection_age_s: float, calls: int, pause_s: float) -> set[str]:
    service = GrpcService(
        host="127.0.0.1",
        port=0,
        service_names=["semcache.test.v1.Peer"],
        max_connection_age_s=max_connection_age_s,
        connection_age_grace_s=0.5,
    )
    handler = grpc.method_handlers_generic_handler(
        "semcache.test.v1.Peer", {"Who": grpc.unary_unary_rpc_method_handler(_peer)}
    )
    service.server.add_generic_rpc_handlers((handler,))
    await service.start()
    seen: set[str] = set()
    try:
        async with grpc.aio.insecure_channel(f"127.0.0.1:{service.port}") as channel:
            who: grpc.aio.UnaryUnaryMultiCallable[bytes, bytes] = channel.unary_unary(
                "/semcache.test.v1.Peer/Who"
            )
            for _ in range(calls):
                seen.add((await who(b"", timeout=5, wait_for_ready=True)).decode())
                await asyncio.sleep(pause_s)
    finally:
        await service.stop(0)
    return seen


@pytest.mark.parametrize(("age_s", "expect_new_connections"), [(0.3, True), (0.0, False)])
async def test_clients_reconnect_once_a_connection_reaches_its_age(
    age_s: float, expect_new_connections: bool
) -> None:
    peers = await _peers_seen(age_s, calls=4, pause_s=0.6)
    # Each peer is the client's address and port: a new one means a new connection.
    assert (len(peers) > 1) is expect_new_connections, peers
