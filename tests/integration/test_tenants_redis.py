"""Limits that hold across replicas: two gateways, each over its own cache server, all on one
real Redis. A key's rate, requests at once and daily upstream budget are counted in Redis, so a
client spreading its requests over the replicas gets no more than from one."""

from __future__ import annotations

import json
import time
import uuid
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor

import httpx
import pytest

from service_runtime.keys import entry_for, mint_key
from tests.fake_llm import FakeLLM
from tests.processes import GatewayProcess, RedisProcess, redis_cache_server

pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def keys() -> dict[str, str]:
    return {name: mint_key() for name in ("noisy", "quiet", "busy", "frugal")}


@pytest.fixture(scope="module")
def gateways(
    tmp_path_factory: pytest.TempPathFactory, embedder_process: str, keys: dict[str, str]
) -> Iterator[list[str]]:
    folder = tmp_path_factory.mktemp("tenants-redis")
    path = folder / "keys.json"
    entries = [
        {**entry_for(keys["noisy"], "noisy", ["noisy"], ["read"]), "rate_per_s": 1, "burst": 4},
        entry_for(keys["quiet"], "quiet", ["quiet"], ["read"]),
        {**entry_for(keys["busy"], "busy", ["busy"], ["read"]), "concurrency": 2},
        {
            **entry_for(keys["frugal"], "frugal", ["frugal"], ["read"]),
            "upstream_requests_per_day": 2,
        },
    ]
    path.write_text(json.dumps({"keys": entries}))
    env = {"SEMCACHE_KEYS_FILE": str(path)}
    prefix = f"t-{uuid.uuid4().hex[:8]}"
    redis = RedisProcess(folder / "redis").start()
    try:
        with (
            FakeLLM(delay_s=0.5) as llm,
            redis_cache_server(
                folder,
                embedder_process,
                redis.url,
                prefix,
                "--upstream-base-url",
                llm.base_url,
                env=env,
            ) as one,
            redis_cache_server(
                folder,
                embedder_process,
                redis.url,
                prefix,
                "--upstream-base-url",
                llm.base_url,
                env=env,
            ) as two,
            GatewayProcess(one.address, env=env) as first,
            GatewayProcess(two.address, env=env) as second,
        ):
            yield [first.url, second.url]
    finally:
        redis.stop()


def _search(url: str, key: str, cache_id: str) -> int:
    return httpx.post(
        f"{url}/v1/caches/{cache_id}/entries/search",
        json={"prompt": "spread over replicas"},
        headers={"Authorization": f"Bearer {key}"},
        timeout=30,
    ).status_code


def test_a_rate_limit_holds_across_two_gateways(gateways: list[str], keys: dict[str, str]) -> None:
    started = time.monotonic()
    noisy = [_search(gateways[i % 2], keys["noisy"], "noisy") for i in range(12)]
    elapsed = time.monotonic() - started
    quiet = [_search(gateways[i % 2], keys["quiet"], "quiet") for i in range(12)]
    served = noisy.count(200)
    print(
        f"\nacross 2 replicas: noisy {served} served, {noisy.count(429)} limited in "
        f"{elapsed:.2f} s (burst 4, 1/s); quiet {quiet.count(200)} of 12 served"
    )
    # One bucket for both replicas: its burst and what refilled, not twice that.
    assert 4 <= served <= 4 + int(elapsed) + 1
    assert noisy.count(429) == len(noisy) - served
    assert quiet == [200] * 12


def test_requests_at_once_are_limited_across_replicas(
    gateways: list[str], keys: dict[str, str]
) -> None:
    def ask(i: int) -> int:
        return httpx.post(
            f"{gateways[i % 2]}/query?cache_id=busy",
            json={"query": f"slow question number {i}"},  # each a miss: 0.5 s upstream
            headers={"Authorization": f"Bearer {keys['busy']}"},
            timeout=30,
        ).status_code

    with ThreadPoolExecutor(6) as pool:
        codes = list(pool.map(ask, range(6)))
    print(f"\n6 at once over 2 replicas, limit 2: {codes}")
    assert codes.count(200) >= 2 and codes.count(429) >= 2
    assert set(codes) <= {200, 429}


def test_a_daily_budget_holds_across_replicas(gateways: list[str], keys: dict[str, str]) -> None:
    def ask(url: str, question: str) -> httpx.Response:
        return httpx.post(
            f"{url}/query?cache_id=frugal",
            json={"query": question},
            headers={"Authorization": f"Bearer {keys['frugal']}"},
            timeout=30,
        )

    assert ask(gateways[0], "How do volcanoes form?").status_code == 200
    assert ask(gateways[1], "Why is the sky blue?").status_code == 200
    spent = ask(gateways[0], "What is the speed of light?")
    assert spent.status_code == 429 and "budget" in spent.json()["detail"]
    assert ask(gateways[1], "How do volcanoes form?").json()["cache_hit"]
