"""Fixtures of the gateway tests: a real fake-LLM, cache server and gateway per test module."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.fake_llm import FakeLLM
from tests.processes import GatewayProcess, ServiceProcess, cache_server_process

API_KEY = "test-key-0123456789abcdef"


def start_cache_server(data_dir: Path, embedder: str, llm: FakeLLM) -> ServiceProcess:
    return cache_server_process(
        data_dir, embedder, "--upstream-base-url", llm.base_url, "--embedder-timeout-s", "2"
    ).start()


@pytest.fixture(scope="module")
def llm() -> Iterator[FakeLLM]:
    with FakeLLM() as server:
        yield server


@pytest.fixture(scope="module")
def cache_server(
    tmp_path_factory: pytest.TempPathFactory, embedder_process: str, llm: FakeLLM
) -> Iterator[ServiceProcess]:
    server = start_cache_server(tmp_path_factory.mktemp("gw-data"), embedder_process, llm)
    yield server
    server.stop()


@pytest.fixture(scope="module")
def gateway(cache_server: ServiceProcess) -> Iterator[str]:
    with GatewayProcess(cache_server.address) as process:
        yield process.url


@pytest.fixture(scope="module")
def secured(cache_server: ServiceProcess) -> Iterator[str]:
    with GatewayProcess(cache_server.address, env={"GATEWAY_API_KEY": API_KEY}) as process:
        yield process.url
