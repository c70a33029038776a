"""Moving a cache with `make export-cache` / `make import-cache`'s program, real processes: from
an embedded-store cache server into a Redis one, vectors and all (the embedder is not asked to
embed a single prompt); from a server of another model, every prompt embedded again; a file
imported twice holds as many entries as once; a malformed line stops the import there, each
refused entry is named by its line; a key exports and imports only the caches it
administers."""

from __future__ import annotations

import gzip
import json
import re
import time
import uuid
from collections.abc import Iterator
from pathlib import Path

import grpc
import httpx
import pytest

from bench.qqp import QuestionPair
from cache_server.transfer_file import ExportLine, Header, entry_line, header_line
from protos.semcache.cache.v1 import cache_pb2 as pb
from protos.semcache.cache.v1 import cache_pb2_grpc as pb_grpc
from service_runtime.keys import entry_for, mint_key
from tests.fake_llm import FakeLLM
from tests.integration.conftest import start_cache_server
from tests.processes import (
    RedisProcess,
    ServiceProcess,
    cache_server_process,
    free_port,
    redis_cache_server,
    run_module,
)

pytestmark = pytest.mark.slow

CLI = "cache_server.transfer_cli"


@pytest.fixture(scope="module")
def redis_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[RedisProcess]:
    server = RedisProcess(tmp_path_factory.mktemp("redis")).start()
    yield server
    server.stop()


@pytest.fixture(scope="module")
def counted_embedder(minilm_dir: Path) -> Iterator[tuple[str, int]]:
    """An embedder of the same model as the session's, whose /metrics count the texts it
    embedded: (its address, its metrics port)."""
    port = free_port()
    args = ("--model-dir", str(minilm_dir), "--intra-op-threads", "2", "--metrics-port", str(port))
    with ServiceProcess("embedder", *args) as process:
        yield process.address, port


