"""Start-up order: the stack is right from its first answer, whichever process comes up last.

The cache server and the gateway start before the embedder (as under `make run`, where the
embedder loads its model last). Until the embedder serves, /health is 503; the first /health
that says "healthy" is followed at once by answers that carry the model's real dimension.
"""

from __future__ import annotations

import time
from pathlib import Path

import httpx
import pytest

from embedder.manifest import ModelManifest
from tests.processes import GatewayProcess, ServiceProcess, cache_server_process, free_port

pytestmark = pytest.mark.slow


def test_first_answers_after_health_carry_the_real_dimension(
    tmp_path: Path, minilm_dir: Path
) -> None:
    dimension = ModelManifest.read(minilm_dir).dimension
    embedder_port = free_port()
    embedder = ServiceProcess(
        "embedder", "--model-dir", str(minilm_dir), "--port", str(embedder_port)
    )
    with (
        cache_server_process(tmp_path, f"127.0.0.1:{embedder_port}") as cache,
        GatewayProcess(cache.address) as gateway,
        httpx.Client(base_url=gateway.url, timeout=30) as client,
    ):
        before = client.get("/health")
        assert before.status_code == 503
        assert before.json()["status"] != "healthy" and "embedder" in before.json()["down"]

        with embedder:
            deadline = time.monotonic() + 60
            while (health := client.get("/health")).status_code != 200:
                assert time.monotonic() < deadline, health.text
                time.sleep(0.05)
            # No pause between health and the first answers: each must already be right.
            assert health.json()["embedding_dimension"] == dimension
            miss = client.post("/query", json={"query": "What is the capital of France?"})
            exact = client.post("/query", json={"query": "What is the capital of France?"})
            semantic = client.post("/query", json={"query": "Which city is the capital of France?"})
            found = client.post(
                "/v1/caches/default/entries/search",
                json={"prompt": "Which city is the capital of France?"},
            )
            assert [r.status_code for r in (miss, exact, semantic, found)] == [200] * 4
            assert not miss.json()["cache_hit"]
            assert exact.json()["cache_hit"] and semantic.json()["cache_hit"]
            assert semantic.json()["cached_data"]["cached_query"] != semantic.json()["query"]
            for reply in (miss, exact, semantic):
                assert reply.json()["embedding_dimension"] == dimension
