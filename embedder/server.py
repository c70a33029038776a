"""The embedder process: listen (health NOT_SERVING) -> load and warm up the model ->
SERVING. SIGTERM/SIGINT: NOT_SERVING -> finish in-flight RPCs (grace period) -> drain the batch
queue -> exit 0."""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Sequence
from functools import partial
from typing import Any

from embedder import metrics
from embedder.batcher import EmbeddingBatcher
from embedder.encoder import ModelIntegrityError, OnnxEncoder, ProviderUnavailableError
from embedder.scorer import OnnxPairScorer, TextPair
from embedder.service import EmbeddingServicer
from embedder.settings import EmbedderSettings
from protos.semcache.embedding.v1 import embedding_pb2 as pb
from protos.semcache.embedding.v1 import embedding_pb2_grpc as pb_grpc
from service_runtime.grpc_service import GrpcService, serve_until_signal
from service_runtime.metrics import serve_metrics
from service_runtime.settings import start_service

log = logging.getLogger("embedder")

SERVICE_NAME = pb.DESCRIPTOR.services_by_name["EmbeddingService"].full_name
WARMUP_TEXTS = ["warm up", "a slightly longer text to warm up the model's kernels"]


class Embedder:
    """The embedder process: the model, its batcher, and the gRPC service around them."""

    def __init__(self, settings: EmbedderSettings) -> None:
        self.settings = settings
        self.service = GrpcService(
            host=settings.listen_host(),
            port=settings.port,
            service_names=[SERVICE_NAME],
            port_file=settings.port_file,
            logger=log,
            tls=settings.server_tls,
            max_connection_age_s=settings.max_connection_age_s,
            connection_age_grace_s=settings.grace_period_s,
        )
        self.servicer = EmbeddingServicer(settings)
        pb_grpc.add_EmbeddingServiceServicer_to_server(self.servicer, self.service.server)
        self.batcher: EmbeddingBatcher[str] | None = None
        self.verifier_batcher: EmbeddingBatcher[TextPair] | None = None

    def _runtime(self) -> dict[str, Any]:
        """How every model here runs (the embedding model and the verifier alike)."""
        s = self.settings
        return {
            "device": s.model_device,
            "cuda_device_id": s.cuda_device_id,
            "intra_op_threads": s.intra_op_threads,
            "verify_checksum": s.verify_checksum,
            "spin_wait": s.spin_wait,
            "spin_after_run": s.spin_after_run,
        }

    async def load_model(self) -> None:
        s = self.settings
        serve_metrics(metrics.REGISTRY, s.listen_host(), s.metrics_port)
        started = time.perf_counter()
        encoder = await asyncio.to_thread(
            partial(OnnxEncoder, s.model_dir, truncate=s.truncate, **self._runtime())
        )
        manifest = encoder.manifest
        if manifest.fallback:
            log.warning(
                "!!! FALLBACK MODEL SERVED: %s was asked for but could not be had; serving %s "
                "(%d dims). Export the real model with `make model MODEL=...` !!!",
                manifest.requested_model_id,
                manifest.model_id,
                manifest.dimension,
            )
        self.batcher = EmbeddingBatcher(
            encoder,
            max_batch_size=s.max_batch_size,
            max_batch_tokens=s.batch_token_budget,
            max_wait_s=s.max_wait_ms / 1e3,
            max_queue=s.max_queue,
        )
        self.batcher.start()
        for _ in range(3):  # first runs allocate arenas and pick kernels
            await self.batcher.embed(WARMUP_TEXTS)
        verifier = await self._load_verifier()
        self.servicer.attach(encoder, self.batcher, verifier, self.verifier_batcher)
        log.info(
            "serving %s (%d dims, %s pooling, %s) on %s in %.1fs",
            manifest.model_id,
            manifest.dimension,
            manifest.pooling.value,
            manifest.precision.value,
            encoder.execution_provider,
            time.perf_counter() - started,
        )

    async def _load_verifier(self) -> OnnxPairScorer | None:
        s = self.settings
        if s.verifier_dir is None:
            return None
        started = time.perf_counter()
        scorer = await asyncio.to_thread(partial(OnnxPairScorer, s.verifier_dir, **self._runtime()))
        self.verifier_batcher = EmbeddingBatcher(
            scorer,
            max_batch_size=s.max_batch_size,
            max_batch_tokens=2 * s.batch_token_budget,  # a pair is two texts
            max_wait_s=s.max_wait_ms / 1e3,
            max_queue=s.max_queue,
            instrument=False,
            span_name="verifier.batch",
        )
        self.verifier_batcher.start()
        for _ in range(3):
            await self.verifier_batcher.embed([(WARMUP_TEXTS[0], WARMUP_TEXTS[1])])
        band = scorer.manifest.band
        log.info(
            "verifier %s loaded in %.1fs (band %s)",
            scorer.manifest.model_id,
            time.perf_counter() - started,
            f"{band.low:.2f}-{band.high:.2f} at p >= {band.threshold:.2f}" if band else "none",
        )
        return scorer

    async def drain(self) -> None:
        if self.verifier_batcher is not None:
            await self.verifier_batcher.stop()
        if self.batcher is not None:
            await self.batcher.stop()
            log.info(
                "stopped after %d batches, %d texts, largest batch %d",
                self.batcher.stats.batches,
                self.batcher.stats.texts,
                self.batcher.stats.max_batch_size,
            )


async def serve(settings: EmbedderSettings) -> int:
    embedder = Embedder(settings)
    return await serve_until_signal(
        embedder.service,
        prepare=embedder.load_model,
        cleanup=embedder.drain,
        grace_s=settings.grace_period_s,
    )


def main(argv: Sequence[str] | None = None) -> int:
    settings = start_service(EmbedderSettings, argv, "embedder")
    if settings is None:
        return 2
    try:
        return asyncio.run(serve(settings))
    except (FileNotFoundError, ProviderUnavailableError, ModelIntegrityError) as exc:
        log.error("cannot start: %s", exc)
        return 2
