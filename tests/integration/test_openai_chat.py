"""The OpenAI-compatible route with the official `openai` package (sync, async, streaming)
against the three real processes and a fake OpenAI-compatible upstream that counts its calls."""

from __future__ import annotations

import asyncio
import uuid
from collections.abc import Iterator
from typing import Any

import httpx
import openai
import pytest
from openai import AsyncOpenAI, OpenAI
from openai._legacy_response import LegacyAPIResponse
from openai.types.chat import ChatCompletion

from tests.fake_llm import FakeLLM
from tests.integration.conftest import CHAT_OPEN, start_cache_server
from tests.processes import GatewayProcess, ServiceProcess, cache_server_process

MODEL = "gpt-test"
QUESTION = "How do I learn Python quickly?"
PARAPHRASE = "What is the fastest way to learn Python?"


@pytest.fixture(scope="module")
def upstream() -> Iterator[FakeLLM]:
    with FakeLLM(answer=lambda prompt: f"Practice every day ({prompt[:20]})") as server:
        yield server


@pytest.fixture(scope="module")
def chat_server(
    tmp_path_factory: pytest.TempPathFactory, embedder_process: str, upstream: FakeLLM
) -> Iterator[ServiceProcess]:
    server = start_cache_server(
        tmp_path_factory.mktemp("chat-data"), embedder_process, upstream, *CHAT_OPEN
    )
    yield server
    server.stop()


@pytest.fixture(scope="module")
def base_url(chat_server: ServiceProcess) -> Iterator[str]:
    with GatewayProcess(chat_server.address) as process:
        yield f"{process.url}/v1"


@pytest.fixture
def client(base_url: str) -> Iterator[OpenAI]:
    with OpenAI(base_url=base_url, api_key="unused", max_retries=0) as sdk:
        yield sdk


@pytest.fixture
def cache_id() -> str:
    """A cache of each test's own: nothing stored by another test is found."""
    return f"chat-{uuid.uuid4().hex[:10]}"


def ask(
    client: OpenAI, cache_id: str, question: str, model: str = MODEL, **more: Any
) -> LegacyAPIResponse[ChatCompletion]:
    """A non-streamed question in `cache_id`; the raw response, to read the headers."""
    return client.chat.completions.with_raw_response.create(
        model=model,
        messages=[{"role": "user", "content": question}],
        extra_body={"semcache": {"cache_id": cache_id}},
        **more,
    )


def test_a_paraphrase_is_served_from_the_cache_with_no_upstream_call(
    client: OpenAI, upstream: FakeLLM, cache_id: str
) -> None:
    calls = upstream.calls
    miss = ask(client, cache_id, QUESTION)
    assert miss.headers["x-semcache-cache"] == "miss"
    first = miss.parse()
    assert (first.choices[0].message.content or "").startswith("Practice every day")
    assert upstream.calls == calls + 1
    assert upstream.bodies[-1]["model"] == MODEL and "semcache" not in upstream.bodies[-1]

    hit = ask(client, cache_id, PARAPHRASE)
    assert hit.headers["x-semcache-cache"] == "hit"
    assert hit.headers["x-semcache-strategy"] == "semantic"
    assert 0.85 <= float(hit.headers["x-semcache-similarity"]) < 1
    assert hit.headers["x-semcache-entry-id"] == miss.headers["x-semcache-entry-id"]
    served = hit.parse()
    assert upstream.calls == calls + 1
    assert served.object == "chat.completion" and served.model == MODEL
    assert served.choices[0].message.content == first.choices[0].message.content
    assert served.choices[0].finish_reason == "stop"
    assert served.usage is not None and served.usage.total_tokens == 0
    assert served.id.startswith("chatcmpl-") and served.created > 0


def test_the_scope_keeps_other_models_parameters_and_conversations_apart(
    client: OpenAI, upstream: FakeLLM, cache_id: str
) -> None:
    ask(client, cache_id, QUESTION)
    calls = upstream.calls
    assert (
        ask(client, cache_id, QUESTION, model="another-model").headers["x-semcache-cache"] == "miss"
    )
    assert ask(client, cache_id, QUESTION, temperature=1.5).headers["x-semcache-cache"] == "miss"
    other_system = client.chat.completions.with_raw_response.create(
        model=MODEL,
        messages=[
            {"role": "system", "content": "Answer in French."},
            {"role": "user", "content": QUESTION},
        ],
        extra_body={"semcache": {"cache_id": cache_id}},
    )
    assert other_system.headers["x-semcache-cache"] == "miss"
    assert upstream.calls == calls + 3
    # What only changes delivery shares the entry: `user` and `n=1`.
    same = ask(client, cache_id, QUESTION, user="someone-else", n=1)
    assert same.headers["x-semcache-cache"] == "hit" and upstream.calls == calls + 3


