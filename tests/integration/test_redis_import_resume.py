"""A big import into a Redis-backed cache server (`make import-cache`'s program, real
processes) killed half way (SIGKILL) goes on where it stopped when the same command runs
again: every entry the first run had recorded as stored is still there and is not sent
again, and at the end every entry of the file is in the cache exactly once."""

from __future__ import annotations

import gzip
import json
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import grpc
import numpy as np
import pytest

from cache_server.transfer_file import ExportLine, Header
from cache_server.transfer_file_io import ExportWriter
from cache_server.transfer_resume import load, progress_path
from embedder.manifest import ModelManifest
from protos.semcache.cache.v1 import cache_pb2 as pb
from protos.semcache.cache.v1 import cache_pb2_grpc as pb_grpc
from tests.fake_llm import FakeLLM
from tests.processes import REPO, RedisProcess, redis_cache_server, run_module

pytestmark = pytest.mark.slow

CLI = "cache_server.transfer_cli"
ENTRIES = 3000
KILL_AFTER_LINE = 600


@pytest.fixture()
def redis_server(tmp_path: Path) -> Iterator[RedisProcess]:
    server = RedisProcess(tmp_path / "redis").start()
    yield server
    server.stop()


def write_export(path: Path, model: str, dimension: int) -> None:
    """ENTRIES entries of cache "moved" with unit vectors of the served model's size (used as
    they are: nothing is embedded)."""
    rng = np.random.default_rng(27)
    vectors = rng.standard_normal((ENTRIES, dimension)).astype(np.float32)
    vectors /= np.linalg.norm(vectors, axis=1, keepdims=True)
    with ExportWriter(path, Header(model, dimension, time.time())) as writer:
        for i, vector in enumerate(vectors):
            writer.write(
                ExportLine(
                    cache_id="moved",
                    entry_id="",
                    prompt=f"question {i}",
                    response=f"answer {i}",
                    attributes={"tenant": str(i % 4)},
                    created_at=time.time() - 60,
                    expires_at=None,
                    cost=None,
                    vector=vector.astype("<f4").tobytes(),
                )
            )
        writer.commit()


def test_an_import_killed_half_way_goes_on_where_it_stopped(
    tmp_path: Path,
    minilm_dir: Path,
    embedder_process: str,
    redis_server: RedisProcess,
    llm: FakeLLM,
) -> None:
    manifest = ModelManifest.read(minilm_dir)
    exported = tmp_path / "big.jsonl.gz"
    write_export(exported, manifest.onnx_sha256, manifest.dimension)
    server = redis_cache_server(
        tmp_path, embedder_process, redis_server.url, "resume", "--max-cache-size", "10000"
    )
    server.args += ["--upstream-base-url", llm.base_url]
    server.start()
    try:
        stub = pb_grpc.CacheServiceStub(grpc.insecure_channel(server.address))
        command = ["import", "--address", server.address, "--input", str(exported)]
        command += ["--batch-size", "10"]
        first = subprocess.Popen(
            [sys.executable, "-m", CLI, *command],
            cwd=REPO,
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
        )
        deadline = time.monotonic() + 120
        while (recorded := load(progress_path(exported))) is None or (
            recorded.line < KILL_AFTER_LINE
        ):
            assert first.poll() is None, "the import ended before it could be killed"
            assert time.monotonic() < deadline, "the import made no progress"
            time.sleep(0.005)
        first.kill()  # SIGKILL: no chance to clean up
        first.wait()
        stopped = load(progress_path(exported))
        assert stopped is not None and KILL_AFTER_LINE <= stopped.line < ENTRIES + 1
        size = stub.GetStats(pb.GetStatsRequest(cache_id="moved"), timeout=10).cache_size
        assert stopped.line - 1 <= size < ENTRIES  # what it recorded as stored is stored

        # Changed on the server after the kill: a rerun that sent the first entries again
        # would put the file's answer back.
        stub.Set(
            pb.SetRequest(
                cache_id="moved",
                prompt="question 5",
                response="changed after the kill",
                attributes={"tenant": "1"},
            ),
            timeout=10,
        )
        again = run_module(CLI, *command)
        assert again.returncode == 0, again.stderr
        assert f"resuming after line {stopped.line}" in again.stdout
        assert f"imported {ENTRIES} entries into 1 cache(s)" in again.stdout
        assert f"{stopped.counts['imported']} of them by an earlier run" in again.stdout
        assert not progress_path(exported).exists()  # done: nothing left to resume

        stats = stub.GetStats(pb.GetStatsRequest(cache_id="moved"), timeout=10)
        assert stats.cache_size == ENTRIES
        copy = tmp_path / "copy.jsonl.gz"
        export = run_module(CLI, "export", "--address", server.address, "--output", str(copy))
        assert export.returncode == 0, export.stderr
        with gzip.open(copy, "rt") as lines:
            answers = [(e["prompt"], e["response"]) for e in map(json.loads, list(lines)[1:])]
        assert len(answers) == ENTRIES
        held = dict(answers)
        assert sorted(held) == sorted(f"question {i}" for i in range(ENTRIES))
        assert held["question 5"] == "changed after the kill"  # not sent again
        last = ENTRIES - 1
        assert held[f"question {last}"] == f"answer {last}"  # sent by the rerun
    finally:
        server.stop()
