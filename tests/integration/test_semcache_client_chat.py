"""semcache-client's Chat (a server stream) against a real embedder and cache server whose
upstream is a counting fake LLM: a miss then a paraphrase served from the cache without a
second upstream call, a stream relayed chunk by chunk then stored, uncacheable requests passed
through, upstream errors as events, bad input as InvalidArgument; and, against a scripted gRPC
server, what no real server does on demand: a failure between two events, a stream that stalls
past its deadline, a cancelled stream, the request exactly as sent, never a retry."""

from __future__ import annotations

import asyncio
import json
import time
import uuid
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from typing import Any

import grpc
import pytest

from protos.semcache.cache.v1 import cache_pb2 as pb
from semcache_client import (
    AsyncCacheClient,
    CacheClient,
    Cancelled,
    ChatChunk,
    ChatCompletion,
    ChatEvent,
    ChatHit,
    ChatStored,
    ChatUpstreamError,
    DeadlineExceeded,
    ErrorReason,
    InvalidArgument,
    SearchStrategy,
    Timeouts,
    Unavailable,
)
from tests.fake_llm import FakeLLM
from tests.integration.conftest import CHAT_OPEN, start_cache_server
from tests.processes import ServiceProcess, cache_server_process, free_port

pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def cache_server(
    tmp_path_factory: pytest.TempPathFactory, embedder_process: str, llm: FakeLLM
) -> Iterator[ServiceProcess]:
    """The module's cache server, its chat route open as an operator opens it to its own
    applications (any model, uncacheable requests passed through)."""
    server = start_cache_server(tmp_path_factory.mktemp("chat"), embedder_process, llm, *CHAT_OPEN)
    yield server
    server.stop()


QUESTION = "What is the capital of France?"
PARAPHRASE = "What's the capital city of France?"
MODEL = "fake-model"
OPENAI_ERROR = {
    "error": {
        "message": "Rate limit reached for fake-model",
        "type": "rate_limit_error",
        "param": None,
        "code": "rate_limit_exceeded",
    }
}


def new_cache() -> str:
    return f"chat-{uuid.uuid4().hex[:12]}"


def body(prompt: str, *, stream: bool = False, **extra: Any) -> dict[str, Any]:
    request: dict[str, Any] = {"model": MODEL, "messages": [{"role": "user", "content": prompt}]}
    if stream:
        request["stream"] = True
    return {**request, **extra}


def kinds(events: list[ChatEvent]) -> list[str]:
    return [type(e).__name__ for e in events]


def streamed_text(events: list[ChatEvent]) -> str:
    chunks = [e.data for e in events if isinstance(e, ChatChunk)]
    return "".join(c["choices"][0]["delta"].get("content", "") for c in chunks)


@pytest.fixture()
def fresh_llm(llm: FakeLLM) -> Iterator[FakeLLM]:
    """The module's fake LLM, put back as it was after the test whatever it changed."""
    yield llm
    llm.fail_status, llm.fail_body = None, b'{"error": "failed on purpose"}'
    llm.break_stream_after, llm.delay_s = None, 0.0