def test_a_streamed_miss_is_relayed_and_stored_then_a_streamed_hit_replays_it(
    client: OpenAI, upstream: FakeLLM, cache_id: str
) -> None:
    calls = upstream.calls
    with client.chat.completions.with_streaming_response.create(
        model=MODEL,
        messages=[{"role": "user", "content": QUESTION}],
        stream=True,
        extra_body={"semcache": {"cache_id": cache_id}},
    ) as response:
        assert response.headers["x-semcache-cache"] == "miss"
        assert response.headers["content-type"].startswith("text/event-stream")
        chunks = list(response.parse())
    streamed = "".join(c.choices[0].delta.content or "" for c in chunks if c.choices)
    assert streamed.startswith("Practice every day") and len(chunks) > 3
    assert chunks[-1].choices[0].finish_reason == "stop"
    assert upstream.calls == calls + 1 and upstream.bodies[-1]["stream"] is True

    replay = client.chat.completions.create(
        model=MODEL,
        messages=[{"role": "user", "content": PARAPHRASE}],
        stream=True,
        stream_options={"include_usage": True},
        extra_body={"semcache": {"cache_id": cache_id}},
    )
    again = list(replay)
    assert upstream.calls == calls + 1
    assert "".join(c.choices[0].delta.content or "" for c in again if c.choices) == streamed
    assert again[0].choices[0].delta.role == "assistant"
    assert again[-1].usage is not None and again[-1].usage.total_tokens == 0
    # Not streamed, the same entry answers too.
    whole = ask(client, cache_id, QUESTION).parse()
    assert whole.choices[0].message.content == streamed and upstream.calls == calls + 1


def test_a_stream_that_breaks_off_raises_in_the_sdk_and_stores_nothing(
    client: OpenAI, upstream: FakeLLM, cache_id: str
) -> None:
    upstream.break_stream_after = 3
    try:
        stream = client.chat.completions.create(
            model=MODEL,
            messages=[{"role": "user", "content": "A question cut short?"}],
            stream=True,
            extra_body={"semcache": {"cache_id": cache_id}},
        )
        with pytest.raises(openai.APIError, match="upstream"):
            list(stream)
    finally:
        upstream.break_stream_after = None
    calls = upstream.calls
    retry = ask(client, cache_id, "A question cut short?")
    assert retry.headers["x-semcache-cache"] == "miss" and upstream.calls == calls + 1


async def test_async_client_and_single_flight(
    base_url: str, upstream: FakeLLM, cache_id: str
) -> None:
    """Five concurrent identical misses, streamed and not: one upstream call per kind."""
    upstream.delay_s = 0.5
    calls = upstream.calls
    try:
        async with AsyncOpenAI(base_url=base_url, api_key="unused", max_retries=0) as sdk:

            async def whole() -> str:
                reply = await sdk.chat.completions.create(
                    model=MODEL,
                    messages=[{"role": "user", "content": "Why is the sky blue?"}],
                    extra_body={"semcache": {"cache_id": cache_id, "bypass": True}},
                )
                return reply.choices[0].message.content or ""

            async def streamed() -> str:
                stream = await sdk.chat.completions.create(
                    model=MODEL,
                    messages=[{"role": "user", "content": "Why is the sea salty?"}],
                    stream=True,
                    extra_body={"semcache": {"cache_id": cache_id}},
                )
                return "".join(
                    [c.choices[0].delta.content or "" async for c in stream if c.choices]
                )

            answers = await asyncio.gather(
                *[whole() for _ in range(5)], *[streamed() for _ in range(5)]
            )
    finally:
        upstream.delay_s = 0.0
    assert len(set(answers[:5])) == 1 and len(set(answers[5:])) == 1
    assert all(a.startswith("Practice every day") for a in answers)
    assert upstream.calls == calls + 2


