"""LangCache conversational search with the official `langcache` SDK (`conversational_search`)
against the real processes (embedder, cache server, gateway) and a fake upstream LLM that
counts its calls: the follow-up is rewritten by the LLM, the rewrite is searched and finds the
entries the SDK stored, and the rewrite is kept (no second LLM call for the same conversation,
through a restarted gateway, another gateway, a restarted cache server, or cache servers that
share a Redis store), never for another conversation; no context or no LLM: the prompt as it
is; bad input is the SDK's 400; an LLM that fails is its 424, and nothing is kept."""

from __future__ import annotations

import asyncio
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest
from langcache import LangCache
from langcache import errors as lc_errors
from langcache.models import SearchStrategy

from gateway.reformulation import REFORMULATION_CACHE_ID, reformulation_prompt
from protos.semcache.cache.v1 import cache_pb2 as pb
from protos.semcache.cache.v1 import cache_pb2_grpc as pb_grpc
from tests.fake_llm import FakeLLM
from tests.processes import (
    GatewayProcess,
    RedisProcess,
    ServiceProcess,
    cache_server_process,
    redis_cache_server,
)

pytestmark = pytest.mark.slow

FRANCE = "What is the capital of France?"
GERMANY = "What is the capital of Germany?"
FOLLOW_UP = "And its population?"
PARIS = "What is the population of Paris?"
BERLIN = "What is the population of Berlin?"
ENTRIES = {
    PARIS: "About 2.1 million people live in Paris proper.",
    BERLIN: "About 3.7 million people live in Berlin.",
    "How tall is the Eiffel Tower?": "330 metres.",
}
# What the fake LLM answers to each reformulation prompt, and to anything else its own text.
REWRITES = {
    reformulation_prompt([FRANCE], FOLLOW_UP): PARIS,
    reformulation_prompt([GERMANY], FOLLOW_UP): BERLIN,
    # A context the embedding model cannot tell from FRANCE (it lowercases): its own rewrite.
    reformulation_prompt([FRANCE.lower()], FOLLOW_UP): "How many people live in Paris?",
    reformulation_prompt([FRANCE], "And its tallest tower?"): '"How tall is the Eiffel Tower?"',
    reformulation_prompt([FRANCE], "And then?"): '""',  # no usable question
}


def rewrite(prompt: str) -> str:
    return REWRITES.get(prompt, f"LLM answer to: {prompt}")


@pytest.fixture(scope="module")
def llm() -> Iterator[FakeLLM]:
    """The upstream of this module's cache server (conftest's `cache_server` and `gateway`)."""
    with FakeLLM(answer=rewrite) as server:
        yield server


@pytest.fixture()
def cache_id(gateway: str) -> str:
    """A fresh cache holding ENTRIES, stored with the SDK's own set."""
    cache_id = f"conv-{uuid.uuid4().hex[:8]}"
    with LangCache(server_url=gateway, cache_id=cache_id, api_key="unused") as lc:
        for prompt, response in ENTRIES.items():
            assert lc.set(prompt=prompt, response=response).entry_id
    return cache_id


def reformulations(cache_server: ServiceProcess) -> pb.GetStatsResponse:
    with cache_server.channel() as channel:
        stub = pb_grpc.CacheServiceStub(channel)
        reply: pb.GetStatsResponse = stub.GetStats(
            pb.GetStatsRequest(cache_id=REFORMULATION_CACHE_ID), timeout=10
        )
        return reply


