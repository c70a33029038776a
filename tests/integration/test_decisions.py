"""What an operator sees of the cache's decisions, over the real processes: the recent
decisions of a cache (GET /v1/caches/{cacheId}/decisions, ListDecisions) and the list of
caches (GET /v1/caches, ListCaches). Keys and grants: tests/integration/test_tenants.py."""

from __future__ import annotations

from typing import Any

import httpx
import pytest

from semcache_client import CacheClient, SearchStrategy
from tests.processes import ServiceProcess

ASKED = "How can I learn Python programming?"
PARAPHRASE = "What is the best way to learn Python programming?"


def _query(gateway: str, cache_id: str, question: str) -> dict[str, Any]:
    reply = httpx.post(
        f"{gateway}/query?cache_id={cache_id}",
        json={"query": question, "similarity_threshold": 0.5},
    )
    assert reply.status_code == 200, reply.text
    body: dict[str, Any] = reply.json()
    return body


def _decisions(gateway: str, cache_id: str, **params: Any) -> dict[str, Any]:
    reply = httpx.get(f"{gateway}/v1/caches/{cache_id}/decisions", params=params)
    assert reply.status_code == 200, reply.text
    body: dict[str, Any] = reply.json()
    return body


def test_a_miss_then_a_paraphrase_hit_show_up_newest_first(gateway: str) -> None:
    miss = _query(gateway, "dec-a", ASKED)
    hit = _query(gateway, "dec-a", PARAPHRASE)
    assert not miss["cache_hit"] and hit["cache_hit"]
    listed = _decisions(gateway, "dec-a")
    assert (listed["kept"], listed["capacity"]) == (2, 200)
    served, missed = listed["decisions"]
    assert served == {
        "at": served["at"],
        "prompt": PARAPHRASE,
        "promptTruncated": False,
        "entryId": served["entryId"],
        "entryPrompt": ASKED,
        "entryPromptTruncated": False,
        "similarity": pytest.approx(hit["cached_data"]["similarity_score"]),
        "strategy": "semantic",
        "policy": "threshold",
        "outcome": "hit",
        "route": "query",
        "latencyMs": served["latencyMs"],
        "threshold": 0.5,
    }
    assert len(served["entryId"]) == 32 and served["latencyMs"] > 0
    assert served["at"] >= missed["at"] > 0
    assert missed["prompt"] == ASKED and missed["outcome"] == "miss"
    assert (missed["entryId"], missed["strategy"], missed["similarity"]) == (None, None, 0.0)
    # Never the answers.
    assert miss["response"] not in httpx.get(f"{gateway}/v1/caches/dec-a/decisions").text
    # An exact repeat, then a search and its route; `limit` keeps the newest.
    _query(gateway, "dec-a", ASKED)
    found = httpx.post(f"{gateway}/v1/caches/dec-a/entries/search", json={"prompt": PARAPHRASE})
    assert found.status_code == 200, found.text
    search, exact = _decisions(gateway, "dec-a", limit=2)["decisions"]
    assert (exact["strategy"], exact["similarity"], exact["outcome"]) == ("exact", 1.0, "hit")
    assert search["route"] == "search" and search["prompt"] == PARAPHRASE


def test_a_chat_look_up_is_a_decision_of_the_chat_route(gateway: str) -> None:
    body = {"model": "gpt-4o-mini", "messages": [{"role": "user", "content": ASKED}]}
    for _ in range(2):
        reply = httpx.post(
            f"{gateway}/v1/chat/completions", json=body, headers={"X-Semcache-Cache-Id": "dec-chat"}
        )
        assert reply.status_code == 200, reply.text
    repeat, first = _decisions(gateway, "dec-chat")["decisions"]
    assert (first["route"], first["outcome"]) == ("chat", "miss")
    assert (repeat["route"], repeat["outcome"], repeat["strategy"]) == ("chat", "hit", "exact")
    assert repeat["prompt"] == ASKED


def test_one_cache_never_shows_another_s_decisions_and_a_flush_clears_them(gateway: str) -> None:
    _query(gateway, "dec-b", "What is the capital of France?")
    _query(gateway, "dec-c", "Which city is the capital of Italy?")
    only_b = _decisions(gateway, "dec-b")["decisions"]
    assert [d["prompt"] for d in only_b] == ["What is the capital of France?"]
    assert "France" not in httpx.get(f"{gateway}/v1/caches/dec-c/decisions").text
    assert _decisions(gateway, "dec-never-used") == {"decisions": [], "kept": 0, "capacity": 200}
    assert httpx.post(f"{gateway}/v1/caches/dec-b/flush").status_code == 204
    assert _decisions(gateway, "dec-b")["kept"] == 0
    assert _decisions(gateway, "dec-c")["kept"] == 1


def test_a_bad_limit_or_cache_id_is_a_400_problem(gateway: str) -> None:
    for url in (
        f"{gateway}/v1/caches/dec-a/decisions?limit=1001",
        f"{gateway}/v1/caches/dec-a/decisions?limit=0",
        f"{gateway}/v1/caches/dec-a/decisions?limit=many",
        f"{gateway}/v1/caches/_reserved/decisions",
    ):
        reply = httpx.get(url)
        assert reply.status_code == 400, (url, reply.text)
        problem = reply.json()
        assert problem["type"] == "/errors/invalid-data" and problem["status"] == 400


def test_the_list_of_caches_has_each_cache_with_its_size_and_policy(gateway: str) -> None:
    _query(gateway, "dec-list", ASKED)
    put = httpx.put(f"{gateway}/v1/caches/dec-policy-only/policy", json={"policy": "verified"})
    assert put.status_code == 200, put.text
    reply = httpx.get(f"{gateway}/v1/caches")
    assert reply.status_code == 200, reply.text
    caches = {c["cacheId"]: c for c in reply.json()["caches"]}
    assert caches["dec-list"] == {
        "cacheId": "dec-list",
        "cacheSize": 1,
        "policy": "threshold",
        "policySource": "server",
    }
    # A cache with a policy and no entries yet is one to administer too.
    assert caches["dec-policy-only"]["cacheSize"] == 0
    assert caches["dec-policy-only"]["policy"] == "verified"
    assert caches["dec-policy-only"]["policySource"] == "cache"
    assert list(caches) == sorted(caches)


def test_the_python_client_lists_decisions_and_caches(
    gateway: str, cache_server: ServiceProcess
) -> None:
    _query(gateway, "dec-client", ASKED)
    with CacheClient(cache_server.address, cache_id="dec-client") as client:
        client.search(ASKED, strategies=[SearchStrategy.EXACT])
        recent = client.list_decisions(limit=10)
        assert [(d.route, d.outcome) for d in recent.decisions] == [
            ("search", "hit"),
            ("query", "miss"),
        ]
        assert recent.decisions[0].strategy is SearchStrategy.EXACT
        assert recent.decisions[1].entry_id == "" and recent.decisions[1].strategy is None
        assert recent.kept == 2 and recent.capacity == 200
        assert "dec-client" in {c.cache_id for c in client.list_caches()}
