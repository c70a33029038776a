"""The gRPC EmbeddingService: validation, error mapping, and the wire encoding."""

from __future__ import annotations

import logging
from typing import NoReturn

import grpc

from embedder import metrics
from embedder.batcher import (
    EmbeddingBatcher,
    QueueFullError,
    ShuttingDownError,
    TextRejectedError,
)
from embedder.encoder import OnnxEncoder
from embedder.manifest import Pooling, Precision
from embedder.scorer import OnnxPairScorer, TextPair
from embedder.settings import EmbedderSettings
from embedder.verifier_manifest import DEFAULT_PROBABILITY_THRESHOLD
from protos.semcache.embedding.v1 import embedding_pb2 as pb
from protos.semcache.embedding.v1 import embedding_pb2_grpc as pb_grpc

log = logging.getLogger(__name__)

_POOLING = {
    Pooling.CLS: pb.POOLING_CLS,
    Pooling.MEAN: pb.POOLING_MEAN,
    Pooling.MAX: pb.POOLING_MAX,
    Pooling.LAST_TOKEN: pb.POOLING_LAST_TOKEN,
}
_PRECISION = {
    Precision.FP32: pb.PRECISION_FP32,
    Precision.FP16: pb.PRECISION_FP16,
    Precision.INT8: pb.PRECISION_INT8,
}


class EmbeddingServicer(pb_grpc.EmbeddingServiceServicer):
    """Answers UNAVAILABLE until `attach` hands it a loaded, warmed-up model."""

    def __init__(self, settings: EmbedderSettings) -> None:
        self._settings = settings
        self._encoder: OnnxEncoder | None = None
        self._batcher: EmbeddingBatcher[str] | None = None
        self._verifier: OnnxPairScorer | None = None
        self._verifier_batcher: EmbeddingBatcher[TextPair] | None = None

    def attach(
        self,
        encoder: OnnxEncoder,
        batcher: EmbeddingBatcher[str],
        verifier: OnnxPairScorer | None = None,
        verifier_batcher: EmbeddingBatcher[TextPair] | None = None,
    ) -> None:
        self._verifier = verifier
        self._verifier_batcher = verifier_batcher
        self._encoder = encoder
        self._batcher = batcher

    async def Embed(
        self, request: pb.EmbedRequest, context: grpc.aio.ServicerContext[object, object]
    ) -> pb.EmbedResponse:
        problem = validate_texts(list(request.texts), self._settings)
        if problem is not None:
            await _abort(context, grpc.StatusCode.INVALID_ARGUMENT, problem)
        if self._batcher is None or self._encoder is None:
            await _abort(context, grpc.StatusCode.UNAVAILABLE, "the model is still loading")
        assert self._batcher is not None and self._encoder is not None
        try:
            result = await self._batcher.embed(list(request.texts))
        except QueueFullError as exc:
            await _abort(context, grpc.StatusCode.RESOURCE_EXHAUSTED, str(exc))
        except ShuttingDownError as exc:
            await _abort(context, grpc.StatusCode.UNAVAILABLE, str(exc))
        except TextRejectedError as exc:
            await _abort(context, grpc.StatusCode.INVALID_ARGUMENT, str(exc))
        metrics.REQUESTS.labels("OK").inc()
        log.debug(
            "embedded %d texts (batch %d, queue %.1f ms, model %.1f ms)",
            len(request.texts),
            result.batch_size,
            result.queue_time_s * 1e3,
            result.inference_time_s * 1e3,
        )
        return pb.EmbedResponse(
            count=result.vectors.shape[0],
            dimension=result.vectors.shape[1],
            # float32, little-endian, row-major: the client reads it with np.frombuffer.
            vectors=result.vectors.astype("<f4", copy=False).tobytes(),
            token_counts=result.token_counts,
            metadata=pb.Metadata(
                queue_time_ms=result.queue_time_s * 1e3,
                inference_time_ms=result.inference_time_s * 1e3,
                batch_size=result.batch_size,
                truncated=result.truncated,
            ),
        )

    async def Score(
        self, request: pb.ScoreRequest, context: grpc.aio.ServicerContext[object, object]
    ) -> pb.ScoreResponse:
        pairs = [(p.query, p.candidate) for p in request.pairs]
        problem = validate_pairs(pairs, self._settings)
        if problem is not None:
            await _abort(context, grpc.StatusCode.INVALID_ARGUMENT, problem)
        if self._encoder is None:
            await _abort(context, grpc.StatusCode.UNAVAILABLE, "the model is still loading")
        if self._verifier_batcher is None:
            await _abort(
                context,
                grpc.StatusCode.FAILED_PRECONDITION,
                "this embedder serves no verifier: start it with --verifier-dir "
                "(EMBEDDER_VERIFIER_DIR), a folder made by `make finetune-verifier`",
            )
        assert self._verifier_batcher is not None
        try:
            result = await self._verifier_batcher.embed(pairs)
        except QueueFullError as exc:
            await _abort(context, grpc.StatusCode.RESOURCE_EXHAUSTED, str(exc))
        except ShuttingDownError as exc:
            await _abort(context, grpc.StatusCode.UNAVAILABLE, str(exc))
        metrics.REQUESTS.labels("OK").inc()
        return pb.ScoreResponse(
            probabilities=result.vectors[:, 0].tolist(),
            metadata=pb.Metadata(
                queue_time_ms=result.queue_time_s * 1e3,
                inference_time_ms=result.inference_time_s * 1e3,
                batch_size=result.batch_size,
                truncated=result.truncated,
            ),
        )

    async def GetModelInfo(
        self, request: pb.GetModelInfoRequest, context: grpc.aio.ServicerContext[object, object]
    ) -> pb.GetModelInfoResponse:
        if self._encoder is None:
            await _abort(context, grpc.StatusCode.UNAVAILABLE, "the model is still loading")
        assert self._encoder is not None
        manifest = self._encoder.manifest
        calibration = manifest.calibration
        reply = pb.GetModelInfoResponse(
            model_id=manifest.model_id,
            dimension=manifest.dimension,
            pooling=_POOLING[manifest.pooling],
            max_sequence_length=manifest.max_seq_length,
            precision=_PRECISION[manifest.precision],
            execution_provider=self._encoder.execution_provider,
            fallback=manifest.fallback,
            requested_model_id=manifest.requested_model_id or "",
            normalized=manifest.normalize,
            onnx_sha256=manifest.onnx_sha256,
            max_batch_size=self._settings.max_batch_size,
            max_texts_per_request=self._settings.max_texts_per_request,
            max_text_chars=self._settings.max_text_chars,
        )
        if calibration is not None:
            reply.calibrated_threshold = calibration.threshold
            reply.calibration_target_precision = calibration.target_precision
            reply.calibration_precision = calibration.precision
            reply.calibration_recall = calibration.recall
        if self._verifier is not None:
            reply.verifier.CopyFrom(verifier_info(self._verifier))
        if manifest.verified_prior is not None:
            prior = manifest.verified_prior
            reply.verified_prior.CopyFrom(
                pb.VerifiedPrior(w0=prior.w0, w1=prior.w1, observations=prior.observations)
            )
        return reply