def test_a_miss_then_a_paraphrase_served_from_the_cache_without_a_second_upstream_call(
    cache_server: ServiceProcess, fresh_llm: FakeLLM
) -> None:
    scope = {"model": MODEL}
    with CacheClient(cache_server.address, cache_id=new_cache()) as cache:
        calls = fresh_llm.calls
        miss = list(cache.chat(QUESTION, body(QUESTION, temperature=0), attributes=scope))
        assert kinds(miss) == ["ChatCompletion", "ChatStored"]
        completion, stored = miss
        assert isinstance(completion, ChatCompletion) and isinstance(stored, ChatStored)
        answer = f"LLM answer to: {QUESTION}"
        assert completion.data["object"] == "chat.completion"
        assert completion.data["choices"][0]["message"]["content"] == answer
        assert stored.entry_id is not None and len(stored.entry_id) == 32
        assert fresh_llm.calls == calls + 1
        assert fresh_llm.bodies[-1] == body(QUESTION, temperature=0)  # the body as it was given

        (hit,) = cache.chat(PARAPHRASE, body(PARAPHRASE, temperature=0), attributes=scope)
        assert isinstance(hit, ChatHit) and fresh_llm.calls == calls + 1
        assert hit.entry.id == stored.entry_id and hit.entry.response == answer
        assert hit.entry.prompt == QUESTION and hit.entry.attributes["model"] == MODEL
        assert set(hit.entry.attributes) == {"model", "chat_scope"}  # the server's scope too
        assert hit.strategy is SearchStrategy.SEMANTIC and 0.85 <= hit.similarity < 1.0
        (exact,) = cache.chat(QUESTION, body(QUESTION, temperature=0), attributes=scope)
        assert isinstance(exact, ChatHit) and exact.strategy is SearchStrategy.EXACT
        assert exact.similarity == 1.0 and fresh_llm.calls == calls + 1

        # Another scope, a stricter threshold, or no look-up: the upstream answers again.
        other = list(cache.chat(PARAPHRASE, body(PARAPHRASE), attributes={"model": "other"}))
        assert kinds(other) == ["ChatCompletion", "ChatStored"]
        strict = cache.chat(
            PARAPHRASE, body(PARAPHRASE, temperature=0), attributes=scope, similarity_threshold=0.99
        )
        assert kinds(list(strict)) == ["ChatCompletion", "ChatStored"]
        with cache.chat(
            QUESTION, body(QUESTION, temperature=0), attributes=scope, use_cache=False
        ) as again:
            fresh = list(again)
        assert kinds(fresh) == ["ChatCompletion", "ChatStored"]
        assert fresh[1] == stored  # the same prompt and scope: the same entry, replaced
        # The body shapes the answer: without temperature 0 it is another scope.
        unset = list(cache.chat(PARAPHRASE, body(PARAPHRASE), attributes=scope))
        assert kinds(unset) == ["ChatCompletion", "ChatStored"]
        assert fresh_llm.calls == calls + 5
        # A chat answer is chat's own: found by a search only when its scope is named.
        assert cache.search(QUESTION, attributes=scope).hits == []
        assert again.route is not None and again.route.chat_scope and not again.route.uncacheable
        named = {**scope, "chat_scope": again.route.chat_scope}
        found = cache.search(QUESTION, attributes=named, similarity_threshold=0.999)
        assert found.best is not None and found.best.entry.id == stored.entry_id


def test_a_streamed_miss_relays_every_chunk_then_stores_the_answer(
    cache_server: ServiceProcess, fresh_llm: FakeLLM
) -> None:
    prompt = "How do rainbows form?"
    answer = f"LLM answer to: {prompt}"
    with CacheClient(cache_server.address, cache_id=new_cache()) as cache:
        calls = fresh_llm.calls
        with cache.chat(prompt, body(prompt, stream=True), ttl_seconds=600) as stream:
            assert len(stream.request_id) == 32
            events = list(stream)
        *chunks, stored = events
        assert all(isinstance(c, ChatChunk) for c in chunks) and isinstance(stored, ChatStored)
        assert len(chunks) == len(answer.split(" ")) + 2  # the role, one per word, the end
        assert {c.data["object"] for c in chunks if isinstance(c, ChatChunk)} == {
            "chat.completion.chunk"
        }
        assert streamed_text(events) == answer
        assert fresh_llm.calls == calls + 1 and fresh_llm.bodies[-1]["stream"] is True
        assert stream.route is not None and stream.route.chat_scope
        named = {"chat_scope": stream.route.chat_scope}
        found = cache.search(prompt, attributes=named, similarity_threshold=0.99)
        assert found.best is not None and found.best.entry.id == stored.entry_id
        assert found.best.entry.response == answer and found.best.entry.expires_at is not None

        # Asked again as a stream: one hit, whose entry holds the whole text.
        (hit,) = cache.chat("How are rainbows formed?", body("How are rainbows formed?"))
        assert isinstance(hit, ChatHit) and hit.entry.response == answer
        assert fresh_llm.calls == calls + 1