def test_a_follow_up_finds_the_entry_its_rewrite_means(
    gateway: str, cache_id: str, llm: FakeLLM
) -> None:
    calls = llm.calls
    with LangCache(server_url=gateway, cache_id=cache_id, api_key="unused") as lc:
        found = lc.conversational_search(prompt=FOLLOW_UP, context=[FRANCE])
        assert llm.calls == calls + 1
        # The LLM was asked exactly the documented prompt, as one user message.
        assert llm.prompts[-1] == reformulation_prompt([FRANCE], FOLLOW_UP)
        assert found.actual_prompt == PARIS
        assert [e.prompt for e in found.data] == [PARIS]
        (entry,) = found.data
        assert entry.response == ENTRIES[PARIS] and entry.similarity > 0.99
        assert entry.search_strategy == SearchStrategy.SEMANTIC

        # The follow-up searched as it is finds nothing it means.
        plain = lc.search(prompt=FOLLOW_UP)
        assert [e.prompt for e in plain.data] != [PARIS]

        # The search fields apply to the rewrite: strategies, results, threshold, attributes.
        exact = lc.conversational_search(
            prompt=FOLLOW_UP,
            context=[FRANCE],
            search_strategies=[SearchStrategy.EXACT],
            max_results=3,
        )
        assert [(e.prompt, e.search_strategy) for e in exact.data] == [
            (PARIS, SearchStrategy.EXACT)
        ]
        several = lc.conversational_search(
            prompt=FOLLOW_UP, context=[FRANCE], max_results=3, similarity_threshold=0.0
        )
        assert several.data[0].prompt == PARIS and len(several.data) == 3
        scoped = lc.conversational_search(
            prompt=FOLLOW_UP, context=[FRANCE], attributes={"topic": "none-such"}
        )
        assert scoped.actual_prompt == PARIS and scoped.data == []
        # A rewrite the LLM put in quotes is read without them.
        tower = lc.conversational_search(prompt="And its tallest tower?", context=[FRANCE])
        assert tower.actual_prompt == "How tall is the Eiffel Tower?"
        assert tower.data[0].response == "330 metres."
    # Only the first search and the tower's asked the LLM.
    assert llm.calls == calls + 2


def test_no_context_searches_the_prompt_as_it_is(gateway: str, cache_id: str, llm: FakeLLM) -> None:
    calls = llm.calls
    with LangCache(server_url=gateway, cache_id=cache_id, api_key="unused") as lc:
        contexts: list[list[str] | None] = [None, []]
        for context in contexts:
            found = lc.conversational_search(prompt=PARIS, context=context)
            assert found.actual_prompt == PARIS and found.data[0].prompt == PARIS
    reply = httpx.post(
        f"{gateway}/v1/caches/{cache_id}/conversations/search", json={"prompt": BERLIN}
    )
    assert reply.status_code == 200, reply.text
    assert reply.headers["x-semcache-reformulation"] == "none"
    assert reply.json()["actualPrompt"] == BERLIN
    assert llm.calls == calls


def test_the_same_conversation_costs_one_llm_call_even_after_a_gateway_restart(
    gateway: str, cache_server: ServiceProcess, cache_id: str, llm: FakeLLM
) -> None:
    url = f"{gateway}/v1/caches/{cache_id}/conversations/search"
    body = {"prompt": FOLLOW_UP, "context": [GERMANY]}
    calls = llm.calls
    first = httpx.post(url, json=body)
    assert first.status_code == 200, first.text
    assert first.headers["x-semcache-reformulation"] == "upstream"
    assert llm.calls == calls + 1
    again = httpx.post(url, json=body)
    assert again.headers["x-semcache-reformulation"] == "cached"
    assert again.json() == first.json()
    # Surrounding whitespace of a question is no other conversation.
    spaced = httpx.post(url, json={"prompt": f" {FOLLOW_UP}", "context": [f"{GERMANY}\n"]})
    assert spaced.headers["x-semcache-reformulation"] == "cached"
    assert llm.calls == calls + 1
    # A gateway started afresh, and one beside it: the rewrite is in the cache server's store.
    with (
        GatewayProcess(cache_server.address) as restarted,
        LangCache(server_url=restarted.url, cache_id=cache_id, api_key="unused") as lc,
    ):
        found = lc.conversational_search(prompt=FOLLOW_UP, context=[GERMANY])
        assert found.actual_prompt == BERLIN and found.data[0].prompt == BERLIN

        async def twice() -> None:
            found = await lc.conversational_search_async(prompt=FOLLOW_UP, context=[GERMANY])
            assert found.actual_prompt == BERLIN

        asyncio.run(twice())
    assert llm.calls == calls + 1


