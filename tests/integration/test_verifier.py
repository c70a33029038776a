"""`make finetune-verifier` end to end, small: a cross-encoder trained a few dozen steps on a few
hundred QQP pairs beside the tuned model, exported and checked, served by the embedder's Score
RPC, and asked by the cache server about grey-zone candidates, through `make run` too."""

from __future__ import annotations

import concurrent.futures
import json
import os
import signal
import subprocess
import time
from pathlib import Path

import grpc
import httpx
import pytest

from embedder.manifest import ModelManifest
from embedder.verifier_manifest import VerifierManifest
from protos.semcache.cache.v1 import cache_pb2 as pb
from protos.semcache.cache.v1 import cache_pb2_grpc as pb_grpc
from protos.semcache.embedding.v1 import embedding_pb2 as epb
from protos.semcache.embedding.v1 import embedding_pb2_grpc as epb_grpc
from tests.processes import REPO, ServiceProcess, cache_server_process, free_port, run_module

pytestmark = pytest.mark.slow

STORED = "How do I learn Python?"
PARAPHRASE = "How can I learn Python?"


def test_the_manifest_records_the_run_the_check_and_the_band(verifier: Path, tuned: Path) -> None:
    manifest = VerifierManifest.read(verifier)
    assert manifest.verification is not None
    assert manifest.verification.max_abs_difference <= 1e-4
    band = manifest.band
    assert band is not None
    assert band.embedder_onnx_sha256 == ModelManifest.read(tuned).onnx_sha256
    assert 0.5 <= band.low <= band.high <= 1.01 and 0.0 < band.threshold < 1.0
    if band.reached_target:
        assert band.precision >= 0.9
    training = manifest.training
    assert training is not None and training["data"]["pairs"] == 900
    assert training["hard_negatives"] > 300 and len(training["history"]) >= 1
    # On held-out test pairs: at the band's low edge, the verifier only removes candidates, and
    # it removes wrong ones more than right ones (precision up), as cosine alone cannot.
    cosine_at_low = next(
        p for p in training["test_cosine_curve"] if abs(p["low"] - band.low) < 1e-6
    )
    with_verifier = training["test_with_verifier"]
    assert with_verifier["precision"] >= cosine_at_low["precision"], (
        cosine_at_low,
        with_verifier,
    )


def test_bad_data_stops_before_any_training(tmp_path: Path, minilm_dir: Path) -> None:
    bad = tmp_path / "bad.jsonl"
    bad.write_text(json.dumps({"text_a": "a", "text_b": "b"}) + "\n")
    result = run_module(
        "embedder.training.verifier",
        "--data",
        str(bad),
        "--output",
        str(tmp_path / "out"),
        "--embedder-dir",
        str(minilm_dir),
    )
    assert result.returncode == 2
    assert "missing label" in result.stderr and "verifier:" not in result.stderr
    assert not (tmp_path / "out").exists()


def test_the_embedder_serves_score_in_batches(tuned: Path, verifier: Path) -> None:
    with ServiceProcess(
        "embedder", "--model-dir", str(tuned), "--verifier-dir", str(verifier)
    ) as embedder:
        stub = epb_grpc.EmbeddingServiceStub(embedder.channel())
        info = stub.GetModelInfo(epb.GetModelInfoRequest(), timeout=10)
        manifest = VerifierManifest.read(verifier)
        assert info.HasField("verifier")
        assert info.verifier.onnx_sha256 == manifest.onnx_sha256
        assert manifest.band is not None
        assert info.verifier.band_low == pytest.approx(manifest.band.low)
        assert info.verifier.threshold == pytest.approx(manifest.band.threshold)

        pairs = [
            epb.TextPair(query=STORED, candidate=STORED),
            epb.TextPair(query=STORED, candidate="What is the boiling point of iron in kelvin?"),
        ]
        reply = stub.Score(epb.ScoreRequest(pairs=pairs), timeout=10)
        same, unrelated = reply.probabilities
        assert 0.0 <= unrelated < same <= 1.0

        # Concurrent callers share model runs, as with Embed.
        with concurrent.futures.ThreadPoolExecutor(16) as pool:
            replies = list(
                pool.map(
                    lambda i: stub.Score(
                        epb.ScoreRequest(
                            pairs=[epb.TextPair(query=f"question {i}", candidate=STORED)]
                        ),
                        timeout=30,
                    ),
                    range(64),
                )
            )
        assert max(r.metadata.batch_size for r in replies) > 1

        for bad in (
            epb.ScoreRequest(),
            epb.ScoreRequest(pairs=[epb.TextPair(query=" ", candidate=STORED)]),
            epb.ScoreRequest(pairs=[epb.TextPair(query=STORED, candidate="x" * 9000)]),
        ):
            with pytest.raises(grpc.RpcError) as caught:
                stub.Score(bad, timeout=10)
            assert caught.value.code() == grpc.StatusCode.INVALID_ARGUMENT
        assert embedder.process is not None and embedder.process.poll() is None


def test_an_embedder_without_a_verifier_says_so(embedder_process: str) -> None:
    stub = epb_grpc.EmbeddingServiceStub(grpc.insecure_channel(embedder_process))
    assert not stub.GetModelInfo(epb.GetModelInfoRequest(), timeout=10).HasField("verifier")
    with pytest.raises(grpc.RpcError) as caught:
        stub.Score(epb.ScoreRequest(pairs=[epb.TextPair(query="a", candidate="b")]), timeout=10)
    assert caught.value.code() == grpc.StatusCode.FAILED_PRECONDITION
    assert "verifier-dir" in (caught.value.details() or "")


