"""A cache remembers the embedding model its vectors came from (issue 23, finding 6), with the
real processes: a cache filled through one export of MiniLM, then served by another export of
the same model and size (unfused: another ONNX file, another sha256), refuses similarity
look-ups with a way forward instead of comparing them silently; `make reindex`'s program
re-embeds it, and it serves again."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest

from semcache_client import CacheClient, ErrorReason, FailedPrecondition
from tests.fake_llm import FakeLLM
from tests.integration.conftest import start_cache_server
from tests.processes import ServiceProcess

pytestmark = pytest.mark.slow

STORED = ["How do I learn Python quickly?", "What is the capital of France?", "How to boil eggs?"]
PARAPHRASE = "What is the fastest way to learn Python?"


@pytest.fixture(scope="module")
def other_embedder(tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    from embedder.export import export_model
    from embedder.model_source import packaged_model_path

    target = tmp_path_factory.mktemp("models") / "minilm-unfused"
    export_model(str(packaged_model_path()), target, fusions=False)
    with ServiceProcess("embedder", "--model-dir", str(target)) as process:
        yield process.address


def test_a_model_change_is_refused_until_the_cache_is_reindexed(
    tmp_path: Path, embedder_process: str, other_embedder: str, llm: FakeLLM
) -> None:
    from cache_server import reindex

    first = start_cache_server(tmp_path, embedder_process, llm)
    try:
        with CacheClient(first.address) as cache:
            for question in STORED:
                assert not cache.query(question).cache_hit
            assert cache.query(PARAPHRASE).cache_hit
    finally:
        first.stop()

    second = start_cache_server(tmp_path, other_embedder, llm)
    try:
        with CacheClient(second.address) as cache:
            calls = llm.calls
            with pytest.raises(FailedPrecondition) as refused:
                cache.query(PARAPHRASE)
            assert refused.value.reason is ErrorReason.STORE_CONFLICT
            assert "make reindex" in refused.value.message
            assert cache.query(STORED[0]).cache_hit  # an exact repeat needs no vector
            assert llm.calls == calls  # nothing paid for

            assert reindex.main(["--address", second.address, "--cache-id", "default"]) == 0
            hit = cache.query(PARAPHRASE)
            assert hit.cache_hit and hit.cached_data is not None
            assert hit.cached_data.cached_query == STORED[0] and llm.calls == calls
            (again,) = cache.reindex()  # nothing left to do
            assert again.finished and again.done == again.total == len(STORED)
    finally:
        second.stop()