@pytest.fixture(scope="module")
def modernbert_embedder(
    tiny_modernbert_dir: Path, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[str]:
    """An embedder of another model (a tiny ModernBERT, 64 dimensions)."""
    from embedder.export import export_model

    target = tmp_path_factory.mktemp("models") / "tiny-modernbert"
    export_model(str(tiny_modernbert_dir), target)
    with ServiceProcess("embedder", "--model-dir", str(target)) as process:
        yield process.address


def texts_embedded(metrics_port: int) -> float:
    page = httpx.get(f"http://127.0.0.1:{metrics_port}/metrics", timeout=5).text
    found = re.search(r"^semcache_embedder_texts_total (\S+)$", page, re.MULTILINE)
    return float(found.group(1)) if found else 0.0


def redis_target(
    tmp_path: Path, embedder: str, redis: RedisProcess, llm: FakeLLM, *args: str
) -> ServiceProcess:
    prefix = f"transfer-{uuid.uuid4().hex[:8]}"
    server = redis_cache_server(tmp_path, embedder, redis.url, prefix, *args)
    server.args += ["--upstream-base-url", llm.base_url, "--embedder-timeout-s", "5"]
    return server.start()


def stub_of(server: ServiceProcess) -> pb_grpc.CacheServiceStub:
    return pb_grpc.CacheServiceStub(grpc.insecure_channel(server.address))


def read_file(path: Path) -> tuple[dict[str, object], list[dict[str, object]]]:
    with gzip.open(path, "rt") as lines:
        header, *entries = (json.loads(line) for line in lines)
    return header, entries


def test_a_cache_moves_from_the_embedded_store_to_redis_with_its_vectors(
    tmp_path: Path,
    embedder_process: str,
    counted_embedder: tuple[str, int],
    redis_server: RedisProcess,
    llm: FakeLLM,
    qqp_pairs: list[QuestionPair],
) -> None:
    twins = [p for p in qqp_pairs if p.duplicate and len(p.text_a) < 80][:4]
    source = start_cache_server(tmp_path / "source", embedder_process, llm)
    try:
        stub = stub_of(source)
        for pair in twins:  # misses: the LLM answers, its usage is kept as the entry's cost
            ask = pb.QueryRequest(
                cache_id="support", query=pair.text_a, attributes={"lang": "en"}, ttl_seconds=3600
            )
            assert not stub.Query(ask, timeout=10).cache_hit
        stub.Set(pb.SetRequest(cache_id="support", prompt="Opening hours?", response="9-5"))
        stub.Set(pb.SetRequest(cache_id="elsewhere", prompt="Not this one", response="no"))
        exported = tmp_path / "support.jsonl.gz"
        done = run_module(
            CLI, "export", "--address", source.address, "--cache-id", "support", "--output",
            str(exported),
        )  # fmt: skip
        assert done.returncode == 0, done.stderr
        assert "exported 5 entries of 1 cache(s)" in done.stdout
    finally:
        source.stop()
    header, entries = read_file(exported)
    assert header["dimension"] == 384 and len(str(header["model"])) == 64
    assert {e["cache_id"] for e in entries} == {"support"} and all("vector" in e for e in entries)
    answers = {e["prompt"]: e for e in entries}

    address, metrics_port = counted_embedder
    target = redis_target(tmp_path, address, redis_server, llm)
    try:
        before = texts_embedded(metrics_port)
        done = run_module(CLI, "import", "--address", target.address, "--input", str(exported))
        assert done.returncode == 0, done.stderr
        assert "imported 5 entries into 1 cache(s)" in done.stdout
        assert "(0 re-embedded)" in done.stdout
        assert texts_embedded(metrics_port) == before  # the vectors were used as they came

        stub, calls = stub_of(target), llm.calls
        twin = twins[0]
        hit = stub.Query(
            pb.QueryRequest(
                cache_id="support",
                query=twin.text_b,
                attributes={"lang": "en"},
                similarity_threshold=0.7,
            ),
            timeout=10,
        )
        assert hit.cache_hit and llm.calls == calls, twin
        stored = answers[hit.cached_data.cached_query]
        assert hit.response == stored["response"]
        assert hit.cached_data.cost.completion_tokens == stored["cost"]["completion_tokens"]  # type: ignore[index]
        found = stub.Search(
            pb.SearchRequest(
                cache_id="support",
                prompt=twin.text_a,
                strategies=[pb.SEARCH_STRATEGY_EXACT],
                attributes={"lang": "en"},
            ),
            timeout=10,
        ).hits[0]
        assert dict(found.entry.attributes) == {"lang": "en"}
        # A Redis search reply rounds created_at to 12 digits (lookup.py says why it matters).
        assert found.entry.created_at == pytest.approx(answers[twin.text_a]["created_at"], abs=0.01)
        assert found.entry.expires_at == answers[twin.text_a]["expires_at"]  # the time left
        assert 3000 < found.entry.expires_at - time.time() <= 3600

        again = run_module(CLI, "import", "--address", target.address, "--input", str(exported))
        assert again.returncode == 0, again.stderr
        stats = stub.GetStats(pb.GetStatsRequest(cache_id="support"), timeout=10)
        assert stats.cache_size == 5  # replaced, not duplicated
    finally:
        target.stop()


def test_an_export_of_another_model_is_embedded_again_on_import(
    tmp_path: Path,
    modernbert_embedder: str,
    counted_embedder: tuple[str, int],
    redis_server: RedisProcess,
    llm: FakeLLM,
) -> None:
    source = start_cache_server(tmp_path / "source", modernbert_embedder, llm)
    prompts = ["How do I learn Python quickly?", "What is the capital of France?", "Boil eggs?"]
    try:
        stub = stub_of(source)
        for prompt in prompts:
            stub.Set(pb.SetRequest(cache_id="faq", prompt=prompt, response=f"re: {prompt}"))
        exported = tmp_path / "faq.jsonl"
        done = run_module(CLI, "export", "--address", source.address, "--output", str(exported))
        assert done.returncode == 0, done.stderr
    finally:
        source.stop()
    header = json.loads(exported.read_text().splitlines()[0])
    assert header["dimension"] == 64

    address, metrics_port = counted_embedder
    target = redis_target(tmp_path, address, redis_server, llm)
    try:
        before = texts_embedded(metrics_port)
        done = run_module(CLI, "import", "--address", target.address, "--input", str(exported))
        assert done.returncode == 0, done.stderr
        assert "imported 3 entries into 1 cache(s)" in done.stdout
        assert "(3 re-embedded)" in done.stdout
        assert texts_embedded(metrics_port) == before + 3
        hit = stub_of(target).Search(
            pb.SearchRequest(
                cache_id="faq",
                prompt="What is the fastest way to learn Python?",
                similarity_threshold=0.7,
            ),
            timeout=10,
        )
        assert [h.entry.response for h in hit.hits] == [f"re: {prompts[0]}"]
    finally:
        target.stop()


def test_a_malformed_line_stops_the_import_there_and_refused_entries_are_named(
    tmp_path: Path, embedder_process: str, llm: FakeLLM
) -> None:
    now = time.time()

    def line(prompt: str, **changes: object) -> str:
        values: dict[str, object] = {
            "cache_id": "c",
            "entry_id": "",
            "prompt": prompt,
            "response": f"re: {prompt}",
            "attributes": {},
            "created_at": now - 60,
            "expires_at": None,
            "cost": None,
            "vector": b"",
        }
        return entry_line(ExportLine(**{**values, **changes}))  # type: ignore[arg-type]

    lines = [
        header_line(Header("", 0, now)),  # line 1: no vectors in this file
        line("first"),
        line("second"),
        line("p" * 9000),  # line 4: over max_prompt_chars
        line("gone", expires_at=now - 1),  # already expired
        line("third"),
        line("fourth"),  # line 7: over max_cache_size 3
        line("broken")[:-5],  # line 8: malformed
        line("never read"),
    ]
    path = tmp_path / "hand-made.jsonl"
    path.write_text("\n".join(lines) + "\n")
    target = start_cache_server(tmp_path / "t", embedder_process, llm, "--max-cache-size", "3")
    try:
        done = run_module(
            CLI, "import", "--address", target.address, "--input", str(path), "--batch-size", "2"
        )
        assert done.returncode == 1, done.stdout
        assert "line 4: refused (prompt): prompt has 9000 characters" in done.stderr
        assert "line 7: refused (max_cache_size)" in done.stderr
        assert "line 8: not JSON" in done.stderr and "none from it on" in done.stderr
        assert "imported 3 entries" in done.stdout and "1 skipped (already expired)" in done.stdout
        assert "2 refused (1 prompt, 1 max_cache_size)" in done.stdout
        stats = stub_of(target).GetStats(pb.GetStatsRequest(cache_id="c"), timeout=10)
        assert stats.cache_size == 3
        check = run_module(CLI, "import", "--input", str(path), "--check")
        assert check.returncode == 1 and "line 8: not JSON" in check.stderr
    finally:
        target.stop()


def test_a_key_moves_only_the_caches_it_administers(
    tmp_path: Path, embedder_process: str, llm: FakeLLM
) -> None:
    keys = {"alpha": mint_key(), "root": mint_key()}
    keys_file = tmp_path / "keys.json"
    entries = [
        entry_for(keys["alpha"], "alpha", ["alpha"], ["read", "write", "admin"]),
        entry_for(keys["root"], "root", ["*"], ["read", "write", "admin"]),
    ]
    keys_file.write_text(json.dumps({"keys": entries}))
    server = cache_server_process(
        tmp_path / "keyed",
        embedder_process,
        "--upstream-base-url",
        llm.base_url,
        env={"SEMCACHE_KEYS_FILE": str(keys_file)},
    ).start()
    try:
        stub = stub_of(server)
        for cache_id in ("alpha", "beta"):
            stub.Set(
                pb.SetRequest(cache_id=cache_id, prompt=f"in {cache_id}", response="x"),
                metadata=(("authorization", f"Bearer {keys['root']}"),),
            )
        every = tmp_path / "every.jsonl"
        alpha = ("--address", server.address, "--api-key", keys["alpha"])
        done = run_module(CLI, "export", *alpha, "--output", str(every))
        assert done.returncode == 0, done.stderr
        assert [json.loads(x)["cache_id"] for x in every.read_text().splitlines()[1:]] == ["alpha"]
        refused = run_module(CLI, "export", *alpha, "--cache-id", "beta", "--output", str(every))
        assert refused.returncode == 1 and "PERMISSION_DENIED" in refused.stderr
        assert not (tmp_path / "every.jsonl.partial").exists()
        into = run_module(CLI, "import", *alpha, "--input", str(every), "--cache-id", "beta")
        assert into.returncode == 1 and "PERMISSION_DENIED" in into.stderr
        anonymous = run_module(
            CLI, "export", "--address", server.address, "--output", str(every),
            env={"SEMCACHE_API_KEY": ""},
        )  # fmt: skip
        assert anonymous.returncode == 1 and "UNAUTHENTICATED" in anonymous.stderr
    finally:
        server.stop()
