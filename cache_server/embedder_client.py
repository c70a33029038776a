"""The cache server's client of the embedder: deadlines, retries, round-robin over replicas.

Addresses are a list ("host:port,host:port"); each may also be a DNS name that resolves to
several embedders (grpc's round_robin policy spreads calls over them). A call that fails with a
retryable status (UNAVAILABLE, DEADLINE_EXCEEDED, RESOURCE_EXHAUSTED) is retried on the next
address; when every try fails, EmbedderUnavailableError says so. gRPC reconnects on its own, with
a short backoff, so service recovers by itself when an embedder returns.
"""

from __future__ import annotations

import asyncio
import itertools
import logging
from collections.abc import Sequence
from dataclasses import dataclass

import grpc
import numpy as np
import numpy.typing as npt
from grpc_health.v1 import health_pb2, health_pb2_grpc

from protos.semcache.embedding.v1 import embedding_pb2 as pb
from protos.semcache.embedding.v1 import embedding_pb2_grpc as pb_grpc
from service_runtime.logs import outgoing_metadata
from service_runtime.tls import ClientTls

log = logging.getLogger(__name__)

FloatArray = npt.NDArray[np.float32]
_RETRYABLE = {
    grpc.StatusCode.UNAVAILABLE,
    grpc.StatusCode.DEADLINE_EXCEEDED,
    grpc.StatusCode.RESOURCE_EXHAUSTED,
}
_CHANNEL_OPTIONS = [
    ("grpc.lb_policy_name", "round_robin"),
    # Reconnect quickly after an embedder restarts (the default backoff grows to 2 minutes).
    ("grpc.initial_reconnect_backoff_ms", 100),
    ("grpc.min_reconnect_backoff_ms", 100),
    ("grpc.max_reconnect_backoff_ms", 1000),
    ("grpc.max_receive_message_length", 16 * 1024 * 1024),
]


class EmbedderUnavailableError(RuntimeError):
    """No embedder answered in time."""


class EmbedderRejectedError(ValueError):
    """The embedder refused the input (INVALID_ARGUMENT); the message says why."""


@dataclass(frozen=True)
class VerifierModel:
    """The verifier an embedder serves (GetModelInfo), with its calibrated band if any."""

    model_id: str
    threshold: float
    band_low: float | None = None
    band_high: float | None = None
    band_embedder_sha256: str = ""


@dataclass(frozen=True)
class EmbedderModel:
    model_id: str
    dimension: int
    fallback: bool
    calibrated_threshold: float | None = None  # from the model's manifest (make calibrate)
    onnx_sha256: str = ""
    verifier: VerifierModel | None = None
    # The verified policy's prior (make calibrate): (w0, w1, observations), or None.
    verified_prior: tuple[float, float, int] | None = None


