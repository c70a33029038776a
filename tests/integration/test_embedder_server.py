"""A real embedder process over a real socket."""

from __future__ import annotations

import asyncio
import time
from pathlib import Path

import grpc
import numpy as np
import pytest
from grpc_health.v1 import health_pb2, health_pb2_grpc
from grpc_reflection.v1alpha.proto_reflection_descriptor_database import (
    ProtoReflectionDescriptorDatabase,
)

from bench.qqp import QuestionPair
from embedder.encoder import OnnxEncoder
from protos.semcache.embedding.v1 import embedding_pb2 as pb
from protos.semcache.embedding.v1 import embedding_pb2_grpc as pb_grpc
from tests.processes import ServiceProcess, run_module

pytestmark = pytest.mark.slow


def vectors_of(reply: pb.EmbedResponse) -> np.ndarray:
    return np.frombuffer(reply.vectors, dtype="<f4").reshape(reply.count, reply.dimension)


@pytest.fixture()
def stub(embedder_process: str) -> pb_grpc.EmbeddingServiceStub:
    return pb_grpc.EmbeddingServiceStub(grpc.insecure_channel(embedder_process))


def test_health_is_serving_and_reflection_lists_the_service(embedder_process: str) -> None:
    channel = grpc.insecure_channel(embedder_process)
    health = health_pb2_grpc.HealthStub(channel)
    for service in ("", "semcache.embedding.v1.EmbeddingService"):
        reply = health.Check(health_pb2.HealthCheckRequest(service=service), timeout=5)
        assert reply.status == health_pb2.HealthCheckResponse.SERVING
    services = ProtoReflectionDescriptorDatabase(channel).get_services()
    assert "semcache.embedding.v1.EmbeddingService" in services
    assert "grpc.health.v1.Health" in services


def test_model_info_reports_what_runs(stub: pb_grpc.EmbeddingServiceStub) -> None:
    info = stub.GetModelInfo(pb.GetModelInfoRequest(), timeout=5)
    assert info.model_id == "sentence-transformers/all-MiniLM-L6-v2"
    assert info.dimension == 384
    assert info.pooling == pb.POOLING_MEAN
    assert info.precision == pb.PRECISION_FP32
    assert info.execution_provider == "CPUExecutionProvider"
    assert info.max_sequence_length == 256
    assert info.normalized and not info.fallback


def test_vectors_match_in_process_results(
    stub: pb_grpc.EmbeddingServiceStub, minilm_dir: Path, qqp_pairs: list[QuestionPair]
) -> None:
    texts = [p.text_a for p in qqp_pairs[:20]]
    reply = stub.Embed(pb.EmbedRequest(texts=texts), timeout=30)
    expected = OnnxEncoder(minilm_dir).encode(texts)
    np.testing.assert_allclose(vectors_of(reply), expected, atol=1e-5)
    assert list(reply.token_counts) == [t.length for t in OnnxEncoder(minilm_dir).tokenize(texts)]


def test_64_concurrent_calls_are_correct_and_batched(
    embedder_process: str, minilm_dir: Path, qqp_pairs: list[QuestionPair]
) -> None:
    texts = [p.text_b for p in qqp_pairs[100:164]]
    expected = OnnxEncoder(minilm_dir).encode(texts)

    async def fire() -> list[pb.EmbedResponse]:
        async with grpc.aio.insecure_channel(embedder_process) as channel:
            aio_stub = pb_grpc.EmbeddingServiceStub(channel)
            return list(
                await asyncio.gather(
                    *(aio_stub.Embed(pb.EmbedRequest(texts=[t]), timeout=60) for t in texts)
                )
            )

    replies = asyncio.run(fire())
    for reply, want in zip(replies, expected, strict=True):
        np.testing.assert_allclose(vectors_of(reply)[0], want, atol=1e-5)
    assert max(r.metadata.batch_size for r in replies) > 1


@pytest.mark.parametrize(
    ("texts", "message"),
    [
        ([], "texts is empty"),
        (["fine", ""], "texts[1] is empty"),
        (["x" * 8193], "texts[0] has 8193 characters; the limit is 8192"),
        (["q"] * 257, "too many texts: 257"),
    ],
)
def test_bad_input_is_invalid_argument_and_the_server_lives_on(
    stub: pb_grpc.EmbeddingServiceStub, texts: list[str], message: str
) -> None:
    with pytest.raises(grpc.RpcError) as info:
        stub.Embed(pb.EmbedRequest(texts=texts), timeout=10)
    assert info.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert message in (info.value.details() or "")
    assert stub.Embed(pb.EmbedRequest(texts=["still alive?"]), timeout=10).count == 1


def test_long_texts_are_truncated_by_default(stub: pb_grpc.EmbeddingServiceStub) -> None:
    reply = stub.Embed(pb.EmbedRequest(texts=["word " * 600]), timeout=10)
    assert reply.token_counts[0] == 256
    assert reply.metadata.truncated