def test_an_uncacheable_request_passes_through_and_stores_nothing(
    cache_server: ServiceProcess, fresh_llm: FakeLLM
) -> None:
    prompt = "Tell me a joke about caches."
    with CacheClient(cache_server.address, cache_id=new_cache()) as cache:
        calls = fresh_llm.calls
        for _ in range(2):
            events = list(cache.chat(prompt, body(prompt), cacheable=False))
            assert kinds(events) == ["ChatCompletion", "ChatStored"]
            assert events[1] == ChatStored(entry_id=None)
        streamed = list(cache.chat("", body(prompt, stream=True), cacheable=False))
        assert isinstance(streamed[-1], ChatStored) and streamed[-1].entry_id is None
        assert streamed_text(streamed) == f"LLM answer to: {prompt}"
        assert fresh_llm.calls == calls + 3  # never looked up
        assert cache.get_stats().cache_size == 0
        assert cache.search(prompt).hits == []


def test_an_upstream_error_is_an_event_and_nothing_is_stored(
    cache_server: ServiceProcess, fresh_llm: FakeLLM
) -> None:
    prompt = "Will this be rate limited?"
    fresh_llm.fail_status, fresh_llm.fail_body = 429, json.dumps(OPENAI_ERROR).encode()
    with CacheClient(cache_server.address, cache_id=new_cache()) as cache:
        for stream in (False, True):
            (failed,) = cache.chat(prompt, body(prompt, stream=stream))
            assert isinstance(failed, ChatUpstreamError) and failed.status == 429
            # Worded by the cache server for the client; the upstream's own body is logged.
            assert failed.message == "the upstream LLM is rate limiting; retry later"
            assert json.loads(failed.body)["error"]["code"] == "rate_limit_exceeded"
            assert "fake-model" not in failed.body
        fresh_llm.fail_status = None
        fresh_llm.break_stream_after = 3  # the connection closes after three chunks
        *relayed, broken = cache.chat(prompt, body(prompt, stream=True))
        assert kinds(relayed) == ["ChatChunk"] * 3  # what came before the failure stands
        assert isinstance(broken, ChatUpstreamError) and broken.status == 0 and broken.message
        assert cache.get_stats().cache_size == 0


def test_bad_input_is_invalid_argument(cache_server: ServiceProcess, fresh_llm: FakeLLM) -> None:
    calls = fresh_llm.calls
    with CacheClient(cache_server.address, cache_id=new_cache()) as cache:
        with pytest.raises(InvalidArgument) as not_an_object:
            list(cache.chat(QUESTION, ["not", "an", "object"], request_id="chat-bad-1"))  # type: ignore[arg-type]
        error = not_an_object.value
        assert error.reason is ErrorReason.INVALID_INPUT and "JSON object" in error.message
        assert (error.request_id, error.method, error.attempts) == ("chat-bad-1", "Chat", 1)
        assert error.address == cache_server.address
        refusals = [
            cache.chat("Another question?", body(QUESTION)),  # the key is the last message
            cache.chat(QUESTION, body(QUESTION), similarity_threshold=1.5),
            cache.chat(QUESTION, body(QUESTION), ttl_seconds=-1.0),
            cache.chat(QUESTION, body(QUESTION), cache_id="no spaces allowed"),
        ]
        for number, stream in enumerate(refusals):
            with pytest.raises(InvalidArgument) as refused:
                next(stream)
            assert refused.value.reason is ErrorReason.INVALID_INPUT, number
        with pytest.raises(ValueError):  # NaN is not JSON: refused before any call
            cache.chat(QUESTION, body(QUESTION, temperature=float("nan")))
    assert fresh_llm.calls == calls


def test_the_deadline_covers_the_whole_call(
    cache_server: ServiceProcess, fresh_llm: FakeLLM
) -> None:
    fresh_llm.delay_s = 3.0
    with CacheClient(cache_server.address) as cache:
        started = time.monotonic()
        slow = f"A slow question {uuid.uuid4().hex}?"
        stream = cache.chat(slow, body(slow), timeout_s=0.5)
        with pytest.raises(DeadlineExceeded) as info:
            next(stream)
        assert time.monotonic() - started < 2.0
    assert info.value.method == "Chat" and info.value.attempts == 1
    assert info.value.request_id == stream.request_id


