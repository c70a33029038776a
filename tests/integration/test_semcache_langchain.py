"""SemcacheCache with real langchain-core and fake chat models against a real embedder and
cache server: a paraphrase is served without calling the model; another model, other
parameters or another conversation are not; clear works; sync and async."""

from __future__ import annotations

import uuid
from collections.abc import Iterator
from typing import Any

import pytest
from langchain_core.globals import set_llm_cache
from langchain_core.language_models import FakeListChatModel, FakeListLLM
from langchain_core.load import dumps
from langchain_core.messages import AIMessage, HumanMessage, SystemMessage
from langchain_core.outputs import ChatGeneration

from semcache_client import CacheClient, Unavailable
from semcache_client.langchain import SemcacheCache
from tests.processes import ServiceProcess, free_port

pytestmark = pytest.mark.slow

QUESTION = "What is the capital of France?"
PARAPHRASE = "What's the capital city of France?"


class CountingChatModel(FakeListChatModel):
    """A fake chat model that counts the times it is really called."""

    calls: int = 0

    def _call(self, *args: Any, **kwargs: Any) -> str:
        self.calls += 1
        return super()._call(*args, **kwargs)


class CountingLLM(FakeListLLM):
    calls: int = 0

    def _call(self, *args: Any, **kwargs: Any) -> str:
        self.calls += 1
        return super()._call(*args, **kwargs)


@pytest.fixture()
def cache(cache_server: ServiceProcess) -> Iterator[SemcacheCache]:
    semcache = SemcacheCache(cache_server.address, cache_id=f"lc-{uuid.uuid4().hex[:10]}")
    yield semcache
    semcache.close()


def model(*responses: str) -> CountingChatModel:
    return CountingChatModel(responses=list(responses) or ["Paris is the capital of France."])


def test_set_llm_cache_serves_a_paraphrase_without_calling_the_model(
    cache: SemcacheCache, cache_server: ServiceProcess
) -> None:
    set_llm_cache(cache)
    try:
        chat = model("Paris is the capital of France.", "A second, different answer.")
        first = chat.invoke(QUESTION)
        second = chat.invoke(PARAPHRASE)
    finally:
        set_llm_cache(None)
    assert chat.calls == 1
    assert isinstance(second, AIMessage) and second.content == first.content
    with CacheClient(cache_server.address, cache_id=cache.cache_id) as client:
        stats = client.get_stats()
    # (The first look-up, in a cache that did not exist yet, counted nothing.)
    assert (stats.cache_size, stats.hits) == (1, 1)


def test_another_model_or_other_parameters_are_not_served(cache: SemcacheCache) -> None:
    paris = model("Paris.")
    paris.cache = cache
    assert paris.invoke(QUESTION).content == "Paris."
    other = model("Lyon? (another model's answer)")
    other.cache = cache
    assert other.invoke(PARAPHRASE).content == "Lyon? (another model's answer)"
    assert other.calls == 1
    assert paris.invoke(QUESTION, stop=["\n"]).content == "Paris."  # other parameters: a miss
    assert paris.calls == 2
    assert paris.invoke(PARAPHRASE).content == "Paris." and paris.calls == 2
    assert str(other.invoke(QUESTION).content).startswith("Lyon") and other.calls == 1


def test_the_rest_of_the_conversation_scopes_the_entry(cache: SemcacheCache) -> None:
    chat = model("Paris.", "Paris, but in French.", "Bonjour!")
    chat.cache = cache
    brief = [SystemMessage("Be brief.")]
    chat.invoke([*brief, HumanMessage(QUESTION)])
    assert chat.invoke([*brief, HumanMessage(PARAPHRASE)]).content == "Paris." and chat.calls == 1
    french = [SystemMessage("Answer in French.")]
    assert chat.invoke([*french, HumanMessage(PARAPHRASE)]).content == "Paris, but in French."
    history = [HumanMessage("Hello"), AIMessage("Hi! Ask me anything.")]
    assert chat.invoke([*history, HumanMessage(QUESTION)]).content == "Bonjour!"
    assert chat.calls == 3


