"""The embedder process: a grpc.aio server with health, reflection and graceful shutdown.

Start-up order: listen (health NOT_SERVING) -> load the model -> warm it up -> SERVING.
SIGTERM/SIGINT: health NOT_SERVING -> stop taking RPCs, finish in-flight ones (grace period)
-> drain the batch queue -> exit 0.
"""

from __future__ import annotations

import asyncio
import logging
import signal
import sys
import time
from collections.abc import Sequence

import grpc
from grpc_health.v1 import health, health_pb2, health_pb2_grpc
from grpc_reflection.v1alpha import reflection
from pydantic import ValidationError

from embedder.batcher import EmbeddingBatcher
from embedder.encoder import ModelIntegrityError, OnnxEncoder, ProviderUnavailableError
from embedder.service import EmbeddingServicer
from embedder.settings import EmbedderSettings, settings_from_args
from protos.semcache.embedding.v1 import embedding_pb2 as pb
from protos.semcache.embedding.v1 import embedding_pb2_grpc as pb_grpc

log = logging.getLogger("embedder")

SERVICE_NAME = pb.DESCRIPTOR.services_by_name["EmbeddingService"].full_name
WARMUP_TEXTS = ["warm up", "a slightly longer text to warm up the model's kernels"]
# Vectors are float32 * dimension * texts: 256 texts x 1024 dims is 1 MiB; leave headroom.
MAX_MESSAGE_BYTES = 16 * 1024 * 1024


class EmbedderServer:
    def __init__(self, settings: EmbedderSettings) -> None:
        self.settings = settings
        self.server = grpc.aio.server(
            options=[
                ("grpc.max_receive_message_length", MAX_MESSAGE_BYTES),
                ("grpc.max_send_message_length", MAX_MESSAGE_BYTES),
            ]
        )
        self.health = health.aio.HealthServicer()
        self.servicer = EmbeddingServicer(settings)
        self.batcher: EmbeddingBatcher | None = None
        pb_grpc.add_EmbeddingServiceServicer_to_server(self.servicer, self.server)
        health_pb2_grpc.add_HealthServicer_to_server(self.health, self.server)
        reflection.enable_server_reflection(
            [SERVICE_NAME, health.SERVICE_NAME, reflection.SERVICE_NAME], self.server
        )
        self.port = self.server.add_insecure_port(f"{settings.host}:{settings.port}")

    async def _set_serving(self, serving: bool) -> None:
        status = (
            health_pb2.HealthCheckResponse.SERVING
            if serving
            else health_pb2.HealthCheckResponse.NOT_SERVING
        )
        for name in ("", SERVICE_NAME):
            await self.health.set(name, status)

    async def start(self) -> None:
        await self._set_serving(False)
        await self.server.start()
        log.info(
            "listening on %s:%d (NOT_SERVING until the model is warm)",
            self.settings.host,
            self.port,
        )
        if self.settings.port_file is not None:
            self.settings.port_file.write_text(f"{self.port}\n")

    async def load_model(self) -> None:
        s = self.settings
        started = time.perf_counter()
        encoder = await asyncio.to_thread(
            OnnxEncoder,
            s.model_dir,
            device=s.model_device,
            cuda_device_id=s.cuda_device_id,
            intra_op_threads=s.intra_op_threads,
            truncate=s.truncate,
            verify_checksum=s.verify_checksum,
            spin_wait=s.spin_wait,
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
        self.servicer.attach(encoder, self.batcher)
        await self._set_serving(True)
        log.info(
            "serving %s (%d dims, %s pooling, %s) on %s in %.1fs",
            manifest.model_id,
            manifest.dimension,
            manifest.pooling.value,
            manifest.precision.value,
            encoder.execution_provider,
            time.perf_counter() - started,
        )

    async def stop(self) -> None:
        await self._set_serving(False)
        log.info(
            "shutting down: finishing in-flight requests (grace %.1fs)",
            self.settings.grace_period_s,
        )
        await self.server.stop(self.settings.grace_period_s)
        if self.batcher is not None:
            await self.batcher.stop()
            log.info(
                "stopped after %d batches, %d texts, largest batch %d",
                self.batcher.stats.batches,
                self.batcher.stats.texts,
                self.batcher.stats.max_batch_size,
            )


async def serve(settings: EmbedderSettings) -> int:
    server = EmbedderServer(settings)
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, stop.set)
    await server.start()
    loader = asyncio.create_task(server.load_model())
    stopping = asyncio.create_task(stop.wait())
    await asyncio.wait({loader, stopping}, return_when=asyncio.FIRST_COMPLETED)
    if loader.done() and loader.exception() is not None:
        stopping.cancel()
        await server.server.stop(0)
        raise loader.exception()  # type: ignore[misc]
    await stop.wait()
    loader.cancel()
    await server.stop()
    return 0


def main(argv: Sequence[str] | None = None) -> int:
    try:
        settings = settings_from_args(EmbedderSettings, argv, prog="python -m embedder")
    except ValidationError as exc:
        print(f"embedder: invalid settings:\n{exc}", file=sys.stderr)
        return 2
    logging.basicConfig(
        level=settings.log_level,
        format="%(asctime)s %(levelname)s [embedder] %(name)s: %(message)s",
    )
    try:
        return asyncio.run(serve(settings))
    except (FileNotFoundError, ProviderUnavailableError, ModelIntegrityError) as exc:
        log.error("cannot start: %s", exc)
        return 2