async def test_asyncio_miss_hit_stream_and_one_upstream_call_for_concurrent_askers(
    cache_server: ServiceProcess, fresh_llm: FakeLLM
) -> None:
    async with AsyncCacheClient(cache_server.address, cache_id=new_cache()) as cache:
        calls = fresh_llm.calls
        miss = [e async for e in cache.chat(QUESTION, body(QUESTION))]
        assert kinds(miss) == ["ChatCompletion", "ChatStored"]
        hit = [e async for e in cache.chat(PARAPHRASE, body(PARAPHRASE))]
        assert kinds(hit) == ["ChatHit"] and fresh_llm.calls == calls + 1
        assert isinstance(hit[0], ChatHit) and hit[0].entry.id == miss[1].entry_id  # type: ignore[union-attr]

        # Three askers of one new question at once: one upstream call, every chunk to each.
        fresh_llm.delay_s = 0.5
        prompt = "Why is the sky blue?"

        async def ask() -> list[ChatEvent]:
            return [e async for e in cache.chat(prompt, body(prompt, stream=True))]

        answers = await asyncio.gather(ask(), ask(), ask())
        assert fresh_llm.calls == calls + 2
        assert answers[0] == answers[1] == answers[2]
        assert streamed_text(answers[0]) == f"LLM answer to: {prompt}"
        assert isinstance(answers[0][-1], ChatStored) and answers[0][-1].entry_id


async def test_asyncio_uncacheable_upstream_error_and_bad_input(
    cache_server: ServiceProcess, fresh_llm: FakeLLM
) -> None:
    async with AsyncCacheClient(cache_server.address, cache_id=new_cache()) as cache:
        calls = fresh_llm.calls
        passed = [e async for e in cache.chat("", body("A joke?", stream=True), cacheable=False)]
        assert passed[-1] == ChatStored(None) and streamed_text(passed) == "LLM answer to: A joke?"
        assert (await cache.get_stats()).cache_size == 0

        fresh_llm.fail_status, fresh_llm.fail_body = 400, json.dumps(OPENAI_ERROR).encode()
        (failed,) = [e async for e in cache.chat("Fails?", body("Fails?"))]
        assert isinstance(failed, ChatUpstreamError) and failed.status == 400
        assert json.loads(failed.body)["error"]["code"] == "rate_limit_exceeded"
        assert fresh_llm.calls == calls + 2

        with pytest.raises(InvalidArgument) as refused:
            async for _ in cache.chat(QUESTION, "just a string", request_id="chat-bad-2"):  # type: ignore[arg-type]
                pass
        assert refused.value.reason is ErrorReason.INVALID_INPUT
        assert refused.value.request_id == "chat-bad-2"

        fresh_llm.fail_status, fresh_llm.delay_s = None, 3.0
        slow = f"Slow {uuid.uuid4().hex}?"
        stream = cache.chat(slow, body(slow), timeout_s=0.5)
        with pytest.raises(DeadlineExceeded):
            await anext(stream)
    assert fresh_llm.calls == calls + 3


# Balancing: calls take turns over the cache servers, as every other call does.


@pytest.fixture(scope="module")
def second_server(
    tmp_path_factory: pytest.TempPathFactory, embedder_process: str, llm: FakeLLM
) -> Iterator[ServiceProcess]:
    server = cache_server_process(
        tmp_path_factory.mktemp("chat-second"),
        embedder_process,
        "--upstream-base-url",
        llm.base_url,
        *CHAT_OPEN,
    )
    server.start()
    yield server
    server.stop()


def sizes(cache_id: str, *servers: ServiceProcess) -> list[int]:
    result = []
    for server in servers:
        with CacheClient(server.address, cache_id=cache_id) as one:
            result.append(one.get_stats().cache_size)
    return result


