"""Clients of the embedding service (semcache.embedding.v1.EmbeddingService): blocking and
asyncio, with the same options as the cache clients (every method of this service is
idempotent, so each is retried on UNAVAILABLE)."""

from __future__ import annotations

from collections.abc import Sequence
from types import TracebackType

from semcache_client import _embedding_rpcs as rpcs
from semcache_client._invokers import AsyncInvoker, SyncInvoker
from semcache_client._stubs import embedding_pb
from semcache_client.config import (
    ChannelOption,
    ClientConfig,
    RequestIdFactory,
    RetryPolicy,
    Timeouts,
    TlsConfig,
)
from semcache_client.embedding_models import Embeddings, ModelInfo, Scores


def _config(
    addresses: str | Sequence[str],
    tls: TlsConfig | None,
    timeouts: Timeouts | None,
    retry: RetryPolicy | None,
    metadata: Sequence[tuple[str, str]],
    request_id_factory: RequestIdFactory | None,
    channel_options: Sequence[ChannelOption],
) -> ClientConfig:
    return ClientConfig.build(
        addresses,
        tls=tls,
        timeouts=timeouts,
        retry=retry,
        metadata=metadata,
        request_id_factory=request_id_factory,
        channel_options=channel_options,
    )


class EmbedderClient:
    """Blocking calls to one or several embedders (round robin). Thread-safe."""

    def __init__(
        self,
        addresses: str | Sequence[str] = "localhost:50052",
        *,
        tls: TlsConfig | None = None,
        timeouts: Timeouts | None = None,
        retry: RetryPolicy | None = None,
        metadata: Sequence[tuple[str, str]] = (),
        request_id_factory: RequestIdFactory | None = None,
        channel_options: Sequence[ChannelOption] = (),
        config: ClientConfig | None = None,
    ) -> None:
        self.config = config or _config(
            addresses, tls, timeouts, retry, metadata, request_id_factory, channel_options
        )
        self._invoker = SyncInvoker(self.config)

    def embed(
        self, texts: Sequence[str], *, timeout_s: float | None = None, request_id: str | None = None
    ) -> Embeddings:
        """Unit-length vectors, one per text (1 to the server's max_texts_per_request)."""
        request = rpcs.embed_request(texts)
        return rpcs.embeddings(self._invoker.call(rpcs.EMBED, request, timeout_s, request_id))

    def get_model_info(
        self, *, timeout_s: float | None = None, request_id: str | None = None
    ) -> ModelInfo:
        request = embedding_pb.GetModelInfoRequest()
        reply = self._invoker.call(rpcs.GET_MODEL_INFO, request, timeout_s, request_id)
        return rpcs.model_info(reply)

    def score(
        self,
        pairs: Sequence[tuple[str, str]],
        *,
        timeout_s: float | None = None,
        request_id: str | None = None,
    ) -> Scores:
        """The verifier's probability for each (query, candidate) pair; FailedPrecondition
        when the embedder serves no verifier."""
        request = rpcs.score_request(pairs)
        return rpcs.scores(self._invoker.call(rpcs.SCORE, request, timeout_s, request_id))

    def close(self) -> None:
        self._invoker.close()

    def __enter__(self) -> EmbedderClient:
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.close()


class AsyncEmbedderClient:
    """asyncio calls to one or several embedders (round robin); one client per event loop."""

    def __init__(
        self,
        addresses: str | Sequence[str] = "localhost:50052",
        *,
        tls: TlsConfig | None = None,
        timeouts: Timeouts | None = None,
        retry: RetryPolicy | None = None,
        metadata: Sequence[tuple[str, str]] = (),
        request_id_factory: RequestIdFactory | None = None,
        channel_options: Sequence[ChannelOption] = (),
        config: ClientConfig | None = None,
    ) -> None:
        self.config = config or _config(
            addresses, tls, timeouts, retry, metadata, request_id_factory, channel_options
        )
        self._invoker = AsyncInvoker(self.config)

    async def embed(
        self, texts: Sequence[str], *, timeout_s: float | None = None, request_id: str | None = None
    ) -> Embeddings:
        request = rpcs.embed_request(texts)
        return rpcs.embeddings(await self._invoker.call(rpcs.EMBED, request, timeout_s, request_id))

    async def get_model_info(
        self, *, timeout_s: float | None = None, request_id: str | None = None
    ) -> ModelInfo:
        request = embedding_pb.GetModelInfoRequest()
        reply = await self._invoker.call(rpcs.GET_MODEL_INFO, request, timeout_s, request_id)
        return rpcs.model_info(reply)

    async def score(
        self,
        pairs: Sequence[tuple[str, str]],
        *,
        timeout_s: float | None = None,
        request_id: str | None = None,
    ) -> Scores:
        request = rpcs.score_request(pairs)
        return rpcs.scores(await self._invoker.call(rpcs.SCORE, request, timeout_s, request_id))

    async def close(self) -> None:
        await self._invoker.close()

    async def __aenter__(self) -> AsyncEmbedderClient:
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        await self.close()
