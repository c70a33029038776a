"""The whole API under one model-based test (issue 23): a stored answer is served only to a
request it was stored for, on every surface, on both stores.

Hypothesis drives a real stack (embedder, cache server, gateway; the embedded store, then
Redis) through random sequences of REST `/query`, the LangCache API (set, search, delete by
id and by attributes, flush, conversational search with and without context), OpenAI chat
(with and without a stream), the gRPC `Query`, `Set`, `Search` and `Chat` RPCs through the
client library, feedback and the cache's hit policy, over a few cache ids, attribute sets, chat
bodies (system prompt, model, sampling parameters) and questions with paraphrases. A plain
model records what was stored under which scope. Every answer the upstream gives and every
answer the test stores is unique, so a served answer names the one record it came from; after
every step each served answer must come from a live record stored under the request's scope:

- a plain look-up (`/query`, search, `Query`, `Search`) in cache C within attributes A: a plain
  entry (no chat scope) of cache C carrying every attribute of A (LangCache's filter rule);
- a chat request in cache C with attributes A and body B: a chat entry of cache C stored with
  exactly A by a body that differs from B only in its last message's text;
- never an entry deleted, flushed, or reported wrong for that very prompt since.

The embedding model is one export throughout (the model identity is covered by
test_model_identity). Bounded: a fixed number of examples and steps per store.
"""

from __future__ import annotations

import collections
import itertools
import json
import uuid
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from typing import Any, ClassVar, TypeVar

import httpx
import pytest
from hypothesis import HealthCheck, settings
from hypothesis import strategies as st
from hypothesis.stateful import RuleBasedStateMachine, initialize, invariant, rule

from semcache_client import CacheClient, ChatHit, ChatStored, SearchStrategy
from tests.fake_llm import FakeLLM
from tests.integration.conftest import CHAT_OPEN
from tests.processes import (
    GatewayProcess,
    RedisProcess,
    ServiceProcess,
    cache_server_process,
    redis_cache_server,
)

pytestmark = pytest.mark.slow

# Questions in groups of paraphrases (semantic hits happen within a group at 0.85).
QUESTIONS = [
    "How do I learn Python quickly?",
    "What is the fastest way to learn Python?",
    "What is the capital of France?",
    "What's the capital city of France?",
    "How do I boil an egg?",
    "How to boil eggs?",
]
ATTRIBUTES: list[dict[str, str]] = [{}, {"tenant": "a"}, {"tenant": "b"}, {"tenant": "a", "u": "1"}]
# Chat scopes (attributes, system prompt, model, more parameters): the usual one half the time,
# so that repeats and hits happen, and each of the others often enough to be tried against it.
USUAL: tuple[dict[str, str], str | None, str, dict[str, Any]] = ({}, None, "model-x", {})
CHAT_SCOPES = [USUAL] * 6 + [
    ({"tenant": "a"}, None, "model-x", {}),
    ({"tenant": "a", "u": "1"}, None, "model-x", {}),
    ({}, "You are a pirate.", "model-x", {}),
    ({}, "Answer with a number only.", "model-x", {}),
    ({}, None, "model-y", {}),
    ({}, None, "model-x", {"temperature": 0}),
    ({}, None, "model-x", {"seed": 7}),
]
# Cache indexes: the default cache half the time.
CACHES = st.sampled_from([0, 0, 0, 1, 1, 2])
COUNTER = itertools.count()


def answer(prompt: str) -> str:
    """Every upstream answer is unique (and a question, so a conversation's rewrite is one)."""
    return f"Upstream answer number {next(COUNTER)}?"


@dataclass
class Record:
    """One stored answer, as the model knows it."""

    cache_id: str
    prompt: str
    attributes: dict[str, str]
    chat: str | None  # the body's shape (all but the last message's text) for a chat answer
    entry_id: str | None = None
    alive: bool = True
    excluded_for: set[str] = field(default_factory=set)  # prompts it was reported wrong for


@dataclass
class Stack:
    store: str
    rest: str
    grpc: str
    llm: FakeLLM


