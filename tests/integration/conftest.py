"""Fixtures of the integration tests: a real fake-LLM, cache server and gateway per test module
(gateway tests), and a model and a verifier trained once per session on a few hundred shared
QQP pairs (training and verifier tests)."""

from __future__ import annotations

import gzip
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.fake_llm import FakeLLM
from tests.processes import GatewayProcess, ServiceProcess, cache_server_process

API_KEY = "test-key-0123456789abcdef"


@pytest.fixture(scope="session")
def pairs_file(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The first 900 shared QQP pairs, as a user's own data file."""
    from bench.qqp import qqp_path

    path = tmp_path_factory.mktemp("data") / "pairs.jsonl.gz"
    with gzip.open(qqp_path(), "rt") as source, gzip.open(path, "wt") as target:
        for _, line in zip(range(900), source, strict=False):
            target.write(line)
    return path


@pytest.fixture(scope="session")
def tuned(
    tmp_path_factory: pytest.TempPathFactory, pairs_file: Path, packaged_st_dir: Path
) -> Path:
    """`make finetune` on those pairs, a few dozen steps."""
    from embedder.training.finetune import Recipe, finetune

    output = tmp_path_factory.mktemp("tuned") / "model"
    finetune(
        pairs_file,
        output,
        base=str(packaged_st_dir),
        recipe=Recipe(epochs=2, batch_size=32, learning_rate=3e-5, max_steps=30),
        held_out_fraction=0.4,
        target_precision=0.9,
    )
    return output


@pytest.fixture(scope="session")
def verifier(
    tmp_path_factory: pytest.TempPathFactory, pairs_file: Path, packaged_st_dir: Path, tuned: Path
) -> Path:
    """`make finetune-verifier` on the same pairs, beside the tuned model, a few dozen steps."""
    from embedder.training.verifier import VerifierRecipe, finetune_verifier

    output = tmp_path_factory.mktemp("verifier") / "model"
    finetune_verifier(
        pairs_file,
        output,
        embedder_dir=tuned,
        base=str(packaged_st_dir),
        recipe=VerifierRecipe(epochs=2, batch_size=32, learning_rate=5e-5, max_steps=40),
        held_out_fraction=0.4,
        target_precision=0.9,
    )
    return output


# The chat route as an operator opens it to its own applications: any model the upstream
# offers, and uncacheable requests passed through (off by default: no open proxy).
CHAT_OPEN = ("--chat-passthrough", "true", "--upstream-models", "*")


def start_cache_server(data_dir: Path, embedder: str, llm: FakeLLM, *args: str) -> ServiceProcess:
    return cache_server_process(
        data_dir, embedder, "--upstream-base-url", llm.base_url, "--embedder-timeout-s", "2", *args
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
