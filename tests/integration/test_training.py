"""`make finetune` end to end, small: a few hundred QQP pairs, a few dozen steps. The result is
a verified ONNX export whose manifest records the run and a calibrated threshold, it is not
worse than its base on held-out pairs, and a stack serving it uses the calibrated threshold."""

from __future__ import annotations

import json
from pathlib import Path

import grpc
import pytest

from embedder.manifest import ModelManifest
from protos.semcache.cache.v1 import cache_pb2 as pb
from protos.semcache.cache.v1 import cache_pb2_grpc as pb_grpc
from protos.semcache.embedding.v1 import embedding_pb2 as epb
from protos.semcache.embedding.v1 import embedding_pb2_grpc as epb_grpc
from tests.processes import ServiceProcess, cache_server_process, run_module

pytestmark = pytest.mark.slow


def test_the_manifest_records_the_run_and_the_calibration(tuned: Path, pairs_file: Path) -> None:
    manifest = ModelManifest.read(tuned)
    assert manifest.verification is not None and manifest.verification.min_cosine >= 0.9999
    training = manifest.training
    assert training is not None
    assert training["base_model"] == "sentence-transformers/all-MiniLM-L6-v2"
    assert training["data"]["pairs"] == 900 and len(training["data"]["sha256"]) == 64
    assert training["recipe"]["max_grad_norm"] == 0.5
    assert training["split"]["train"] > 300 and training["split"]["test"] > 100
    history = training["history"]
    assert history[0]["epoch"] == 0 and len(history) >= 2
    # The kept model is the best on dev, the base included: never worse there than the base.
    kept = history[training["kept_epoch"]]
    assert kept["dev_pr_auc"] >= history[0]["dev_pr_auc"]
    before, after = training["test_before"], training["test_after"]
    assert len(before["curve"]) == len(after["curve"]) == 50
    # On held-out test pairs (no question of them trained on): no worse than the base.
    assert after["pr_auc"] >= before["pr_auc"] - 0.01, (before["pr_auc"], after["pr_auc"])
    calibration = manifest.calibration
    assert calibration is not None and calibration.target_precision == 0.9
    assert 0.5 <= calibration.threshold <= 0.99
    if calibration.reached_target:
        assert calibration.precision >= 0.9


def test_bad_data_stops_before_any_training(tmp_path: Path) -> None:
    bad = tmp_path / "bad.jsonl"
    bad.write_text(json.dumps({"text_a": "a", "text_b": "b", "label": 7}) + "\n")
    result = run_module(
        "embedder.training.finetune", "--data", str(bad), "--output", str(tmp_path / "out")
    )
    assert result.returncode == 2
    assert "label must be 0 or 1" in result.stderr and "fine-tuning" not in result.stderr
    assert not (tmp_path / "out").exists()


def test_a_stack_serving_the_tuned_model_uses_its_calibrated_threshold(
    tmp_path: Path, tuned: Path
) -> None:
    threshold = ModelManifest.read(tuned).calibration.threshold  # type: ignore[union-attr]
    with (
        ServiceProcess("embedder", "--model-dir", str(tuned)) as embedder,
        cache_server_process(tmp_path, embedder.address) as cache,
    ):
        info = epb_grpc.EmbeddingServiceStub(embedder.channel()).GetModelInfo(
            epb.GetModelInfoRequest(), timeout=10
        )
        assert info.calibrated_threshold == pytest.approx(threshold)
        stub = pb_grpc.CacheServiceStub(grpc.insecure_channel(cache.address))
        server = stub.GetServerInfo(pb.GetServerInfoRequest(), timeout=10)
        assert server.threshold_source == "calibrated"
        assert server.default_threshold == pytest.approx(threshold)
        stats = stub.GetStats(pb.GetStatsRequest(), timeout=10)
        assert stats.threshold_source == "calibrated"
    # The operator's setting still wins.
    with (
        ServiceProcess("embedder", "--model-dir", str(tuned)) as embedder,
        cache_server_process(
            tmp_path / "op", embedder.address, "--similarity-threshold", "0.5"
        ) as cache,
    ):
        stub = pb_grpc.CacheServiceStub(grpc.insecure_channel(cache.address))
        stub.GetServerInfo(pb.GetServerInfoRequest(), timeout=10)
        stats = stub.GetStats(pb.GetStatsRequest(), timeout=10)
        assert (stats.current_threshold, stats.threshold_source) == (0.5, "operator")