def test_another_conversation_is_never_served_the_first_ones_rewrite(
    gateway: str, cache_server: ServiceProcess, cache_id: str, llm: FakeLLM
) -> None:
    with LangCache(server_url=gateway, cache_id=cache_id, api_key="unused") as lc:
        assert lc.conversational_search(prompt=FOLLOW_UP, context=[FRANCE]).actual_prompt == PARIS
        calls = llm.calls
        # The same follow-up after another question.
        other = lc.conversational_search(prompt=FOLLOW_UP, context=[GERMANY])
        assert other.actual_prompt == BERLIN and other.data[0].prompt == BERLIN
        # A context that differs in case only: the embedding model cannot tell it from the
        # first (it lowercases), the reformulation cache does.
        lower = lc.conversational_search(prompt=FOLLOW_UP, context=[FRANCE.lower()])
        assert lower.actual_prompt == "How many people live in Paris?"
        # Both questions as context, or the first twice: other conversations again.
        both = lc.conversational_search(prompt=FOLLOW_UP, context=[FRANCE, GERMANY])
        twice = lc.conversational_search(prompt=FOLLOW_UP, context=[FRANCE, FRANCE])
        assert both.actual_prompt.startswith("LLM answer to: ")
        assert twice.actual_prompt.startswith("LLM answer to: ")
        assert llm.calls == calls + 4
    with LangCache(server_url=gateway, cache_id=f"{cache_id}-b", api_key="unused") as lc:
        lc.set(prompt=FRANCE, response="Paris.")
        # Scoped by cache: another application's cache asks its own LLM call.
        assert lc.conversational_search(prompt=FOLLOW_UP, context=[FRANCE]).actual_prompt == PARIS
        assert llm.calls == calls + 5
        # Why exact match only: to a semantic look-up at the strictest threshold, the case
        # variant is the stored question itself.
        near = lc.search(prompt=FRANCE.lower(), similarity_threshold=1.0)
        assert [(e.prompt, e.similarity) for e in near.data] == [(FRANCE, 1.0)]


def test_bad_input_is_the_sdks_400_naming_the_field(
    gateway: str, cache_id: str, llm: FakeLLM
) -> None:
    calls = llm.calls
    with LangCache(server_url=gateway, cache_id=cache_id, api_key="unused") as lc:
        for context, field in [
            ([FRANCE] * 21, "context"),
            ([FRANCE, ""], "context.1"),
            ([" \n "], "context.0"),
            (["x" * 4000, "y" * 4000], "context"),
        ]:
            with pytest.raises(lc_errors.BadRequestErrorResponseContent) as raised:
                lc.conversational_search(prompt=FOLLOW_UP, context=context)
            error: Any = raised.value
            assert error.raw_response.status_code == 400
            assert error.data.type == "/errors/invalid-data"
            assert [f.field for f in error.data.fields] == [field], error.data
        with pytest.raises(lc_errors.BadRequestErrorResponseContent):
            lc.conversational_search(prompt="  ", context=[FRANCE])
        with pytest.raises(lc_errors.BadRequestErrorResponseContent):
            lc.conversational_search(prompt=FOLLOW_UP, context=[FRANCE], max_results=0)
    # What the SDK's types do not let one send.
    url = f"{gateway}/v1/caches/{cache_id}/conversations/search"
    unsendable: list[tuple[object, str]] = [
        (FRANCE, "context"),
        ([1], "context.0"),
        ([{"q": FRANCE}], "context.0"),
    ]
    for wrong, field in unsendable:
        reply = httpx.post(url, json={"prompt": FOLLOW_UP, "context": wrong})
        assert reply.status_code == 400, reply.text
        assert [f["field"] for f in reply.json()["fields"]] == [field]
    assert llm.calls == calls