def test_steering_headers_bypass_and_threshold(
    client: OpenAI, upstream: FakeLLM, cache_id: str
) -> None:
    ask(client, cache_id, QUESTION)
    calls = upstream.calls
    strict = client.chat.completions.with_raw_response.create(
        model=MODEL,
        messages=[{"role": "user", "content": PARAPHRASE}],
        extra_headers={"X-Semcache-Cache-Id": cache_id, "X-Semcache-Threshold": "0.999"},
    )
    assert strict.headers["x-semcache-cache"] == "miss" and upstream.calls == calls + 1
    bypass = client.chat.completions.with_raw_response.create(
        model=MODEL,
        messages=[{"role": "user", "content": QUESTION}],
        extra_headers={"X-Semcache-Cache-Id": cache_id, "X-Semcache-Bypass": "true"},
    )
    assert bypass.headers["x-semcache-cache"] == "bypass" and upstream.calls == calls + 2
    exact = ask(client, cache_id, QUESTION)
    assert exact.headers["x-semcache-cache"] == "hit"
    assert exact.headers["x-semcache-strategy"] == "exact"


def test_what_cannot_be_served_from_a_cache_is_passed_through(
    client: OpenAI, upstream: FakeLLM, cache_id: str
) -> None:
    for _ in range(2):
        reply = client.chat.completions.with_raw_response.create(
            model=MODEL,
            messages=[{"role": "user", "content": "What is the weather in Paris?"}],
            tools=[
                {
                    "type": "function",
                    "function": {"name": "weather", "parameters": {"type": "object"}},
                }
            ],
            extra_body={"semcache": {"cache_id": cache_id}},
        )
        assert reply.headers["x-semcache-cache"] == "uncacheable"
        assert "tools" in reply.headers["x-semcache-uncacheable"]
    assert upstream.bodies[-1]["tools"][0]["function"]["name"] == "weather"
    calls = upstream.calls
    several = ask(client, cache_id, QUESTION, n=2)
    assert several.headers["x-semcache-cache"] == "uncacheable" and upstream.calls == calls + 1


def test_errors_keep_the_openai_shape(
    client: OpenAI, base_url: str, upstream: FakeLLM, cache_id: str
) -> None:
    with pytest.raises(openai.BadRequestError) as bad:
        client.chat.completions.create(
            model=MODEL, messages=[], extra_body={"semcache": {"cache_id": cache_id}}
        )
    assert bad.value.status_code == 400 and "messages" in str(bad.value)
    with pytest.raises(openai.BadRequestError, match="threshold"):
        client.chat.completions.create(
            model=MODEL,
            messages=[{"role": "user", "content": QUESTION}],
            extra_headers={"X-Semcache-Threshold": "7"},
        )
    raw = httpx.post(
        f"{base_url}/chat/completions",
        content=b"{not json",
        headers={"content-type": "application/json"},
    )
    assert raw.status_code == 400 and set(raw.json()["error"]) >= {"message", "type", "code"}
    # The upstream's own 429 stays a 429, in the cache server's words (not the upstream's).
    upstream.fail_status = 429
    upstream.fail_body = (
        b'{"error": {"message": "slow down", "type": "requests", "code": "rate_limit_exceeded"}}'
    )
    try:
        with pytest.raises(openai.RateLimitError, match="rate limiting; retry later"):
            ask(client, cache_id, "Something never asked before?")
    finally:
        upstream.fail_status = None
    calls = upstream.calls
    again = ask(client, cache_id, "Something never asked before?")
    assert again.headers["x-semcache-cache"] == "miss" and upstream.calls == calls + 1


def test_an_api_key_is_asked_and_refusals_keep_the_openai_shape(
    chat_server: ServiceProcess,
) -> None:
    key = "k-123456789012345678"
    question = [{"role": "user", "content": QUESTION}]
    with GatewayProcess(chat_server.address, env={"GATEWAY_API_KEY": key}) as gw:
        wrong = OpenAI(base_url=f"{gw.url}/v1", api_key="wrong", max_retries=0)
        with wrong, pytest.raises(openai.AuthenticationError):
            wrong.chat.completions.create(model=MODEL, messages=question)  # type: ignore[arg-type]
        with OpenAI(base_url=f"{gw.url}/v1", api_key=key, max_retries=0) as right:
            reply = right.chat.completions.create(model=MODEL, messages=question)  # type: ignore[arg-type]
            assert reply.choices[0].message.content


