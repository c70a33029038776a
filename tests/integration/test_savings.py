"""Savings, end to end: the real embedder, cache server and gateway, and a fake upstream that
reports its usage (one token per word), so what each hit saved is known to the token."""

from __future__ import annotations

import json
import re
import uuid
from collections.abc import Iterator
from typing import Any

import httpx
import pytest

from tests.fake_llm import FakeLLM, word_usage
from tests.integration.conftest import CHAT_OPEN, start_cache_server
from tests.processes import GatewayProcess, ServiceProcess, free_port

MODEL = "gpt-test"
# Per million tokens.
PRICES = {MODEL: {"prompt": 3.0, "completion": 15.0}}
DELAY_S = 0.2
QUESTION = "How do I learn Python quickly?"
PARAPHRASE = "What is the fastest way to learn Python?"


@pytest.fixture(scope="module")
def upstream() -> Iterator[FakeLLM]:
    with FakeLLM(delay_s=DELAY_S, answer=lambda p: f"Practice a little every day: {p}") as llm:
        yield llm


@pytest.fixture(scope="module")
def stack(
    tmp_path_factory: pytest.TempPathFactory, embedder_process: str, upstream: FakeLLM
) -> Iterator[tuple[str, int]]:
    metrics_port = free_port()
    server: ServiceProcess = start_cache_server(
        tmp_path_factory.mktemp("savings-data"),
        embedder_process,
        upstream,
        *CHAT_OPEN,
        "--upstream-model",
        MODEL,
        "--prices",
        json.dumps(PRICES),
        "--price-currency",
        "EUR",
        "--metrics-port",
        str(metrics_port),
    )
    try:
        with GatewayProcess(server.address) as gateway:
            yield gateway.url, metrics_port
    finally:
        server.stop()


def saved(gateway: str, cache_id: str) -> dict[str, Any]:
    reply = httpx.get(f"{gateway}/cache/stats", params={"cache_id": cache_id})
    assert reply.status_code == 200, reply.text
    savings: dict[str, Any] = reply.json()["savings"]
    return savings


def query(gateway: str, cache_id: str, question: str) -> dict[str, Any]:
    reply = httpx.post(
        f"{gateway}/query", params={"cache_id": cache_id}, json={"query": question}, timeout=30
    )
    assert reply.status_code == 200, reply.text
    body: dict[str, Any] = reply.json()
    return body


def money(usage: dict[str, int]) -> float:
    price = PRICES[MODEL]
    return (
        usage["prompt_tokens"] * price["prompt"] + usage["completion_tokens"] * price["completion"]
    ) / 1e6


def test_every_hit_saves_the_tokens_seconds_and_money_of_its_answer(
    stack: tuple[str, int], upstream: FakeLLM
) -> None:
    gateway, metrics_port = stack
    cache_id = f"save-{uuid.uuid4().hex[:8]}"
    first = query(gateway, cache_id, QUESTION)
    assert not first["cache_hit"]
    usage = word_usage(QUESTION, first["response"])
    assert saved(gateway, cache_id)["hits_with_cost"] == 0

    assert query(gateway, cache_id, QUESTION)["cache_hit"]  # exact
    assert query(gateway, cache_id, PARAPHRASE)["cache_hit"]  # semantic
    savings = saved(gateway, cache_id)
    assert savings["hits_with_cost"] == 2 and savings["hits_without_cost"] == 0
    assert savings["prompt_tokens"] == 2 * usage["prompt_tokens"]
    assert savings["completion_tokens"] == 2 * usage["completion_tokens"]
    assert savings["upstream_seconds"] >= 2 * DELAY_S
    assert savings["cost"] == pytest.approx(2 * money(usage))
    assert savings["currency"] == "EUR" and savings["hits_unpriced"] == 0

    metrics = httpx.get(f"http://127.0.0.1:{metrics_port}/metrics").text
    label = f'cache="{cache_id}"'
    for kind, tokens in (
        ("prompt", usage["prompt_tokens"]),
        ("completion", usage["completion_tokens"]),
    ):
        line = f'semcache_cache_tokens_saved_total{{{label},kind="{kind}"}} {float(2 * tokens)}'
        assert line in metrics
    cost = re.search(rf"semcache_cache_cost_saved_total\{{{label}\}} (\S+)", metrics)
    assert cost is not None and float(cost.group(1)) == pytest.approx(2 * money(usage))
    seconds = re.search(rf"semcache_cache_upstream_seconds_saved_total\{{{label}\}} (\S+)", metrics)
    assert seconds is not None and float(seconds.group(1)) >= 2 * DELAY_S
    assert f'semcache_cache_saved_hits_total{{{label},cost="known"}} 2.0' in metrics


def test_an_answer_stored_by_set_counts_its_hits_and_no_tokens(stack: tuple[str, int]) -> None:
    gateway, _ = stack
    cache_id = f"set-{uuid.uuid4().hex[:8]}"
    stored = httpx.post(
        f"{gateway}/v1/caches/{cache_id}/entries",
        json={"prompt": QUESTION, "response": "Read the tutorial."},
    )
    assert stored.status_code == 201, stored.text
    found = httpx.post(
        f"{gateway}/v1/caches/{cache_id}/entries/search", json={"prompt": PARAPHRASE}
    )
    assert found.status_code == 200 and found.json()["data"], found.text
    savings = saved(gateway, cache_id)
    assert savings["hits_without_cost"] == 1 and savings["hits_with_cost"] == 0
    assert savings["prompt_tokens"] == savings["completion_tokens"] == 0
    assert savings["cost"] == 0.0 and savings["upstream_seconds"] == 0.0


@pytest.mark.parametrize("stream", [False, True])
def test_chat_completions_save_what_the_upstream_reported(
    stack: tuple[str, int], stream: bool
) -> None:
    gateway, _ = stack
    cache_id = f"chat-{uuid.uuid4().hex[:8]}"
    body: dict[str, Any] = {
        "model": MODEL,
        "messages": [{"role": "user", "content": QUESTION}],
        "semcache": {"cache_id": cache_id},
    }
    if stream:
        body |= {"stream": True, "stream_options": {"include_usage": True}}
    with httpx.Client(timeout=30) as client:
        first = client.post(f"{gateway}/v1/chat/completions", json=body)
        assert first.status_code == 200, first.text
        again = client.post(f"{gateway}/v1/chat/completions", json=body)
        assert again.status_code == 200, again.text
    answer = f"Practice a little every day: {QUESTION}"
    usage = word_usage(QUESTION, answer)
    savings = saved(gateway, cache_id)
    assert savings["hits_with_cost"] == 1
    assert savings["prompt_tokens"] == usage["prompt_tokens"]
    assert savings["completion_tokens"] == usage["completion_tokens"]
    assert savings["cost"] == pytest.approx(money(usage))