def test_chat_calls_are_spread_over_every_cache_server(
    cache_server: ServiceProcess, second_server: ServiceProcess
) -> None:
    cache_id = new_cache()
    with CacheClient([cache_server.address, second_server.address], cache_id=cache_id) as both:
        for i in range(4):
            prompt = f"Question number {i} about balancing?"
            events = list(both.chat(prompt, body(prompt), use_cache=False))
            assert kinds(events) == ["ChatCompletion", "ChatStored"]
    assert sizes(cache_id, cache_server, second_server) == [2, 2]


async def test_async_chat_calls_are_spread_over_every_cache_server(
    cache_server: ServiceProcess, second_server: ServiceProcess
) -> None:
    cache_id = new_cache()
    async with AsyncCacheClient([cache_server.address, second_server.address]) as both:

        async def ask(i: int) -> list[ChatEvent]:
            prompt = f"Async question {i} about balancing?"
            chat = both.chat(prompt, body(prompt), cache_id=cache_id, use_cache=False)
            return [e async for e in chat]

        answers = await asyncio.gather(*(ask(i) for i in range(6)))
    assert all(isinstance(a[-1], ChatStored) and a[-1].entry_id for a in answers)
    assert sizes(cache_id, cache_server, second_server) == [3, 3]


# A scripted cache server: a real gRPC server on a real socket whose Chat does, per call,
# what its `mode` says; it keeps every request and request id it was sent.


class ScriptedChat:
    def __init__(self) -> None:
        self.mode = "refuse"
        self.requests: list[pb.ChatRequest] = []
        self.request_ids: list[str] = []
        self.stopped_early = 0
        handler = grpc.unary_stream_rpc_method_handler(
            self._chat,
            request_deserializer=pb.ChatRequest.FromString,
            response_serializer=pb.ChatEvent.SerializeToString,
        )
        self.server = grpc.server(ThreadPoolExecutor(4))
        self.server.add_generic_rpc_handlers(
            (
                grpc.method_handlers_generic_handler(
                    "semcache.cache.v1.CacheService", {"Chat": handler}
                ),
            )
        )
        self.port = self.server.add_insecure_port("127.0.0.1:0")

    @property
    def address(self) -> str:
        return f"127.0.0.1:{self.port}"

    def _chat(
        self, request: pb.ChatRequest, context: grpc.ServicerContext
    ) -> Iterator[pb.ChatEvent]:
        self.requests.append(request)
        self.request_ids.append(str(dict(context.invocation_metadata())["x-request-id"]))
        if self.mode == "refuse":
            context.set_trailing_metadata((("semcache-error-reason", "embedder-unavailable"),))
            context.abort(grpc.StatusCode.UNAVAILABLE, "embedder unavailable (on purpose)")
        finished = False
        try:
            yield pb.ChatEvent(chunk_json='{"n": 1}')
            yield pb.ChatEvent()  # an event of a kind a newer server might send: skipped
            yield pb.ChatEvent(chunk_json='{"n": 2}')
            if self.mode == "break":
                context.set_trailing_metadata((("semcache-error-reason", "interrupted"),))
                context.abort(grpc.StatusCode.UNAVAILABLE, "cut short on purpose")
            if self.mode == "stall":
                for _ in range(100):
                    if not context.is_active():
                        return
                    time.sleep(0.05)
            yield pb.ChatEvent(stored=pb.ChatStored(entry_id="e" * 32))
            finished = True
        finally:  # also when grpc drops the generator of a call that ended
            if self.mode == "stall" and not finished:
                self.stopped_early += 1


@pytest.fixture()
def scripted() -> Iterator[ScriptedChat]:
    server = ScriptedChat()
    server.server.start()
    yield server
    server.server.stop(0)