def chat_shape(system: str | None, model: str, extra: dict[str, Any]) -> str:
    return json.dumps([system, model, sorted(extra.items())])


def chat_body(
    system: str | None, model: str, extra: dict[str, Any], question: str, stream: bool = False
) -> dict[str, Any]:
    messages = [{"role": "system", "content": system}] if system else []
    body: dict[str, Any] = {
        "model": model,
        "messages": [*messages, {"role": "user", "content": question}],
    }
    if stream:
        body["stream"] = True
    return {**body, **extra}


# Each step is one action drawn by weight. One rule that draws its action, rather than a
# rule per action: Hypothesis's stateful runner switches rules off at random per example
# ("swarm testing"), which left whole surfaces (chat) unexercised in some runs.
ACTIONS: dict[str, tuple[int, dict[str, Any]]] = {}
DATA = object()  # an action's parameter that is the step's own data object (later draws)
F = TypeVar("F", bound=Callable[..., None])


def action(weight: int = 1, **strategies: Any) -> Callable[[F], F]:
    def register(method: F) -> F:
        ACTIONS[method.__name__] = (weight, strategies)
        return method

    return register


class ScopeModel(RuleBasedStateMachine):
    stack: Stack
    tally: ClassVar[collections.Counter[str]] = collections.Counter()

    def __init__(self) -> None:
        super().__init__()
        run = uuid.uuid4().hex[:8]
        self.caches = ["default", f"sm-{run}-a", f"sm-{run}-b"]
        self.records: dict[str, Record] = {}  # by the answer's text
        self.served: list[tuple[str, str, str, dict[str, str], str | None]] = []
        self.http = httpx.Client(base_url=self.stack.rest, timeout=60)
        self.client = CacheClient(self.stack.grpc)

    def teardown(self) -> None:
        self.http.close()
        self.client.close()

    # -- what a served answer must be ----------------------------------------------------

    def serve(
        self,
        response: str,
        cache_id: str,
        prompt: str,
        attributes: dict[str, str],
        chat: str | None,
    ) -> None:
        self.served.append((response, cache_id, prompt, attributes, chat))
        self.tally["served chat" if chat is not None else "served plain"] += 1

    @invariant()
    def every_served_answer_was_stored_for_its_request(self) -> None:
        self.tally["steps"] += 1
        for response, cache_id, prompt, attributes, chat in self.served:
            record = self.records.get(response)
            assert record is not None, f"served an answer never stored: {response!r}"
            where = f"{response!r} (stored {record}) served in {cache_id} {attributes} {chat}"
            assert record.alive, f"served a deleted answer: {where}"
            assert record.cache_id == cache_id, f"another cache's answer: {where}"
            assert record.chat == chat, f"another surface's answer: {where}"
            if chat is None:
                assert all(record.attributes.get(k) == v for k, v in attributes.items()), where
            else:
                assert record.attributes == attributes, f"another chat scope: {where}"
            assert prompt.strip() not in record.excluded_for, f"reported wrong: {where}"
        self.served.clear()

    def _stored(self, text: str, record: Record) -> None:
        if record.entry_id is not None:  # the same id replaces an entry: the old one is gone
            for other in self.records.values():
                if other.entry_id == record.entry_id and other.cache_id == record.cache_id:
                    other.alive = False
        self.records[text] = record

    # -- set up --------------------------------------------------------------------------

    @initialize()
    def empty_the_default_cache(self) -> None:
        assert self.http.post("/v1/caches/default/flush").status_code == 204

    @rule(data=st.data())
    def step(self, data: st.DataObject) -> None:
        names = [name for name, (weight, _) in sorted(ACTIONS.items()) for _ in range(weight)]
        name = data.draw(st.sampled_from(names), label="action")
        kwargs = {
            key: data if strategy is DATA else data.draw(strategy, label=key)
            for key, strategy in ACTIONS[name][1].items()
        }
        self.tally[name] += 1
        getattr(self, name)(**kwargs)

    # -- REST ----------------------------------------------------------------------------

    @action(question=st.sampled_from(QUESTIONS), use_cache=st.booleans())
    def rest_query(self, question: str, use_cache: bool) -> None:
        body = {"query": question, "use_cache": use_cache}
        reply = self.http.post("/query", json=body)
        assert reply.status_code == 200, reply.text
        data = reply.json()
        if data["cache_hit"]:
            self.serve(data["response"], "default", question, {}, None)
        else:
            self._stored(data["response"], Record("default", question, {}, None))

    @action(
        cache=CACHES,
        question=st.sampled_from(QUESTIONS),
        attributes=st.sampled_from(ATTRIBUTES),
        ttl=st.sampled_from([None, 3_600_000]),
    )
    def langcache_set(
        self, cache: int, question: str, attributes: dict[str, str], ttl: int | None
    ) -> None:
        text = f"Stored answer number {next(COUNTER)}"
        body: dict[str, Any] = {"prompt": question, "response": text, "attributes": attributes}
        if ttl is not None:
            body["ttlMillis"] = ttl
        reply = self.http.post(f"/v1/caches/{self.caches[cache]}/entries", json=body)
        assert reply.status_code == 201, reply.text
        entry_id = reply.json()["entryId"]
        self._stored(text, Record(self.caches[cache], question, attributes, None, entry_id))

    @action(
        cache=CACHES,
        question=st.sampled_from(QUESTIONS),
        attributes=st.sampled_from(ATTRIBUTES),
        exact_first=st.booleans(),
        context=st.sampled_from([None, [], ["Tell me about Python."]]),
    )
    def langcache_search(
        self,
        cache: int,
        question: str,
        attributes: dict[str, str],
        exact_first: bool,
        context: list[str] | None,
    ) -> None:
        cache_id = self.caches[cache]
        body: dict[str, Any] = {"prompt": question, "attributes": attributes, "maxResults": 5}
        if exact_first:
            body["searchStrategies"] = ["exact", "semantic"]
        path = f"/v1/caches/{cache_id}/entries/search"
        if context is not None:
            body["context"] = context
            path = f"/v1/caches/{cache_id}/conversations/search"
        reply = self.http.post(path, json=body)
        assert reply.status_code == 200, reply.text
        asked = reply.json().get("actualPrompt", question)
        for entry in reply.json()["data"]:
            self.serve(entry["response"], cache_id, asked, attributes, None)

    @action(cache=CACHES, data=DATA)
    def langcache_delete_one(self, cache: int, data: st.DataObject) -> None:
        cache_id = self.caches[cache]
        known = sorted(
            (r.entry_id for r in self.records.values() if r.cache_id == cache_id and r.entry_id),
        )
        if not known:
            return
        entry_id = data.draw(st.sampled_from(known))
        reply = self.http.delete(f"/v1/caches/{cache_id}/entries/{entry_id}")
        assert reply.status_code in (204, 404), reply.text
        for record in self.records.values():
            if record.cache_id == cache_id and record.entry_id == entry_id:
                record.alive = False

    @action(cache=CACHES, attributes=st.sampled_from(ATTRIBUTES[1:]))
    def langcache_delete_by_attributes(self, cache: int, attributes: dict[str, str]) -> None:
        cache_id = self.caches[cache]
        reply = self.http.request(
            "DELETE", f"/v1/caches/{cache_id}/entries", json={"attributes": attributes}
        )
        assert reply.status_code == 200, reply.text
        for record in self.records.values():
            carried = all(record.attributes.get(k) == v for k, v in attributes.items())
            if record.cache_id == cache_id and carried:
                record.alive = False

    @action(cache=CACHES)
    def langcache_flush(self, cache: int) -> None:
        cache_id = self.caches[cache]
        assert self.http.post(f"/v1/caches/{cache_id}/flush").status_code == 204
        for record in self.records.values():
            if record.cache_id == cache_id:
                record.alive = False

    @action(
        weight=3,
        cache=CACHES,
        question=st.sampled_from(QUESTIONS),
        scope=st.sampled_from(CHAT_SCOPES),
        stream=st.booleans(),
        bypass=st.sampled_from([False] * 5 + [True]),
    )
    def rest_chat(
        self,
        cache: int,
        question: str,
        scope: tuple[dict[str, str], str | None, str, dict[str, Any]],
        stream: bool,
        bypass: bool,
    ) -> None:
        attributes, system, model, extra = scope
        cache_id = self.caches[cache]
        body = chat_body(system, model, extra, question, stream)
        steering: dict[str, Any] = {"attributes": attributes, "bypass": bypass}
        if cache_id != "default" or cache % 2:  # both ways of naming the default cache
            steering["cache_id"] = cache_id
        body["semcache"] = steering
        reply = self.http.post("/v1/chat/completions", json=body)
        assert reply.status_code == 200, reply.text
        if stream:
            events = [
                json.loads(line[6:])
                for line in reply.text.splitlines()
                if line.startswith("data: ") and line != "data: [DONE]"
            ]
            text = "".join(
                c["choices"][0]["delta"].get("content") or "" for c in events if c["choices"]
            )
        else:
            text = reply.json()["choices"][0]["message"]["content"]
        shape = chat_shape(system, model, extra)
        self.tally["rest chat " + reply.headers["x-semcache-cache"]] += 1
        if reply.headers["x-semcache-cache"] == "hit":
            self.serve(text, cache_id, question, attributes, shape)
        else:
            entry_id = reply.headers.get("x-semcache-entry-id")
            self._stored(text, Record(cache_id, question, attributes, shape, entry_id))

    @action(cache=CACHES, data=DATA, correct=st.booleans())
    def feedback(self, cache: int, data: st.DataObject, correct: bool) -> None:
        cache_id = self.caches[cache]
        known = [
            r for r in self.records.values() if r.cache_id == cache_id and r.entry_id and r.alive
        ]
        if not known:
            return
        record = data.draw(st.sampled_from(sorted(known, key=lambda r: r.entry_id or "")))
        prompt = data.draw(st.sampled_from(QUESTIONS))
        reply = self.http.post(
            f"/v1/caches/{cache_id}/entries/{record.entry_id}/feedback",
            json={"prompt": prompt, "correct": correct},
        )
        assert reply.status_code in (201, 404), reply.text
        if reply.status_code == 201 and not correct:
            for same in self.records.values():  # the entry's current answer, by its id
                if same.entry_id == record.entry_id and same.cache_id == cache_id:
                    same.excluded_for.add(prompt.strip())
        elif reply.status_code == 201:
            for same in self.records.values():
                if same.entry_id == record.entry_id and same.cache_id == cache_id:
                    same.excluded_for.discard(prompt.strip())

    @action(cache=CACHES, policy=st.sampled_from([None, "threshold", "verified"]))
    def cache_policy(self, cache: int, policy: str | None) -> None:
        body: dict[str, Any] = {"policy": policy}
        if policy == "verified":
            body["maxErrorRate"] = 0.1
        reply = self.http.put(f"/v1/caches/{self.caches[cache]}/policy", json=body)
        assert reply.status_code == 200, reply.text

    # -- gRPC, through the client library -------------------------------------------------

    @action(
        cache=CACHES,
        question=st.sampled_from(QUESTIONS),
        attributes=st.sampled_from(ATTRIBUTES),
    )
    def grpc_query(self, cache: int, question: str, attributes: dict[str, str]) -> None:
        cache_id = self.caches[cache]
        result = self.client.query(question, cache_id=cache_id, attributes=attributes)
        if result.cache_hit:
            self.serve(result.response, cache_id, question, attributes, None)
        else:
            record = Record(cache_id, question, attributes, None, result.entry_id)
            self._stored(result.response, record)

    @action(
        cache=CACHES,
        question=st.sampled_from(QUESTIONS),
        attributes=st.sampled_from(ATTRIBUTES),
    )
    def grpc_set_and_search(self, cache: int, question: str, attributes: dict[str, str]) -> None:
        cache_id = self.caches[cache]
        found = self.client.search(
            question,
            cache_id=cache_id,
            attributes=attributes,
            strategies=list(SearchStrategy),
            max_results=5,
        )
        for hit in found.hits:
            self.serve(hit.entry.response, cache_id, question, attributes, None)
        if not found.hits:
            text = f"Set answer number {next(COUNTER)}"
            entry_id = self.client.set(question, text, cache_id=cache_id, attributes=attributes)
            self._stored(text, Record(cache_id, question, attributes, None, entry_id))

    @action(
        weight=3,
        cache=CACHES,
        question=st.sampled_from(QUESTIONS),
        scope=st.sampled_from(CHAT_SCOPES),
        stream=st.booleans(),
    )
    def grpc_chat(
        self,
        cache: int,
        question: str,
        scope: tuple[dict[str, str], str | None, str, dict[str, Any]],
        stream: bool,
    ) -> None:
        attributes, system, model, extra = scope
        cache_id = self.caches[cache]
        body = chat_body(system, model, extra, question)  # the call's flag decides the stream
        events = list(
            self.client.chat(
                question, body, cache_id=cache_id, attributes=attributes, stream=stream
            )
        )
        shape = chat_shape(system, model, extra)
        self.tally[f"grpc chat {type(events[0]).__name__}"] += 1
        if isinstance(events[0], ChatHit):
            self.serve(events[0].entry.response, cache_id, question, attributes, shape)
            return
        stored = events[-1]
        assert isinstance(stored, ChatStored), events
        if stream:
            chunks = [json.loads(e.json) for e in events[:-1]]  # type: ignore[union-attr]
            text = "".join(
                c["choices"][0]["delta"].get("content") or "" for c in chunks if c["choices"]
            )
        else:
            text = json.loads(events[0].json)["choices"][0]["message"]["content"]  # type: ignore[union-attr]
        self._stored(text, Record(cache_id, question, attributes, shape, stored.entry_id))