def _answers(address: str) -> tuple[pb.QueryResponse, pb.QueryResponse]:
    """Stores STORED, then asks its exact repeat and its paraphrase."""
    stub = pb_grpc.CacheServiceStub(grpc.insecure_channel(address))
    stub.Set(pb.SetRequest(prompt=STORED, response="Start with the official tutorial."), timeout=30)
    exact = stub.Query(pb.QueryRequest(query=STORED), timeout=30)
    paraphrase = stub.Query(pb.QueryRequest(query=PARAPHRASE), timeout=30)
    return exact, paraphrase


def test_the_cache_server_asks_the_verifier_about_the_grey_zone(
    tmp_path: Path, tuned: Path, verifier: Path
) -> None:
    band = VerifierManifest.read(verifier).band
    assert band is not None
    with ServiceProcess(
        "embedder", "--model-dir", str(tuned), "--verifier-dir", str(verifier)
    ) as embedder:
        with cache_server_process(tmp_path / "calibrated", embedder.address) as cache:
            stub = pb_grpc.CacheServiceStub(grpc.insecure_channel(cache.address))
            info = stub.GetServerInfo(pb.GetServerInfoRequest(), timeout=10)
            assert info.verifier.source == "calibrated"
            assert (info.verifier.low, info.verifier.high) == pytest.approx((band.low, band.high))
            assert info.verifier.threshold == pytest.approx(band.threshold)

        # Everything from 0.3 up is asked about, and the verifier's bar is out of reach: the
        # paraphrase is refused (the upstream answers), the exact repeat is still a hit.
        strict = ("--verifier-band-low", "0.3", "--verifier-band-high", "1.01")
        with cache_server_process(
            tmp_path / "refuse", embedder.address, *strict, "--verifier-threshold", "1.0"
        ) as cache:
            exact, paraphrase = _answers(cache.address)
            assert exact.cache_hit and exact.cached_data.similarity_score == pytest.approx(1.0)
            assert not paraphrase.cache_hit and "demo responder" in paraphrase.response
            stub = pb_grpc.CacheServiceStub(grpc.insecure_channel(cache.address))
            assert stub.GetServerInfo(pb.GetServerInfoRequest(), timeout=10).verifier.source == (
                "operator"
            )
        # The same band with a bar every pair clears: the paraphrase is a hit.
        with cache_server_process(
            tmp_path / "accept", embedder.address, *strict, "--verifier-threshold", "0.0"
        ) as cache:
            _, paraphrase = _answers(cache.address)
            assert (
                paraphrase.cache_hit and paraphrase.response == "Start with the official tutorial."
            )
        # Turned off: cosine alone, no verifier reported.
        with cache_server_process(
            tmp_path / "off", embedder.address, "--verifier", "off", "--similarity-threshold", "0.3"
        ) as cache:
            stub = pb_grpc.CacheServiceStub(grpc.insecure_channel(cache.address))
            assert not stub.GetServerInfo(pb.GetServerInfoRequest(), timeout=10).HasField(
                "verifier"
            )
            _, paraphrase = _answers(cache.address)
            assert paraphrase.cache_hit


def test_make_run_serves_the_tuned_model_with_the_verifier(
    tmp_path: Path, tuned: Path, verifier: Path
) -> None:
    """The README's path with the tuned model and the verifier: `make run MODEL_DIR=...
    VERIFIER_DIR=...`, /health reporting both calibrations, answers through REST."""
    gateway_port = free_port()
    env = {
        **os.environ,
        "EMBEDDER_PORT": str(free_port()),
        "CACHE_PORT": str(free_port()),
        "CACHE_DATA_DIR": str(tmp_path / "data"),
        "GATEWAY_PORT": str(gateway_port),
        "EMBEDDER_METRICS_PORT": str(free_port()),
        "CACHE_METRICS_PORT": str(free_port()),
    }
    stack = subprocess.Popen(
        ["make", "-s", "run", f"MODEL_DIR={tuned}", f"VERIFIER_DIR={verifier}"],
        cwd=REPO,
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        start_new_session=True,
    )
    url = f"http://127.0.0.1:{gateway_port}"
    try:
        deadline = time.monotonic() + 120
        while True:
            try:
                health = httpx.get(f"{url}/health", timeout=2)
                if health.status_code == 200:
                    break
            except httpx.HTTPError:
                pass
            assert stack.poll() is None and time.monotonic() < deadline, "the stack never came up"
            time.sleep(0.3)
        body = health.json()
        assert body["threshold_source"] == "calibrated"
        assert body["verifier"]["source"] == "calibrated"
        band = VerifierManifest.read(verifier).band
        assert band is not None and body["verifier"]["low"] == pytest.approx(band.low)
        miss = httpx.post(f"{url}/query", json={"query": STORED}, timeout=30).json()
        again = httpx.post(f"{url}/query", json={"query": STORED}, timeout=30).json()
        assert not miss["cache_hit"] and again["cache_hit"]
        assert again["response"] == miss["response"]
    finally:
        os.killpg(stack.pid, signal.SIGINT)
        try:
            output = stack.communicate(timeout=60)[0].decode()
        except subprocess.TimeoutExpired:
            os.killpg(stack.pid, signal.SIGKILL)
            output = stack.communicate()[0].decode()
    assert "stack: stopped" in output
    assert "verifier" in output and "loaded" in output