def verifier_info(scorer: OnnxPairScorer) -> pb.VerifierInfo:
    manifest = scorer.manifest
    info = pb.VerifierInfo(
        model_id=manifest.model_id,
        onnx_sha256=manifest.onnx_sha256,
        max_sequence_length=manifest.max_seq_length,
        execution_provider=scorer.execution_provider,
    )
    band = manifest.band
    if band is None:
        info.threshold = DEFAULT_PROBABILITY_THRESHOLD
        return info
    info.band_low, info.band_high, info.threshold = band.low, band.high, band.threshold
    info.band_embedder_sha256 = band.embedder_onnx_sha256
    info.band_precision, info.band_recall = band.precision, band.recall
    return info


def validate_pairs(pairs: list[TextPair], settings: EmbedderSettings) -> str | None:
    """The reason a Score request is refused, or None when it is acceptable."""
    if not pairs:
        return "pairs is empty: send at least one (query, candidate) pair"
    if len(pairs) > settings.max_texts_per_request:
        return f"too many pairs: {len(pairs)}; at most {settings.max_texts_per_request} per request"
    for index, pair in enumerate(pairs):
        for name, text in zip(("query", "candidate"), pair, strict=True):
            if not text.strip():
                return f"pairs[{index}].{name} is empty"
            if len(text) > settings.max_text_chars:
                return (
                    f"pairs[{index}].{name} has {len(text)} characters; the limit is "
                    f"{settings.max_text_chars}"
                )
    return None


def validate_texts(texts: list[str], settings: EmbedderSettings) -> str | None:
    """The reason a request is refused, or None when it is acceptable."""
    if not texts:
        return "texts is empty: send at least one text"
    if len(texts) > settings.max_texts_per_request:
        return f"too many texts: {len(texts)}; at most {settings.max_texts_per_request} per request"
    for index, text in enumerate(texts):
        if not text.strip():
            return f"texts[{index}] is empty"
        if len(text) > settings.max_text_chars:
            return (
                f"texts[{index}] has {len(text)} characters; the limit is {settings.max_text_chars}"
            )
    return None


async def _abort(
    context: grpc.aio.ServicerContext[object, object], code: grpc.StatusCode, message: str
) -> NoReturn:
    metrics.REQUESTS.labels(code.name).inc()
    await context.abort(code, message)
    raise AssertionError("unreachable: abort raises")
