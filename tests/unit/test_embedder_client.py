"""The embedder client's choice of addresses: retries never repeat an address before trying
every other one, and known-failing connections come last."""

from __future__ import annotations

import functools

import grpc

from cache_server.embedder_client import EmbedderClient


async def test_each_call_tries_every_address_once_in_round_robin_order() -> None:
    client = EmbedderClient(["127.0.0.1:1", "127.0.0.1:2", "127.0.0.1:3"])
    orders = [client._try_order() for _ in range(3)]
    assert [sorted(o) for o in orders] == [[0, 1, 2]] * 3  # every address, once each
    assert [o[0] for o in orders] == [0, 1, 2]  # successive calls start on the next one
    await client.close()


def fixed_state(
    state: grpc.ChannelConnectivity, try_to_connect: bool = False
) -> grpc.ChannelConnectivity:
    return state


async def test_failing_connections_are_tried_last() -> None:
    client = EmbedderClient(["127.0.0.1:1", "127.0.0.1:2"])
    states = [grpc.ChannelConnectivity.TRANSIENT_FAILURE, grpc.ChannelConnectivity.READY]
    for channel, state in zip(client._channels, states, strict=True):
        channel.get_state = functools.partial(fixed_state, state)  # type: ignore[method-assign]
    assert client._try_order()[0] == 1
    assert client._try_order()[0] == 1
    await client.close()