def test_strict_server_rejects_long_texts_and_sheds_load(minilm_dir: Path) -> None:
    with ServiceProcess(
        "embedder",
        "--model-dir",
        str(minilm_dir),
        "--truncate",
        "false",
        "--max-queue",
        "16",
        "--max-texts-per-request",
        "16",
        "--max-batch-size",
        "16",
    ) as server:
        stub = pb_grpc.EmbeddingServiceStub(grpc.insecure_channel(server.address))
        with pytest.raises(grpc.RpcError) as info:
            stub.Embed(pb.EmbedRequest(texts=["short", "word " * 600]), timeout=10)
        assert info.value.code() == grpc.StatusCode.INVALID_ARGUMENT
        assert "texts[1] has more than 256 tokens" in (info.value.details() or "")

        async def flood() -> list[grpc.StatusCode]:
            async with grpc.aio.insecure_channel(server.address) as channel:
                aio_stub = pb_grpc.EmbeddingServiceStub(channel)
                batch = pb.EmbedRequest(texts=["a fairly long question " * 10] * 16)
                calls = [aio_stub.Embed(batch, timeout=60) for _ in range(12)]
                codes = []
                for call in calls:
                    try:
                        await call
                        codes.append(grpc.StatusCode.OK)
                    except grpc.aio.AioRpcError as exc:
                        codes.append(exc.code())
                return codes

        codes = asyncio.run(flood())
        assert grpc.StatusCode.RESOURCE_EXHAUSTED in codes
        assert grpc.StatusCode.OK in codes
        assert set(codes) <= {grpc.StatusCode.OK, grpc.StatusCode.RESOURCE_EXHAUSTED}


def test_sigterm_finishes_in_flight_requests_then_exits_cleanly(
    minilm_dir: Path, qqp_pairs: list[QuestionPair]
) -> None:
    server = ServiceProcess("embedder", "--model-dir", str(minilm_dir)).start()
    texts = [p.text_a for p in qqp_pairs[:64]]
    channel = grpc.insecure_channel(server.address)
    stub = pb_grpc.EmbeddingServiceStub(channel)
    futures = [stub.Embed.future(pb.EmbedRequest(texts=texts), timeout=60) for _ in range(12)]
    time.sleep(0.3)  # the requests are on the server, most still queued behind the model
    code = server.terminate(timeout=60)
    replies = [f.result() for f in futures]
    assert code == 0, server.log()
    assert all(r.count == 64 for r in replies)
    assert "shutting down" in server.log()
    with pytest.raises(grpc.RpcError):
        stub.Embed(pb.EmbedRequest(texts=["after shutdown"]), timeout=2)


def test_health_is_not_serving_while_the_model_loads(tmp_path: Path, minilm_dir: Path) -> None:
    # A model folder whose checksum does not match: the server must refuse to start, clearly.
    broken = tmp_path / "broken"
    broken.mkdir()
    for f in minilm_dir.iterdir():
        (broken / f.name).symlink_to(f)
    (broken / "model.onnx").unlink()
    (broken / "model.onnx").write_bytes(b"not a model")
    result = run_module("embedder", "--port", "0", "--model-dir", str(broken), timeout=60)
    assert result.returncode == 2
    assert "does not match the sha256" in result.stderr


def test_missing_model_folder_is_a_clear_startup_error(tmp_path: Path) -> None:
    result = run_module("embedder", "--port", "0", "--model-dir", str(tmp_path), timeout=60)
    assert result.returncode == 2
    assert "semcache-model.json is missing" in result.stderr


def test_cuda_asked_for_without_cuda_fails_instead_of_falling_back(minilm_dir: Path) -> None:
    import onnxruntime as ort

    if "CUDAExecutionProvider" in ort.get_available_providers():
        pytest.skip("CUDA is present here; tests/integration/test_cuda.py covers it")
    result = run_module(
        "embedder",
        "--port",
        "0",
        "--model-dir",
        str(minilm_dir),
        "--model-device",
        "cuda",
        timeout=60,
    )
    assert result.returncode == 2
    assert "CUDAExecutionProvider" in result.stderr
    assert "serving" not in result.stderr


def test_bad_settings_exit_with_a_message() -> None:
    result = run_module("embedder", "--max-batch-size", "0", timeout=60)
    assert result.returncode == 2
    assert "max_batch_size" in result.stderr


def test_malformed_requests_are_invalid_argument(embedder_process: str) -> None:
    channel = grpc.insecure_channel(embedder_process)
    raw = channel.unary_unary(
        "/semcache.embedding.v1.EmbeddingService/Embed",
        request_serializer=lambda b: b,
        response_deserializer=lambda b: b,
    )
    for payload, reason in [
        (bytes([0x0A, 2, 0xFF, 0xFE]), "bad UTF-8"),  # texts[0] is not UTF-8
        (b"\x0a" + b"\xff" * 3, "corrupt"),  # a length that runs past the end
    ]:
        with pytest.raises(grpc.RpcError) as info:
            raw(payload, timeout=10)
        assert info.value.code() == grpc.StatusCode.INVALID_ARGUMENT
        assert reason in (info.value.details() or "")
    too_big = b"\x0a\x80\x80\x80\x0a" + b"a" * (20 * 1024 * 1024)
    with pytest.raises(grpc.RpcError) as info:
        raw(too_big, timeout=30)
    assert info.value.code() == grpc.StatusCode.RESOURCE_EXHAUSTED
    stub = pb_grpc.EmbeddingServiceStub(channel)
    assert stub.Embed(pb.EmbedRequest(texts=["still serving"]), timeout=10).count == 1