def test_every_argument_reaches_the_server_as_typed(scripted: ScriptedChat) -> None:
    scripted.mode = "answer"
    with CacheClient(scripted.address, cache_id="client-default") as cache:
        events = list(
            cache.chat(
                "the prompt",
                {"model": MODEL, "messages": [], "stream": True, "note": "café"},
                attributes={"model": MODEL, "tenant": "t1"},
                use_cache=False,
                similarity_threshold=0.9,
                ttl_seconds=60.0,
                request_id="chat-trace-1",
            )
        )
        list(cache.chat("plain", {"model": MODEL}, cache_id="other", cacheable=False, stream=True))
    assert events == [ChatChunk('{"n": 1}'), ChatChunk('{"n": 2}'), ChatStored("e" * 32)]
    first, second = scripted.requests
    assert (first.cache_id, first.prompt, dict(first.attributes)) == (
        "client-default",
        "the prompt",
        {"model": MODEL, "tenant": "t1"},
    )
    assert json.loads(first.body_json) == {
        "model": MODEL,
        "messages": [],
        "stream": True,
        "note": "café",
    }
    assert first.stream and first.cacheable  # stream: as the body asks
    assert first.HasField("use_cache") and not first.use_cache
    assert first.similarity_threshold == 0.9 and first.ttl_seconds == 60.0
    assert (second.cache_id, second.cacheable, second.stream) == ("other", False, True)
    assert second.use_cache and not second.HasField("similarity_threshold")
    assert not second.HasField("ttl_seconds")
    assert scripted.request_ids[0] == "chat-trace-1" and len(scripted.request_ids[1]) == 32


def test_chat_is_never_retried(
    scripted: ScriptedChat, cache_server: ServiceProcess, llm: FakeLLM
) -> None:
    calls = llm.calls
    with CacheClient([scripted.address, cache_server.address]) as cache:
        stream = cache.chat(QUESTION, body(QUESTION), request_id="chat-once")
        with pytest.raises(Unavailable) as info:
            list(stream)
    error = info.value
    assert (error.attempts, error.address, error.request_id) == (1, scripted.address, "chat-once")
    assert error.reason is ErrorReason.EMBEDDER_UNAVAILABLE and error.method == "Chat"
    assert scripted.request_ids == ["chat-once"] and llm.calls == calls


def test_a_failure_between_two_events_raises_after_the_events_before_it(
    scripted: ScriptedChat,
) -> None:
    scripted.mode = "break"
    received: list[ChatEvent] = []
    with CacheClient(scripted.address) as cache, pytest.raises(Unavailable) as info:
        for event in cache.chat(QUESTION, body(QUESTION), request_id="chat-mid-1"):
            received.append(event)
    assert received == [ChatChunk('{"n": 1}'), ChatChunk('{"n": 2}')]
    assert info.value.reason is ErrorReason.INTERRUPTED
    assert info.value.message == "cut short on purpose"
    assert (info.value.request_id, info.value.attempts) == ("chat-mid-1", 1)
    assert len(scripted.requests) == 1


def test_a_stream_that_stalls_past_its_deadline_and_one_cancelled(scripted: ScriptedChat) -> None:
    scripted.mode = "stall"
    with CacheClient(scripted.address) as cache:
        started = time.monotonic()
        stream = cache.chat(QUESTION, body(QUESTION), timeout_s=0.6)
        assert next(stream) == ChatChunk('{"n": 1}')
        assert next(stream) == ChatChunk('{"n": 2}')
        with pytest.raises(DeadlineExceeded) as info:
            next(stream)  # the deadline is the whole stream's, not each event's
        assert 0.5 < time.monotonic() - started < 2.0
        assert info.value.request_id == stream.request_id

        with cache.chat(QUESTION, body(QUESTION)) as cancelled:
            assert next(cancelled) == ChatChunk('{"n": 1}')
            cancelled.cancel()
            with pytest.raises(Cancelled):
                next(cancelled)
    deadline = time.monotonic() + 5
    while scripted.stopped_early < 2 and time.monotonic() < deadline:
        time.sleep(0.05)
    assert scripted.stopped_early == 2  # the server saw both calls end


