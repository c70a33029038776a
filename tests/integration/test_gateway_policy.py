"""The verified hit policy over REST: the cache's policy (GET/PUT .../policy), the request's
own (`/query`, the LangCache search), and what stats report, against the real processes."""

from __future__ import annotations

from collections.abc import Iterator

import httpx
import pytest
from langcache import LangCache
from langcache.models import SearchStrategy

from tests.fake_llm import FakeLLM
from tests.processes import GatewayProcess, cache_server_process

ASKED = "How can I learn Python programming?"
PARAPHRASE = "What is the best way to learn Python programming?"


@pytest.fixture(scope="module")
def rest(tmp_path_factory: pytest.TempPathFactory, embedder_process: str) -> Iterator[str]:
    with (
        FakeLLM() as llm,  # a different answer for every prompt
        cache_server_process(
            tmp_path_factory.mktemp("policy"),
            embedder_process,
            "--upstream-base-url",
            llm.base_url,
            "--verified-judge",
            "exact",
        ) as server,  # (entering starts it: no .start() here, or a second process is left)
        GatewayProcess(server.address) as gateway,
    ):
        yield gateway.url


def test_a_cache_policy_is_set_read_and_reset(rest: str) -> None:
    put = httpx.put(
        f"{rest}/v1/caches/pol/policy", json={"policy": "verified", "maxErrorRate": 0.05}
    )
    assert put.status_code == 200, put.text
    assert put.json() == {
        "cacheId": "pol",
        "policy": "verified",
        "maxErrorRate": 0.05,
        "errorAccounting": "hits",  # the server's, as none was named
        "source": "cache",
    }
    assert httpx.get(f"{rest}/v1/caches/pol/policy").json() == put.json()
    over_requests = httpx.put(
        f"{rest}/v1/caches/pol/policy",
        json={"policy": "verified", "maxErrorRate": 0.05, "errorAccounting": "requests"},
    )
    assert over_requests.json()["errorAccounting"] == "requests", over_requests.text
    assert httpx.get(f"{rest}/cache/stats?cache_id=pol").json()["error_accounting"] == "requests"
    bad = httpx.put(
        f"{rest}/v1/caches/pol/policy", json={"policy": "verified", "errorAccounting": "served"}
    )
    assert bad.status_code == 400 and "errorAccounting" in bad.text, bad.text
    put = httpx.put(
        f"{rest}/v1/caches/pol/policy", json={"policy": "verified", "maxErrorRate": 0.05}
    )
    # A flush empties the cache; its policy is configuration and stays.
    assert httpx.post(f"{rest}/v1/caches/pol/flush").status_code == 204
    assert httpx.get(f"{rest}/v1/caches/pol/policy").json()["source"] == "cache"

    reset = httpx.put(f"{rest}/v1/caches/pol/policy", json={"policy": None})
    assert reset.status_code == 200, reset.text
    assert reset.json()["source"] == "server" and reset.json()["policy"] == "threshold"
    assert httpx.get(f"{rest}/v1/caches/pol/policy").json() == reset.json()
    # A cache never set reads the server's default.
    fresh = httpx.get(f"{rest}/v1/caches/never-set/policy").json()
    assert fresh["cacheId"] == "never-set" and fresh["source"] == "server"


def test_the_cache_policy_applies_to_queries_and_shows_in_stats(rest: str) -> None:
    assert httpx.put(
        f"{rest}/v1/caches/cv/policy", json={"policy": "verified", "maxErrorRate": 0.1}
    ).is_success
    answer = httpx.post(f"{rest}/query?cache_id=cv", json={"query": ASKED}).json()
    # No policy in the request: the cache's own, reported as such.
    assert answer["policy"] == "verified" and answer["explored"] is False
    stats = httpx.get(f"{rest}/cache/stats?cache_id=cv").json()
    assert stats["policy"] == "verified" and stats["max_error_rate"] == 0.1
    # The request's own policy wins over the cache's.
    plain = httpx.post(
        f"{rest}/query?cache_id=cv",
        json={"query": PARAPHRASE, "policy": "threshold", "similarity_threshold": 0.5},
    ).json()
    assert plain["cache_hit"] and "policy" not in plain