def _stack(store: str, cache_server: ServiceProcess, llm: FakeLLM) -> Iterator[Stack]:
    with GatewayProcess(cache_server.address) as gateway:
        yield Stack(store, gateway.url, cache_server.address, llm)


@pytest.fixture(scope="module")
def model_llm() -> Iterator[FakeLLM]:
    with FakeLLM(answer=answer) as server:
        yield server


@pytest.fixture(scope="module", params=["embedded", "redis"])
def stack(
    request: pytest.FixtureRequest,
    tmp_path_factory: pytest.TempPathFactory,
    embedder_process: str,
    model_llm: FakeLLM,
) -> Iterator[Stack]:
    # model-x and model-y (and uncacheable bodies, if a step makes one) reach the upstream.
    upstream = ("--upstream-base-url", model_llm.base_url, *CHAT_OPEN)
    if request.param == "embedded":
        data = tmp_path_factory.mktemp("scope-model")
        with cache_server_process(data, embedder_process, *upstream) as server:
            yield from _stack("embedded", server, model_llm)
        return
    redis = RedisProcess(tmp_path_factory.mktemp("scope-model-redis")).start()
    try:
        data = tmp_path_factory.mktemp("scope-model-data")
        with redis_cache_server(data, embedder_process, redis.url, "scope", *upstream) as server:
            yield from _stack("redis", server, model_llm)
    finally:
        redis.stop()


STEPS = settings(
    max_examples=10,
    stateful_step_count=60,
    deadline=None,
    suppress_health_check=list(HealthCheck),
    database=None,
)


def test_every_served_answer_was_stored_for_its_request(stack: Stack) -> None:
    ScopeModel.stack = stack
    ScopeModel.tally.clear()
    ScopeModel.TestCase.settings = STEPS
    runner = ScopeModel.TestCase("runTest")
    runner.runTest()
    tally = ScopeModel.tally
    print(f"scope model on {stack.store}: {dict(tally)}")
    # Not vacuous: answers were served from the cache on both kinds of surface.
    assert tally["served plain"] >= 5 and tally["served chat"] >= 3, dict(tally)
