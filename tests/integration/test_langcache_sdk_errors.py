"""The official `langcache` SDK (sync and async) against the real processes, on the paths where
things go wrong: every error status the LangCache routes give is one the SDK models, so it
raises its own typed exception, with the `type` URI it declares and no internal address in
the message. Also: unknown request fields are ignored, similarities stay within [0, 1]."""

from __future__ import annotations

import asyncio
import time
from collections.abc import Awaitable, Callable, Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest
from langcache import LangCache
from langcache import errors as lc_errors
from langcache.models import SearchStrategy

from tests.fake_llm import FakeLLM
from tests.integration.conftest import API_KEY
from tests.processes import GatewayProcess, ServiceProcess, cache_server_process, free_port

pytestmark = pytest.mark.slow

# Every error class the SDK declares for the cache routes, by status, with its type URI.
SDK_ERRORS: dict[int, tuple[type[lc_errors.LangCacheError], str]] = {
    400: (lc_errors.BadRequestErrorResponseContent, "/errors/invalid-data"),
    401: (lc_errors.AuthenticationErrorResponseContent, "/errors/authentication-failed"),
    403: (lc_errors.ForbiddenErrorResponseContent, "/errors/insufficient-permissions"),
    404: (lc_errors.NotFoundErrorResponseContent, "/errors/resource-not-found"),
    413: (lc_errors.PayloadTooLargeErrorResponseContent, "/errors/payload-too-large"),
    424: (lc_errors.FailedDependencyErrorResponseContent, "/errors/resource-unavailable"),
    429: (lc_errors.TooManyRequestsErrorResponseContent, "/errors/too-many-requests"),
}


@pytest.fixture(scope="module")
def limited(
    tmp_path_factory: pytest.TempPathFactory, embedder_process: str, llm: FakeLLM
) -> Iterator[str]:
    """A gateway with a key and a small body limit, over a cache server that holds at most 2
    caches."""
    with (
        cache_server_process(
            tmp_path_factory.mktemp("sdk-limits"),
            embedder_process,
            "--upstream-base-url",
            llm.base_url,
            "--max-caches",
            "2",
        ) as cache,
        GatewayProcess(
            cache.address,
            env={
                "GATEWAY_API_KEY": API_KEY,
                "GATEWAY_MAX_BODY_BYTES": "65536",
            },
        ) as gateway,
    ):
        yield gateway.url


@pytest.fixture(scope="module")
def embedder_down(tmp_path_factory: pytest.TempPathFactory, llm: FakeLLM) -> Iterator[str]:
    """A gateway over a cache server whose embedder never comes up."""
    with (
        cache_server_process(
            tmp_path_factory.mktemp("sdk-down"),
            f"127.0.0.1:{free_port()}",
            "--upstream-base-url",
            llm.base_url,
            "--embedder-timeout-s",
            "0.5",
        ) as cache,
        GatewayProcess(cache.address) as gateway,
    ):
        yield gateway.url


def expect(status: int, call: Callable[[], object]) -> lc_errors.LangCacheError:
    error_class, problem_type = SDK_ERRORS[status]
    with pytest.raises(error_class) as raised:
        call()
    error: Any = raised.value
    assert error.data.type == problem_type, error.data
    assert error.raw_response.status_code == status
    assert "127.0.0.1" not in str(error.data.detail), error.data.detail
    return raised.value


async def expect_async(status: int, call: Callable[[], Awaitable[object]]) -> None:
    error_class, problem_type = SDK_ERRORS[status]
    with pytest.raises(error_class) as raised:
        await call()
    error: Any = raised.value
    assert error.data.type == problem_type and error.raw_response.status_code == status


def test_every_error_is_the_sdks_own_exception(limited: str) -> None:
    with LangCache(server_url=limited, cache_id="sdk-a", api_key=API_KEY) as lc:
        expect(400, lambda: lc.set(prompt="x" * 9000, response="too long a prompt"))
        expect(404, lambda: lc.delete_by_id(entry_id="0" * 32))
        expect(404, lambda: lc.delete_by_id(entry_id="not-an-id"))
        expect(413, lambda: lc.set(prompt="big", response="y" * 100_000))
        lc.set(prompt="first cache", response="ok")
    with LangCache(server_url=limited, cache_id="sdk-b", api_key=API_KEY) as lc:
        lc.set(prompt="second cache", response="ok")
    with LangCache(server_url=limited, cache_id="sdk-c", api_key=API_KEY) as lc:
        refused = expect(403, lambda: lc.set(prompt="third cache", response="no room"))
        assert "max_caches" in str(refused.data.detail)  # type: ignore[attr-defined]
    with LangCache(server_url=limited, cache_id="sdk-a", api_key="wrong-key-0123456789") as lc:
        expect(401, lambda: lc.search(prompt="first cache"))


