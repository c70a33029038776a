"""The cache server process: open the store, reach the embedder, serve CacheService.

Health is SERVING once the store is open; the embedder may come and go (exact repeats are
still answered while it is away). SIGTERM: finish in-flight RPCs, stop the purger, close the
store and the channels.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import random
from collections.abc import Sequence

from cache_server import metrics
from cache_server.access import AccessGate, DefaultLimits
from cache_server.cache import CachePolicy, SemanticCache
from cache_server.chat import ChatCompletions
from cache_server.cross_encoder_band import Verifier, VerifierSettings
from cache_server.embedder_client import EmbedderClient, EmbedderUnavailableError
from cache_server.learned_thresholds.engine import VerifiedEngine
from cache_server.learned_thresholds.judge import EmbeddingJudge, ExactJudge, Judge, LlmJudge
from cache_server.learned_thresholds.policy import VerifiedSettings
from cache_server.limits import Limiter, MemoryLimiter, RedisLimiter
from cache_server.service import CacheServicer
from cache_server.settings import CacheSettings
from cache_server.spending import Spending
from cache_server.store.base import CacheStore
from cache_server.store.embedded import EmbeddedStore
from cache_server.store.redis_store import RedisStore, redacted_url
from cache_server.upstream import DemoResponder, OpenAICompatibleUpstream, Upstream
from protos.semcache.cache.v1 import cache_pb2 as pb
from protos.semcache.cache.v1 import cache_pb2_grpc as pb_grpc
from service_runtime.grpc_service import GrpcService, serve_until_signal
from service_runtime.metrics import serve_metrics
from service_runtime.settings import start_service
from service_runtime.tenants import KeyFileError, KeyRing
from service_runtime.tls import ClientTls

log = logging.getLogger("cache_server")

SERVICE_NAME = pb.DESCRIPTOR.services_by_name["CacheService"].full_name


def make_upstream(settings: CacheSettings, spending: Spending | None = None) -> Upstream:
    if settings.upstream_base_url is None:
        log.warning(
            "no upstream LLM configured (CACHE_UPSTREAM_BASE_URL): misses are answered by the "
            "DEMO RESPONDER"
        )
        return DemoResponder()
    key = settings.upstream_api_key.get_secret_value() if settings.upstream_api_key else None
    log.info("upstream LLM: %s model %s", settings.upstream_base_url, settings.upstream_model)
    return OpenAICompatibleUpstream(
        settings.upstream_base_url,
        settings.upstream_model,
        api_key=key,
        timeout_s=settings.upstream_timeout_s,
        read_timeout_s=settings.upstream_read_timeout_s,
        spending=spending,
    )


def make_store(settings: CacheSettings) -> CacheStore:
    if settings.store_backend == "redis":
        log.info(
            "store: Redis at %s (prefix %r, %s)",
            redacted_url(settings.redis_url),
            settings.redis_prefix,
            settings.redis_vector_algorithm,
        )
        return RedisStore(
            settings.redis_url,
            prefix=settings.redis_prefix,
            algorithm=settings.redis_vector_algorithm,
            hnsw_m=settings.hnsw_m,
            hnsw_ef_runtime=settings.redis_hnsw_ef_runtime,
            access=settings.redis_access,
        )
    return EmbeddedStore(
        settings.data_dir,
        synchronous=settings.sqlite_synchronous,
        ann_threshold=settings.ann_threshold,
        hnsw_m=settings.hnsw_m,
        hnsw_ef_search=settings.hnsw_ef_search,
    )


def verified_settings(settings: CacheSettings) -> VerifiedSettings:
    return VerifiedSettings(
        default_policy=settings.hit_policy,
        max_error_rate=settings.max_error_rate,
        accounting=settings.verified_accounting,
        confidence=settings.verified_confidence,
        min_similarity=settings.verified_min_similarity,
        audit_rate=settings.verified_audit_rate,
        unproven_explore_rate=settings.verified_unproven_explore_rate,
        judge=settings.verified_judge,
        judge_threshold=settings.verified_judge_threshold,
    )


def make_judge(settings: CacheSettings, embedder: EmbedderClient, upstream: Upstream) -> Judge:
    kind = settings.verified_judge
    if kind == "auto":
        kind = "exact" if upstream.kind == "demo" else "embedding"
    if kind == "exact":
        return ExactJudge()
    if kind == "embedding":
        return EmbeddingJudge(embedder, settings.verified_judge_threshold)
    return LlmJudge(upstream)


class CacheServer:
    def __init__(self, settings: CacheSettings) -> None:
        self.settings = settings
        self.store = make_store(settings)
        self.embedder = EmbedderClient(
            settings.embedder_address_list,
            timeout_s=settings.embedder_timeout_s,
            retries=settings.embedder_retries,
            tls=ClientTls(
                settings.embedder_tls_ca_file,
                settings.embedder_tls_cert_file,
                settings.embedder_tls_key_file,
                settings.embedder_tls_server_name,
            ),
        )
        self.keys = KeyRing.configured(
            api_key=settings.api_key.get_secret_value() if settings.api_key else None,
            keys_file=settings.keys_file,
            reload_s=settings.keys_reload_s,
        )
        # Limits and spending: in the shared Redis when the store is Redis (every replica
        # counts the same), else in this process (the only one holding the caches).
        limiter: Limiter = (
            RedisLimiter(self.store.client, settings.redis_prefix)
            if isinstance(self.store, RedisStore)
            else MemoryLimiter()
        )
        defaults = DefaultLimits(
            rate_per_s=settings.rate_limit_per_s,
            burst=settings.rate_limit_burst,
            concurrency=settings.concurrency_limit,
            upstream_requests_per_day=settings.upstream_requests_per_day,
            upstream_tokens_per_day=settings.upstream_tokens_per_day,
            open_passthrough=settings.chat_passthrough,
        )
        self.gate = AccessGate(self.keys, limiter, defaults)
        self.spending = Spending(limiter, defaults)
        self.upstream = make_upstream(settings, self.spending)
        policy = CachePolicy(
            threshold=settings.similarity_threshold,
            max_cache_size=settings.max_cache_size,
            max_caches=settings.max_caches,
            default_ttl_s=settings.default_ttl_s,
            max_prompt_chars=settings.max_prompt_chars,
            max_response_chars=settings.max_response_chars,
            decisions_per_cache=settings.decisions_per_cache,
        )
        verifier = Verifier(
            VerifierSettings(
                mode=settings.verifier,
                band_low=settings.verifier_band_low,
                band_high=settings.verifier_band_high,
                threshold=settings.verifier_threshold,
                candidates=settings.verifier_candidates,
            ),
            self.embedder,
        )
        verified = VerifiedEngine(
            verified_settings(settings),
            self.store,
            make_judge(settings, self.embedder, self.upstream),
            rng=random.Random(settings.verified_seed),
        )
        self.cache = SemanticCache(
            self.store,
            self.embedder,
            self.upstream,
            policy,
            verifier=verifier,
            verified=verified,
            prices=settings.price_table,
        )
        host = settings.listen_host(open_to_all=not self.keys.keyed)
        self.service = GrpcService(
            host=host,
            port=settings.port,
            service_names=[SERVICE_NAME],
            port_file=settings.port_file,
            logger=log,
            tls=settings.server_tls,
            max_connection_age_s=settings.max_connection_age_s,
            connection_age_grace_s=settings.grace_period_s,
            gate=self.gate,
        )
        if self.keys.keyed:
            log.info("API keys: %d (%s)", len(self.keys.tenants), settings.keys_file or "one key")
        else:
            log.warning(
                "no API key configured: every caller may use every cache; listening on %s%s",
                host,
                " only (set CACHE_HOST=0.0.0.0 to listen on all interfaces)"
                if settings.host is None
                else "",
            )
        pb_grpc.add_CacheServiceServicer_to_server(
            CacheServicer(
                self.cache,
                self.embedder,
                self.store.backend,
                settings.log_prompts,
                chat=ChatCompletions(
                    self.cache, self.upstream, settings.allowed_models, self.spending
                )
                if isinstance(self.upstream, DemoResponder | OpenAICompatibleUpstream)
                else None,
            ),
            self.service.server,
        )
        self._background: list[asyncio.Task[None]] = []

    async def prepare(self) -> None:
        serve_metrics(metrics.REGISTRY, self.service.host, self.settings.metrics_port)
        await self.store.open()
        self._background.append(
            asyncio.create_task(self.cache.run_purger(self.settings.purge_interval_s))
        )
        self._background.append(asyncio.create_task(self._learn_model()))

    async def _learn_model(self) -> None:
        """Asks the embedder what it serves, retrying until it answers (it may start later)."""
        backoff_s = 0.1
        while True:
            try:
                model = await self.embedder.ensure_model()
            except EmbedderUnavailableError as exc:
                log.warning("embedder not reachable yet (%s); retrying", exc)
                await asyncio.sleep(backoff_s)
                backoff_s = min(2.0, backoff_s * 2)
                continue
            log.info(
                "embedder model %s (%d dims)%s",
                model.model_id,
                model.dimension,
                " — FALLBACK MODEL" if model.fallback else "",
            )
            return

    async def cleanup(self) -> None:
        for task in self._background:
            task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await task
        await self.cache.drain()
        await self.store.close()
        await self.embedder.close()
        await self.upstream.close()


async def serve(settings: CacheSettings) -> int:
    server = CacheServer(settings)
    return await serve_until_signal(
        server.service,
        prepare=server.prepare,
        cleanup=server.cleanup,
        grace_s=settings.grace_period_s,
    )


def main(argv: Sequence[str] | None = None) -> int:
    settings = start_service(CacheSettings, argv, "cache_server")
    if settings is None:
        return 2
    try:
        return asyncio.run(serve(settings))
    except KeyFileError as exc:
        log.error("cannot start: %s", exc)
        return 2
