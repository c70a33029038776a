"""Concurrency over real gRPC: callers that give up mid-flight, and many clients at once."""

from __future__ import annotations

import asyncio
import time
from pathlib import Path

import grpc
import pytest

from protos.semcache.cache.v1 import cache_pb2 as pb
from protos.semcache.cache.v1 import cache_pb2_grpc as pb_grpc
from tests.fake_llm import FakeLLM
from tests.processes import cache_server_process

pytestmark = pytest.mark.slow


async def test_a_caller_that_gives_up_does_not_hang_the_others_on_the_same_miss(
    tmp_path: Path, embedder_process: str
) -> None:
    with (
        FakeLLM(delay_s=0.5) as llm,
        cache_server_process(
            tmp_path, embedder_process, "--upstream-base-url", llm.base_url
        ) as server,
    ):
        async with grpc.aio.insecure_channel(server.address) as channel:
            stub = pb_grpc.CacheServiceStub(channel)
            request = pb.QueryRequest(query="What is the boiling point of water?")
            leader = asyncio.ensure_future(stub.Query(request, timeout=0.15))
            await asyncio.sleep(0.05)
            started = time.monotonic()
            follower = asyncio.ensure_future(stub.Query(request, timeout=10))
            with pytest.raises(grpc.aio.AioRpcError) as gave_up:
                await leader
            assert gave_up.value.code() is grpc.StatusCode.DEADLINE_EXCEEDED
            answer = await follower
            assert time.monotonic() - started < 3, "the follower waited on the leader's fate"
            assert not answer.cache_hit and answer.response.startswith("LLM answer to:")
            assert llm.calls == 1
            # Its answer was stored: the next caller hits.
            again = await stub.Query(request, timeout=10)
            assert again.cache_hit and llm.calls == 1