def test_a_rate_limit_is_the_sdks_too_many_requests(tmp_path: Path, embedder_process: str) -> None:
    with (
        cache_server_process(
            tmp_path, embedder_process, "--rate-limit-per-s", "0.1", "--rate-limit-burst", "2"
        ) as cache,
        GatewayProcess(cache.address) as gateway,
        LangCache(server_url=gateway.url, cache_id="sdk-rate", api_key="unused") as lc,
    ):
        for _ in range(2):
            lc.search(prompt="first cache", search_strategies=[SearchStrategy.EXACT])
        expect(429, lambda: lc.search(prompt="first cache"))


def test_a_dependency_down_is_424_resource_unavailable(embedder_down: str) -> None:
    with LangCache(server_url=embedder_down, cache_id="down", api_key="unused") as lc:
        expect(424, lambda: lc.search(prompt="is anyone there?"))
        expect(424, lambda: lc.set(prompt="store me", response="cannot embed"))

        async def both() -> None:
            await expect_async(424, lambda: lc.search_async(prompt="is anyone there?"))
            await expect_async(404, lambda: lc.delete_by_id_async(entry_id="1" * 32))

        asyncio.run(both())
    # The original API keeps its documented 503, with the same care for its message.
    reply = httpx.post(f"{embedder_down}/query", json={"query": "is anyone there?"})
    assert reply.status_code == 503 and "127.0.0.1" not in reply.json()["detail"]


def test_the_cache_server_down_is_424_too(tmp_path: Path, embedder_process: str) -> None:
    with GatewayProcess(f"127.0.0.1:{free_port()}") as gateway:
        with LangCache(server_url=gateway.url, cache_id="gone", api_key="unused") as lc:
            error = expect(424, lambda: lc.search(prompt="hello?"))
        assert "ipv4" not in str(error.data.detail)  # type: ignore[attr-defined]
        assert "request id" in str(error.data.detail)  # type: ignore[attr-defined]


def test_unknown_fields_are_ignored_and_similarity_stays_within_one(gateway: str) -> None:
    base = f"{gateway}/v1/caches/sdk-extra"
    made = httpx.post(
        f"{base}/entries",
        json={"prompt": "What is the speed of light?", "response": "c", "context": {"a": 1}},
    )
    assert made.status_code == 201, made.text
    found = httpx.post(
        f"{base}/entries/search",
        json={
            "prompt": "What is the speed of light?",
            "searchStrategies": ["semantic"],
            "someFutureField": True,
        },
    )
    assert found.status_code == 200, found.text
    (entry,) = found.json()["data"]
    assert entry["searchStrategy"] == "semantic" and 0.99 <= entry["similarity"] <= 1.0
    assert "context" not in entry
    deleted = httpx.request(
        "DELETE", f"{base}/entries", json={"attributes": {}, "newerOption": "x"}
    )
    assert deleted.status_code == 200 and deleted.json()["deletedEntriesCount"] == 1


def test_a_server_restarted_embedder_is_found_again(tmp_path: Path, minilm_dir: Path) -> None:
    """424 is not a dead end: once the dependency is back, the same client carries on."""
    port = free_port()
    with (
        FakeLLM() as llm,
        cache_server_process(
            tmp_path, f"127.0.0.1:{port}", "--upstream-base-url", llm.base_url
        ) as cache,
        GatewayProcess(cache.address) as gateway,
        LangCache(server_url=gateway.url, cache_id="back", api_key="unused") as lc,
    ):
        expect(424, lambda: lc.set(prompt="hello", response="world"))
        with ServiceProcess("embedder", "--model-dir", str(minilm_dir), "--port", str(port)):
            # The cache server reconnects on its own within its backoff (at most 1 s).
            deadline = time.monotonic() + 10
            while True:
                try:
                    assert lc.set(prompt="hello", response="world").entry_id
                    break
                except lc_errors.FailedDependencyErrorResponseContent:
                    assert time.monotonic() < deadline, "the embedder was never found again"
                    time.sleep(0.2)