def test_a_failing_llm_is_the_sdks_424_and_nothing_is_kept(
    gateway: str, cache_server: ServiceProcess, cache_id: str, llm: FakeLLM
) -> None:
    context = [f"What is the capital of {uuid.uuid4().hex[:6]}?"]
    with LangCache(server_url=gateway, cache_id=cache_id, api_key="unused") as lc:
        calls = llm.calls
        llm.fail_status = 503
        try:
            with pytest.raises(lc_errors.FailedDependencyErrorResponseContent) as raised:
                lc.conversational_search(prompt=FOLLOW_UP, context=context)
        finally:
            llm.fail_status = None
        error: Any = raised.value
        assert error.raw_response.status_code == 424
        assert error.data.type == "/errors/resource-unavailable"
        assert "upstream LLM" in error.data.detail and "127.0.0.1" not in error.data.detail
        assert llm.calls == calls + 1
        # Nothing was kept: the next request asks again, and this time it is kept.
        found = lc.conversational_search(prompt=FOLLOW_UP, context=context)
        assert found.actual_prompt.startswith("LLM answer to: ")
        lc.conversational_search(prompt=FOLLOW_UP, context=context)
        assert llm.calls == calls + 2

        # An answer with no question in it is refused the same way, and not kept either.
        with pytest.raises(lc_errors.FailedDependencyErrorResponseContent) as refused:
            lc.conversational_search(prompt="And then?", context=[FRANCE])
        assert "no usable standalone question" in str(refused.value.data.detail)
        with pytest.raises(lc_errors.FailedDependencyErrorResponseContent):
            lc.conversational_search(prompt="And then?", context=[FRANCE])
        assert llm.calls == calls + 4


def test_the_reformulations_are_out_of_the_rest_apis_reach(
    gateway: str, cache_server: ServiceProcess, cache_id: str
) -> None:
    with LangCache(server_url=gateway, cache_id=cache_id, api_key="unused") as lc:
        lc.conversational_search(prompt=FOLLOW_UP, context=[FRANCE])
    assert reformulations(cache_server).cache_size >= 1
    for method, path in [
        ("POST", f"/v1/caches/{REFORMULATION_CACHE_ID}/flush"),
        ("POST", f"/v1/caches/{REFORMULATION_CACHE_ID}/entries/search"),
        ("DELETE", f"/v1/caches/{REFORMULATION_CACHE_ID}/entries"),
        ("GET", f"/cache/stats?cache_id={REFORMULATION_CACHE_ID}"),
    ]:
        reply = httpx.request(method, f"{gateway}{path}", json={"prompt": FRANCE})
        assert reply.status_code in (400, 422), (path, reply.text)
    assert reformulations(cache_server).cache_size >= 1
    # Flushing the application's own cache leaves its rewrites; they are no answers.
    with LangCache(server_url=gateway, cache_id=cache_id, api_key="unused") as lc:
        lc.flush()
        found = lc.conversational_search(prompt=FOLLOW_UP, context=[FRANCE])
        assert found.actual_prompt == PARIS and found.data == []


def test_without_an_llm_the_prompt_is_searched_as_it_is(
    tmp_path: Path, embedder_process: str
) -> None:
    """The demo responder answers misses: it is never asked for a rewrite, and nothing is
    kept."""
    with (
        cache_server_process(tmp_path / "data", embedder_process) as cache,
        GatewayProcess(cache.address) as gateway,
        LangCache(server_url=gateway.url, cache_id="demo", api_key="unused") as lc,
    ):
        assert httpx.get(f"{gateway.url}/health").json()["demo_responder"] is True
        lc.set(prompt=PARIS, response=ENTRIES[PARIS])
        found = lc.conversational_search(prompt=PARIS, context=[FRANCE])
        assert found.actual_prompt == PARIS and found.data[0].prompt == PARIS
        follow_up = lc.conversational_search(prompt=FOLLOW_UP, context=[FRANCE])
        assert follow_up.actual_prompt == FOLLOW_UP
        reply = httpx.post(
            f"{gateway.url}/v1/caches/demo/conversations/search",
            json={"prompt": FOLLOW_UP, "context": [FRANCE]},
        )
        assert reply.headers["x-semcache-reformulation"] == "no-llm"
        assert "demo responder" not in reply.text
        assert reformulations(cache).cache_size == 0


