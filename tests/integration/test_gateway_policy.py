"""The verified hit policy over REST: the cache's policy (GET/PUT .../policy), the request's
own (`/query`, the LangCache search), and what stats report, against the real processes."""

from __future__ import annotations

from collections.abc import Iterator

import httpx
import pytest

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
        ).start() as server,
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
        "source": "cache",
    }
    assert httpx.get(f"{rest}/v1/caches/pol/policy").json()["policy"] == "verified"
    reset = httpx.put(f"{rest}/v1/caches/pol/policy", json={"policy": None})
    assert reset.json()["source"] == "server" and reset.json()["policy"] == "threshold"


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
    problem = reply.json()
    assert "maxErrorRate" in problem["detail"] or "policy" in problem["detail"]


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
    assert stats["explorations"] == 1 and stats["explorations_wrong"] == 1
    assert stats["learned"]["pooled_observations"] == 1

    # The original API's bad input is FastAPI's 422 (its contract), naming the field.
    bad = httpx.post(f"{rest}/query?cache_id=q", json={"query": ASKED, "max_error_rate": 0.9})
    assert bad.status_code == 422 and "max_error_rate" in bad.text, bad.text


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