async def test_asyncio_never_retried_failures_between_events_deadline_and_cancel(
    scripted: ScriptedChat, cache_server: ServiceProcess
) -> None:
    async with AsyncCacheClient([scripted.address, cache_server.address]) as cache:
        with pytest.raises(Unavailable) as refused:
            async for _ in cache.chat(QUESTION, body(QUESTION), request_id="chat-async-1"):
                pass
        assert refused.value.attempts == 1 and refused.value.address == scripted.address
        assert scripted.request_ids == ["chat-async-1"]

    async with AsyncCacheClient(scripted.address) as cache:
        scripted.mode = "break"
        received: list[ChatEvent] = []
        with pytest.raises(Unavailable) as broken:
            async for event in cache.chat(QUESTION, body(QUESTION)):
                received.append(event)
        assert received == [ChatChunk('{"n": 1}'), ChatChunk('{"n": 2}')]
        assert broken.value.reason is ErrorReason.INTERRUPTED

        scripted.mode = "stall"
        stream = cache.chat(QUESTION, body(QUESTION), timeout_s=0.6)
        assert [await anext(stream), await anext(stream)] == [
            ChatChunk('{"n": 1}'),
            ChatChunk('{"n": 2}'),
        ]
        with pytest.raises(DeadlineExceeded):
            await anext(stream)

        async with cache.chat(QUESTION, body(QUESTION), request_id="chat-cancel") as cancelled:
            assert await anext(cancelled) == ChatChunk('{"n": 1}')
            cancelled.cancel()
            with pytest.raises(Cancelled) as info:
                await anext(cancelled)
        assert info.value.request_id == "chat-cancel"

        scripted.mode = "answer"
        events = [e async for e in cache.chat(QUESTION, body(QUESTION))]
        assert events[-1] == ChatStored("e" * 32) and len(events) == 3

    with pytest.raises(RuntimeError, match="closed"):
        cache.chat(QUESTION, body(QUESTION))


def test_a_closed_client_refuses_to_chat(cache_server: ServiceProcess) -> None:
    cache = CacheClient(cache_server.address)
    cache.close()
    with pytest.raises(RuntimeError, match="closed"):
        cache.chat(QUESTION, body(QUESTION))


def test_the_request_id_reaches_the_cache_servers_log(cache_server: ServiceProcess) -> None:
    trace = f"chat-log-{uuid.uuid4().hex[:8]}"
    with CacheClient(cache_server.address, request_id_factory=lambda: trace) as cache:
        stream = cache.chat("Is this logged?", body("Is this logged?"))
        assert stream.request_id == trace
        list(stream)
    deadline = time.monotonic() + 3
    while trace not in cache_server.log() and time.monotonic() < deadline:
        time.sleep(0.05)
    assert f"[{trace}]" in cache_server.log()


# Issue 23: a stored chat answer is served only to the request it was stored for.


def conversation(system: str, question: str, **extra: Any) -> dict[str, Any]:
    messages = [{"role": "system", "content": system}, {"role": "user", "content": question}]
    return {"model": MODEL, "messages": messages, **extra}


def test_the_cache_server_scopes_a_chat_answer_by_the_whole_body_for_every_caller(
    cache_server: ServiceProcess, fresh_llm: FakeLLM
) -> None:
    """Finding 2: the Chat RPC keyed on prompt and attributes only, so a call with the system
    prompt "Answer with a number only." got the pirate's answer. Finding 1 (gRPC side): a
    chat answer was found by plain Query and Search look-ups in the same cache."""
    question = f"What is 2+2? ({uuid.uuid4().hex[:6]})"
    with CacheClient(cache_server.address, cache_id=new_cache()) as cache:
        calls = fresh_llm.calls
        pirate = list(cache.chat(question, conversation("You are a pirate.", question)))
        assert kinds(pirate) == ["ChatCompletion", "ChatStored"]
        number = list(cache.chat(question, conversation("Answer with a number only.", question)))
        assert kinds(number) == ["ChatCompletion", "ChatStored"]
        assert fresh_llm.calls == calls + 2
        assert fresh_llm.bodies[-1]["messages"][0]["content"] == "Answer with a number only."
        with cache.chat("", conversation("You are a pirate.", question)) as again:
            (hit,) = again  # the prompt read from the body by the server
        assert isinstance(hit, ChatHit) and hit.entry.id == pirate[1].entry_id  # type: ignore[union-attr]
        # Other parameters, or attributes that are not exactly the stored ones: other scopes.
        for other, attributes in (
            (conversation("You are a pirate.", question, temperature=1.5), {}),
            (conversation("You are a pirate.", question, seed=7), {}),
            (conversation("You are a pirate.", question), {"tenant": "b"}),
        ):
            assert kinds(list(cache.chat("", other, attributes=attributes)))[0] != "ChatHit"
        assert fresh_llm.calls == calls + 5
        # Plain look-ups in the same cache never see chat answers.
        assert cache.search(question, strategies=list(SearchStrategy)).hits == []
        plain = cache.query(question)
        assert plain.cached_data is None and fresh_llm.calls == calls + 6