def test_a_rewrite_outlives_a_cache_server_restart(tmp_path: Path, embedder_process: str) -> None:
    with FakeLLM(answer=rewrite) as llm:
        for _ in range(2):
            with (
                cache_server_process(
                    tmp_path / "data", embedder_process, "--upstream-base-url", llm.base_url
                ) as cache,
                GatewayProcess(cache.address) as gateway,
                LangCache(server_url=gateway.url, cache_id="restart", api_key="unused") as lc,
            ):
                found = lc.conversational_search(prompt=FOLLOW_UP, context=[FRANCE])
                assert found.actual_prompt == PARIS
        assert llm.calls == 1


def test_cache_servers_sharing_a_redis_store_share_the_rewrites(
    tmp_path: Path, embedder_process: str
) -> None:
    """Two gateways, each over its own cache server, both on one Redis: a conversation
    rewritten through one is not rewritten again through the other."""
    prefix = f"conv-{uuid.uuid4().hex[:8]}"
    (tmp_path / "redis").mkdir()
    redis = RedisProcess(tmp_path / "redis").start()
    try:
        with (
            FakeLLM(answer=rewrite) as llm,
            redis_cache_server(
                tmp_path, embedder_process, redis.url, prefix, "--upstream-base-url", llm.base_url
            ) as one,
            redis_cache_server(
                tmp_path, embedder_process, redis.url, prefix, "--upstream-base-url", llm.base_url
            ) as two,
            GatewayProcess(one.address) as first,
            GatewayProcess(two.address) as second,
        ):
            with LangCache(server_url=first.url, cache_id="shared", api_key="unused") as lc:
                lc.set(prompt=BERLIN, response=ENTRIES[BERLIN])
                assert lc.conversational_search(prompt=FOLLOW_UP, context=[GERMANY]).data
            with LangCache(server_url=second.url, cache_id="shared", api_key="unused") as lc:
                found = lc.conversational_search(prompt=FOLLOW_UP, context=[GERMANY])
                assert found.actual_prompt == BERLIN and found.data[0].prompt == BERLIN
                other = lc.conversational_search(prompt=FOLLOW_UP, context=[FRANCE])
                assert other.actual_prompt == PARIS
            assert llm.calls == 2
            assert reformulations(one).cache_size == reformulations(two).cache_size == 2
    finally:
        redis.stop()


def test_the_docs_example_runs_as_written(gateway: str, llm: FakeLLM) -> None:
    docs = (Path(__file__).resolve().parents[2] / "docs" / "rest-api.md").read_text()
    section = docs.split("### Conversational search", 1)[1]
    example = section.split("```python\n", 1)[1].split("```", 1)[0]
    namespace: dict[str, Any] = {}
    exec(example.replace("http://localhost:8000", gateway), namespace)
    found = namespace["found"]
    assert found.actual_prompt == PARIS
    assert found.data[0].response == "About 2.1 million."


def test_the_reserved_cache_counts_among_max_caches(
    tmp_path: Path, embedder_process: str, llm: FakeLLM
) -> None:
    with (
        cache_server_process(
            tmp_path / "data",
            embedder_process,
            "--upstream-base-url",
            llm.base_url,
            "--max-caches",
            "1",
        ) as cache,
        GatewayProcess(cache.address) as gateway,
        LangCache(server_url=gateway.url, cache_id="only", api_key="unused") as lc,
    ):
        lc.set(prompt=PARIS, response=ENTRIES[PARIS])
        with pytest.raises(lc_errors.ForbiddenErrorResponseContent) as refused:
            lc.conversational_search(prompt=FOLLOW_UP, context=[FRANCE])
        assert "max_caches" in str(refused.value.data.detail)
        # Without context nothing is kept: the search itself is served.
        assert lc.conversational_search(prompt=PARIS).data[0].prompt == PARIS