def test_clear_deletes_this_caches_entries_or_one_models(
    cache: SemcacheCache, cache_server: ServiceProcess
) -> None:
    chat, other = model("Paris."), model("Paris!")
    chat.cache = other.cache = cache
    chat.invoke(QUESTION)
    other.invoke(QUESTION)
    with CacheClient(cache_server.address, cache_id=cache.cache_id) as client:
        client.set("An entry of someone else", "kept")  # same semcache cache, not LangChain's
        cache.clear(llm_string=chat._get_llm_string())
        chat.invoke(PARAPHRASE)
        other.invoke(PARAPHRASE)
        assert (chat.calls, other.calls) == (2, 1)
        cache.clear()
        assert client.get_stats().cache_size == 1  # only the other client's entry is left
    other.invoke(QUESTION)
    assert other.calls == 2


async def test_async_lookup_update_and_clear(cache: SemcacheCache) -> None:
    chat = model("Paris (async).")
    chat.cache = cache
    first = await chat.ainvoke(QUESTION)
    second = await chat.ainvoke(PARAPHRASE)
    assert second.content == first.content == "Paris (async)." and chat.calls == 1
    await cache.aclear()
    await chat.ainvoke(PARAPHRASE)
    assert chat.calls == 2
    await cache.aclose()


def test_a_text_llm_is_cached_by_its_prompt(cache: SemcacheCache) -> None:
    llm = CountingLLM(responses=["Paris."])
    llm.cache = cache
    assert llm.invoke(QUESTION) == llm.invoke(PARAPHRASE) == "Paris."
    assert llm.calls == 1


def test_a_hit_rebuilds_the_stored_generation_whole(cache: SemcacheCache) -> None:
    llm_string = model()._get_llm_string()
    message = AIMessage(
        "Paris.",
        response_metadata={"model_name": "fake", "finish_reason": "stop"},
        usage_metadata={"input_tokens": 7, "output_tokens": 2, "total_tokens": 9},
        id="run-42",
    )
    cache.update(dumps([HumanMessage(QUESTION)]), llm_string, [ChatGeneration(message=message)])
    found = cache.lookup(dumps([HumanMessage(PARAPHRASE)]), llm_string)
    assert found is not None and len(found) == 1
    (generation,) = found
    assert isinstance(generation, ChatGeneration) and generation.message == message
    assert cache.lookup(dumps([HumanMessage("How do rainbows form?")]), llm_string) is None


def test_a_cache_that_cannot_be_reached_is_a_logged_miss_unless_asked_to_raise(
    caplog: pytest.LogCaptureFixture,
) -> None:
    dead = SemcacheCache(f"127.0.0.1:{free_port()}")
    chat = model("Still answered.")
    chat.cache = dead
    assert chat.invoke(QUESTION).content == "Still answered." and chat.calls == 1
    assert "going on without the cache" in caplog.text
    strict = SemcacheCache(f"127.0.0.1:{free_port()}", raise_errors=True)
    with pytest.raises(Unavailable):
        strict.lookup(QUESTION, "llm")
    dead.close()
    strict.close()


def test_one_asyncio_run_after_another_leaves_no_client_behind(cache: SemcacheCache) -> None:
    """Issue 23, finding 8: the cache kept one async client (and its gRPC channel) per event
    loop for ever: 20 `asyncio.run` look-ups left 20 live channels."""
    import asyncio
    import gc

    import grpc

    def live_channels() -> int:
        gc.collect()
        return sum(isinstance(o, grpc.aio.Channel) for o in gc.get_objects())

    before = live_channels()
    for i in range(20):
        assert asyncio.run(cache.alookup(f"Question {i} never asked?", "llm-a")) is None
    assert live_channels() - before <= 1  # at most the last loop's, until it is used again