def test_a_chat_answer_is_never_served_to_query_or_langcache_search(
    client: OpenAI, base_url: str, upstream: FakeLLM
) -> None:
    """Issue 23, finding 1: a chat turn under "You are a pirate." in the default cache was an
    exact hit for `POST /query {"query": "What is 2+2?"}` (no upstream call), and LangCache's
    entries/search returned it too."""
    root = base_url.removesuffix("/v1")
    question = f"What is 2+2? ({uuid.uuid4().hex[:6]})"
    chat = client.chat.completions.with_raw_response.create(
        model=MODEL,
        messages=[
            {"role": "system", "content": "You are a pirate."},
            {"role": "user", "content": question},
        ],
    )
    assert chat.headers["x-semcache-cache"] == "miss" and chat.headers["x-semcache-cache-id"]
    calls = upstream.calls
    query = httpx.post(f"{root}/query", json={"query": question}, timeout=30).json()
    assert query["cache_hit"] is False and upstream.calls == calls + 1
    search = f"{root}/v1/caches/default/entries/search"
    found = httpx.post(search, json={"prompt": question}, timeout=30).json()
    assert [e["response"] for e in found["data"]] == [query["response"]]  # /query's own only
    # Asked for explicitly, by its scope: there it is.
    scope = chat.headers["x-semcache-chat-scope"]
    named = {"prompt": question, "attributes": {"chat_scope": scope}}
    found = httpx.post(search, json=named, timeout=30).json()
    assert [e["id"] for e in found["data"]] == [chat.headers["x-semcache-entry-id"]]


def test_no_header_reaches_a_cache_the_server_keeps_for_itself(
    client: OpenAI, upstream: FakeLLM
) -> None:
    """Issue 23, finding 3: `X-Semcache-Cache-Id: __reformulations__` was accepted (only the
    body's `semcache.cache_id` was checked)."""
    calls = upstream.calls
    for steer in (
        {"extra_headers": {"X-Semcache-Cache-Id": "__reformulations__"}},
        {"extra_body": {"semcache": {"cache_id": "__reformulations__"}}},
    ):
        with pytest.raises(openai.BadRequestError, match="cache_id"):
            client.chat.completions.create(
                model=MODEL, messages=[{"role": "user", "content": QUESTION}], **steer
            )
    assert upstream.calls == calls


def test_a_long_rag_prompt_is_passed_through_not_refused(
    client: OpenAI, upstream: FakeLLM, cache_id: str
) -> None:
    """Issue 23, finding 8: a last message over 8,192 characters was refused with 400."""
    long = "Context: " + "the quick brown fox " * 600 + "\nQuestion: what jumps?"
    reply = ask(client, cache_id, long)
    assert reply.headers["x-semcache-cache"] == "uncacheable"
    assert "longer than" in reply.headers["x-semcache-uncacheable"]
    assert reply.parse().choices[0].message.content


def test_a_completion_longer_than_the_call_deadlines_is_not_thrown_away(
    tmp_path_factory: pytest.TempPathFactory, embedder_process: str
) -> None:
    """Issue 23, finding 8: the gateway's deadline for every cache-server call (60 s) and the
    upstream's 30 s read timeout cut off long completions and threw the paid-for answer
    away. Here both short deadlines are 1 s and the upstream takes 2 s: the completion still
    arrives, and is stored."""
    with FakeLLM(delay_s=2.0) as slow:
        server = cache_server_process(
            tmp_path_factory.mktemp("slow-chat"),
            embedder_process,
            "--upstream-base-url",
            slow.base_url,
            "--upstream-timeout-s",
            "1",
            *CHAT_OPEN,
        ).start()
        try:
            env = {"GATEWAY_REQUEST_TIMEOUT_S": "1"}
            with GatewayProcess(server.address, env=env) as gateway:
                sdk = OpenAI(base_url=f"{gateway.url}/v1", api_key="unused", max_retries=0)
                reply = ask(sdk, "slow", "Explain caching at length, please?")
                assert reply.headers["x-semcache-cache"] == "miss"
                assert reply.headers.get("x-semcache-entry-id")  # stored
                assert reply.parse().choices[0].message.content
        finally:
            server.stop()