@pytest.mark.parametrize(
    "body",
    [
        {"policy": "verified", "maxErrorRate": 0},
        {"policy": "verified", "maxErrorRate": 0.7},
        {"policy": "verified", "maxErrorRate": "x"},
        {"policy": "sometimes"},
    ],
)
def test_bad_policy_input_is_a_400_problem_that_names_the_field(
    rest: str, body: dict[str, object]
) -> None:
    reply = httpx.put(f"{rest}/v1/caches/pol/policy", json=body)
    assert reply.status_code == 400, reply.text
    assert reply.headers["content-type"] == "application/json"
    problem = reply.json()
    assert problem["type"] == "/errors/invalid-data" and problem["status"] == 400
    field = "maxErrorRate" if "maxErrorRate" in body else "policy"
    assert field in problem["detail"], problem
    # The LangCache search refuses the same values the same way.
    search = httpx.post(f"{rest}/v1/caches/pol/entries/search", json={"prompt": ASKED, **body})
    assert search.status_code == 400 and field in search.json()["detail"], search.text


def test_verified_explores_a_paraphrase_that_the_threshold_policy_serves(rest: str) -> None:
    first = httpx.post(f"{rest}/query?cache_id=q", json={"query": ASKED}).json()
    # Under the threshold policy the answer is the original contract's, field for field.
    assert not first["cache_hit"] and "policy" not in first and "explored" not in first
    plain = httpx.post(
        f"{rest}/query?cache_id=q", json={"query": PARAPHRASE, "similarity_threshold": 0.5}
    ).json()
    assert plain["cache_hit"] and "policy" not in plain

    verified = httpx.post(
        f"{rest}/query?cache_id=q",
        json={"query": PARAPHRASE, "policy": "verified", "max_error_rate": 0.05},
    ).json()
    # Not sure yet: the LLM answered, and its answer (another text) judged the stored one.
    assert not verified["cache_hit"] and verified["explored"]
    assert verified["policy"] == "verified"
    assert verified["response"] == f"LLM answer to: {PARAPHRASE}"
    repeat = httpx.post(
        f"{rest}/query?cache_id=q", json={"query": ASKED, "policy": "verified"}
    ).json()
    assert repeat["cache_hit"] and repeat["cached_data"]["similarity_score"] == 1.0

    stats = httpx.get(f"{rest}/cache/stats?cache_id=q").json()
    # The cache's own policy is still the server's default; the requests chose theirs.
    assert stats["policy"] == "threshold"
    assert stats["explorations"] == 1 and stats["explorations_wrong"] == 1
    assert stats["learned"]["pooled_observations"] == 1

    # The original API's bad input is FastAPI's 422 (its contract), naming the field.
    for field, value in (("max_error_rate", 0.9), ("max_error_rate", 0), ("policy", "sometimes")):
        bad = httpx.post(f"{rest}/query?cache_id=q", json={"query": ASKED, field: value})
        assert bad.status_code == 422, bad.text
        assert field in bad.json()["detail"], bad.text


def test_the_langcache_search_takes_the_policy_as_an_extension(rest: str) -> None:
    base = f"{rest}/v1/caches/lc"
    assert httpx.post(f"{base}/entries", json={"prompt": ASKED, "response": "A"}).status_code == 201
    plain = httpx.post(
        f"{base}/entries/search", json={"prompt": PARAPHRASE, "similarityThreshold": 0.5}
    ).json()
    assert len(plain["data"]) == 1
    verified = httpx.post(
        f"{base}/entries/search",
        json={"prompt": PARAPHRASE, "policy": "verified", "maxErrorRate": 0.05},
    ).json()
    assert verified["data"] == []  # nothing learned yet: not served


def test_the_langcache_sdk_works_unchanged_on_a_verified_cache(rest: str) -> None:
    assert httpx.put(f"{rest}/v1/caches/sdk/policy", json={"policy": "verified"}).is_success
    with LangCache(server_url=rest, cache_id="sdk", api_key="unused") as lc:
        stored = lc.set(prompt=ASKED, response="Practise every day")
        # The SDK knows nothing of policies: its searches run under the cache's.
        assert lc.search(prompt=PARAPHRASE, similarity_threshold=0.5).data == []
        exact = lc.search(
            prompt=ASKED, search_strategies=[SearchStrategy.EXACT, SearchStrategy.SEMANTIC]
        )
        assert [e.id for e in exact.data] == [stored.entry_id]
        assert exact.data[0].similarity == 1.0
        lc.flush()