def test_the_calls_stream_flag_decides_what_the_upstream_is_asked(
    cache_server: ServiceProcess, fresh_llm: FakeLLM
) -> None:
    """Finding 7: chat(stream=True) with a body lacking "stream": true failed ("stream ended
    without [DONE]"); the reverse returned SSE text as a completion."""
    with CacheClient(cache_server.address, cache_id=new_cache()) as cache:
        streamed_prompt = "Does the stream flag win?"
        events = list(cache.chat(streamed_prompt, body(streamed_prompt), stream=True))
        assert isinstance(events[-1], ChatStored) and events[-1].entry_id
        assert streamed_text(events) == f"LLM answer to: {streamed_prompt}"
        assert fresh_llm.bodies[-1]["stream"] is True
        whole_prompt = "Does a whole answer come back?"
        asked = body(whole_prompt, stream=True, stream_options={"include_usage": True})
        (completion, stored) = cache.chat(whole_prompt, asked, stream=False)
        assert isinstance(completion, ChatCompletion) and isinstance(stored, ChatStored)
        assert completion.data["object"] == "chat.completion"
        assert "stream" not in fresh_llm.bodies[-1] and "stream_options" not in fresh_llm.bodies[-1]


def test_chat_cannot_reach_a_cache_the_server_keeps_for_itself(
    cache_server: ServiceProcess, fresh_llm: FakeLLM
) -> None:
    """Finding 3: a chat entry could be written into `__reformulations__`, where it became
    another application's conversational rewrite."""
    calls = fresh_llm.calls
    with CacheClient(cache_server.address) as cache:
        with pytest.raises(InvalidArgument) as refused:
            list(cache.chat(QUESTION, body(QUESTION), cache_id="__reformulations__"))
        assert "reserved" in refused.value.message
        with pytest.raises(InvalidArgument):  # nor can anyone store the server's own scope
            cache.set(QUESTION, "forged", attributes={"chat_scope": "0" * 32})
    assert fresh_llm.calls == calls


def test_long_prompts_and_a_cache_that_is_down_are_passed_through_uncached(
    tmp_path_factory: pytest.TempPathFactory, llm: FakeLLM
) -> None:
    """Finding 8: a last message over the prompt limit (a RAG prompt) was refused with 400,
    and an embedder that is down made chat fail with 503, where the upstream could answer."""
    dead_embedder = f"127.0.0.1:{free_port()}"
    server = cache_server_process(
        tmp_path_factory.mktemp("chat-no-embedder"),
        dead_embedder,
        "--upstream-base-url",
        llm.base_url,
        "--embedder-timeout-s",
        "1",
        *CHAT_OPEN,
    ).start(wait_serving=False)
    try:
        with CacheClient(server.address, timeouts=Timeouts(query_s=20)) as cache:
            calls = llm.calls
            down_prompt = "Is the cache down?"
            with cache.chat(down_prompt, body(down_prompt)) as down:
                events = list(down)
            assert kinds(events) == ["ChatCompletion", "ChatStored"]
            assert events[1] == ChatStored(None)
            assert down.route is not None and down.route.uncacheable == "the cache is unavailable"
            long = "Context: " + "lorem ipsum " * 1000 + "\nQuestion: what is it about?"
            with cache.chat(long, body(long)) as passed:
                events = list(passed)
            assert kinds(events) == ["ChatCompletion", "ChatStored"] and llm.calls == calls + 2
            assert passed.route is not None and "longer than" in (passed.route.uncacheable or "")
    finally:
        server.stop()