class EmbedderClient:
    def __init__(
        self,
        addresses: Sequence[str],
        *,
        timeout_s: float = 5.0,
        retries: int = 2,
        tls: ClientTls | None = None,
    ) -> None:
        if not addresses:
            raise ValueError("at least one embedder address is needed")
        self.addresses = list(addresses)
        self._timeout_s = timeout_s
        self._attempts = max(1, retries + 1)
        tls = tls or ClientTls()
        self._channels = [tls.channel(a, _CHANNEL_OPTIONS) for a in addresses]
        self._stubs = [pb_grpc.EmbeddingServiceStub(c) for c in self._channels]
        self._next = itertools.cycle(range(len(self._stubs)))
        self.model: EmbedderModel | None = None
        self._learning: asyncio.Lock | None = None

    async def close(self) -> None:
        await asyncio.gather(*(c.close() for c in self._channels))

    async def serving(self, timeout_s: float = 1.0) -> bool:
        """True when at least one embedder's health service answers SERVING."""

        async def check(channel: grpc.aio.Channel) -> bool:
            try:
                reply = await health_pb2_grpc.HealthStub(channel).Check(
                    health_pb2.HealthCheckRequest(), timeout=timeout_s
                )
            except grpc.aio.AioRpcError:
                return False
            return bool(reply.status == health_pb2.HealthCheckResponse.SERVING)

        return any(await asyncio.gather(*(check(c) for c in self._channels)))

    async def embed(self, texts: Sequence[str]) -> FloatArray:
        """Unit-length float32 vectors, one row per text."""
        reply = await self._call("Embed", pb.EmbedRequest(texts=list(texts)))
        assert isinstance(reply, pb.EmbedResponse)
        return np.frombuffer(reply.vectors, dtype="<f4").reshape(reply.count, reply.dimension)

    async def model_info(self, timeout_s: float | None = None) -> EmbedderModel:
        reply = await self._call("GetModelInfo", pb.GetModelInfoRequest(), timeout_s)
        assert isinstance(reply, pb.GetModelInfoResponse)
        calibrated = reply.calibrated_threshold if reply.HasField("calibrated_threshold") else None
        verifier = None
        if reply.HasField("verifier"):
            v = reply.verifier
            verifier = VerifierModel(
                model_id=v.model_id,
                threshold=v.threshold,
                band_low=v.band_low if v.HasField("band_low") else None,
                band_high=v.band_high if v.HasField("band_high") else None,
                band_embedder_sha256=v.band_embedder_sha256,
            )
        self.model = EmbedderModel(
            reply.model_id,
            reply.dimension,
            reply.fallback,
            calibrated,
            onnx_sha256=reply.onnx_sha256,
            verifier=verifier,
            verified_prior=(
                (
                    reply.verified_prior.w0,
                    reply.verified_prior.w1,
                    int(reply.verified_prior.observations),
                )
                if reply.HasField("verified_prior")
                else None
            ),
        )
        return self.model

    async def score(self, pairs: Sequence[tuple[str, str]]) -> list[float]:
        """The verifier's probability for each (asked, stored) pair."""
        request = pb.ScoreRequest(pairs=[pb.TextPair(query=q, candidate=c) for q, c in pairs])
        reply = await self._call("Score", request)
        assert isinstance(reply, pb.ScoreResponse)
        return list(reply.probabilities)

    async def ensure_model(self, timeout_s: float | None = None) -> EmbedderModel:
        """The model, asked of the embedder once if it is not known yet (one call, however
        many wait for it). Raises EmbedderUnavailableError when no embedder answers."""
        if self.model is not None:
            return self.model
        if self._learning is None:
            self._learning = asyncio.Lock()
        async with self._learning:
            if self.model is not None:
                return self.model
            return await self.model_info(timeout_s)

    def _try_order(self) -> list[int]:
        """Addresses for one call: round robin from the next start, each once before any
        repeat (so a retry never lands on the embedder that just failed), and the ones whose
        connection is known to be failing last."""
        start = next(self._next)
        count = len(self._channels)
        order = [(start + k) % count for k in range(count)]
        failing = grpc.ChannelConnectivity.TRANSIENT_FAILURE
        return sorted(order, key=lambda i: self._channels[i].get_state() == failing)

    async def _call(
        self,
        method: str,
        request: pb.EmbedRequest | pb.GetModelInfoRequest | pb.ScoreRequest,
        timeout_s: float | None = None,
    ) -> pb.EmbedResponse | pb.GetModelInfoResponse | pb.ScoreResponse:
        last: grpc.aio.AioRpcError | None = None
        order = self._try_order()
        for attempt in range(self._attempts):
            index = order[attempt % len(order)]
            try:
                rpc = getattr(self._stubs[index], method)
                response: pb.EmbedResponse | pb.GetModelInfoResponse | pb.ScoreResponse = await rpc(
                    request, timeout=timeout_s or self._timeout_s, metadata=outgoing_metadata()
                )
                return response
            except grpc.aio.AioRpcError as exc:
                if exc.code() == grpc.StatusCode.INVALID_ARGUMENT:
                    raise EmbedderRejectedError(
                        exc.details() or "rejected by the embedder"
                    ) from exc
                if exc.code() not in _RETRYABLE:
                    raise EmbedderUnavailableError(
                        f"embedder {self.addresses[index]} failed: {exc.code().name} "
                        f"{exc.details()}"
                    ) from exc
                last = exc
                log.debug("embedder %s: %s (try %d)", self.addresses[index], exc.code(), attempt)
                if attempt + 1 < self._attempts:
                    await asyncio.sleep(0.05 * (attempt + 1))
        assert last is not None
        raise EmbedderUnavailableError(
            f"embedder unavailable ({', '.join(self.addresses)}): {last.code().name} "
            f"{last.details()}"
        ) from last
