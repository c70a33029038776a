"""The embedding service's methods (all idempotent: they compute and keep nothing), their
requests and their replies as semcache_client.embedding_models values."""

from __future__ import annotations

from collections.abc import Sequence

from semcache_client._calls import Rpc
from semcache_client._stubs import EMBEDDING_SERVICE, embedding_pb
from semcache_client.embedding_models import (
    Embeddings,
    EmbedMetadata,
    ModelInfo,
    Scores,
    VerifierInfo,
)

E = EMBEDDING_SERVICE
EMBED = Rpc(E, "Embed", embedding_pb.EmbedRequest, embedding_pb.EmbedResponse, idempotent=True)
GET_MODEL_INFO = Rpc(
    E,
    "GetModelInfo",
    embedding_pb.GetModelInfoRequest,
    embedding_pb.GetModelInfoResponse,
    idempotent=True,
)
SCORE = Rpc(E, "Score", embedding_pb.ScoreRequest, embedding_pb.ScoreResponse, idempotent=True)

_POOLING = {
    embedding_pb.POOLING_CLS: "cls",
    embedding_pb.POOLING_MEAN: "mean",
    embedding_pb.POOLING_MAX: "max",
    embedding_pb.POOLING_LAST_TOKEN: "last_token",
}
_PRECISION = {
    embedding_pb.PRECISION_FP32: "fp32",
    embedding_pb.PRECISION_FP16: "fp16",
    embedding_pb.PRECISION_INT8: "int8",
}


def embed_request(texts: Sequence[str]) -> embedding_pb.EmbedRequest:
    if isinstance(texts, str):
        raise TypeError("texts is a sequence of strings; for one text pass [text]")
    return embedding_pb.EmbedRequest(texts=list(texts))


def score_request(pairs: Sequence[tuple[str, str]]) -> embedding_pb.ScoreRequest:
    return embedding_pb.ScoreRequest(
        pairs=[embedding_pb.TextPair(query=q, candidate=c) for q, c in pairs]
    )


def _metadata(pb: embedding_pb.Metadata) -> EmbedMetadata:
    return EmbedMetadata(pb.queue_time_ms, pb.inference_time_ms, pb.batch_size, pb.truncated)


def embeddings(pb: embedding_pb.EmbedResponse) -> Embeddings:
    return Embeddings(
        count=pb.count,
        dimension=pb.dimension,
        raw=pb.vectors,
        token_counts=list(pb.token_counts),
        metadata=_metadata(pb.metadata),
    )


def scores(pb: embedding_pb.ScoreResponse) -> Scores:
    return Scores(list(pb.probabilities), _metadata(pb.metadata))


def model_info(pb: embedding_pb.GetModelInfoResponse) -> ModelInfo:
    verifier = None
    if pb.HasField("verifier"):
        v = pb.verifier
        verifier = VerifierInfo(
            model_id=v.model_id,
            onnx_sha256=v.onnx_sha256,
            max_sequence_length=v.max_sequence_length,
            execution_provider=v.execution_provider,
            band_low=v.band_low if v.HasField("band_low") else None,
            band_high=v.band_high if v.HasField("band_high") else None,
            threshold=v.threshold,
            band_embedder_sha256=v.band_embedder_sha256,
            band_precision=v.band_precision,
            band_recall=v.band_recall,
        )
    return ModelInfo(
        model_id=pb.model_id,
        dimension=pb.dimension,
        pooling=_POOLING.get(pb.pooling, "unspecified"),
        max_sequence_length=pb.max_sequence_length,
        precision=_PRECISION.get(pb.precision, "unspecified"),
        execution_provider=pb.execution_provider,
        fallback=pb.fallback,
        requested_model_id=pb.requested_model_id,
        normalized=pb.normalized,
        onnx_sha256=pb.onnx_sha256,
        max_batch_size=pb.max_batch_size,
        max_texts_per_request=pb.max_texts_per_request,
        max_text_chars=pb.max_text_chars,
        calibrated_threshold=(
            pb.calibrated_threshold if pb.HasField("calibrated_threshold") else None
        ),
        calibration_target_precision=pb.calibration_target_precision,
        calibration_precision=pb.calibration_precision,
        calibration_recall=pb.calibration_recall,
        verifier=verifier,
    )
