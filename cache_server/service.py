"""The gRPC CacheService: protobuf in and out, and the one table from errors to status codes."""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections.abc import AsyncIterator, Awaitable, Callable
from typing import TypeVar

import grpc

from cache_server import access, metrics, service_admin
from cache_server.cache import SemanticCache
from cache_server.chat import ChatCompletions
from cache_server.embedder_client import EmbedderClient, EmbedderUnavailableError
from cache_server.entry_pb import STRATEGY_FROM_PB, STRATEGY_TO_PB, cost_pb, entry_pb, savings_pb
from cache_server.lookup import Strategy
from cache_server.service_chat import chat_events
from cache_server.service_verified import accounting_name, policy_name, policy_pb, stats_fields
from cache_server.statuses import abort, abort_failed, elapsed_ms
from protos.semcache.cache.v1 import cache_pb2 as pb
from protos.semcache.cache.v1 import cache_pb2_grpc as pb_grpc
from service_runtime.error_reasons import ErrorReason

log = logging.getLogger(__name__)
T = TypeVar("T")
Context = grpc.aio.ServicerContext[object, object]


async def _answer(method: str, context: Context, call: Callable[[], Awaitable[T]]) -> T:
    started = time.perf_counter()
    try:
        result = await call()
    except asyncio.CancelledError:
        task = asyncio.current_task()
        if task is not None and task.cancelling():
            raise  # this call itself was cancelled (deadline, disconnect): nobody to answer
        # A cancellation that reached this call from work it shared with another: it still
        # gets an answer, and a retryable one.
        metrics.RPCS.labels(method, grpc.StatusCode.UNAVAILABLE.name).inc()
        metrics.ERRORS.labels(method, ErrorReason.INTERRUPTED.value).inc()
        log.warning("%s interrupted by a cancellation it did not ask for", method)
        await abort(
            context,
            grpc.StatusCode.UNAVAILABLE,
            ErrorReason.INTERRUPTED,
            "the request was interrupted; retry",
        )
        raise  # unreachable: abort raises
    except Exception as exc:
        await abort_failed(method, exc, context, started)
        raise  # unreachable: abort raises
    metrics.RPCS.labels(method, "OK").inc()
    log.info("%s OK in %.1f ms", method, elapsed_ms(started))
    return result


class CacheServicer(pb_grpc.CacheServiceServicer):
    def __init__(
        self,
        cache: SemanticCache,
        embedder: EmbedderClient,
        store_backend: str,
        log_prompts: bool = False,
        chat: ChatCompletions | None = None,
    ) -> None:
        self.chat = chat
        self.cache = cache
        self.embedder = embedder
        self.store_backend = store_backend
        self.log_prompts = log_prompts

    async def Query(self, request: pb.QueryRequest, context: Context) -> pb.QueryResponse:
        result = await _answer(
            "Query",
            context,
            lambda: self.cache.query(
                request.cache_id,
                request.query,
                use_cache=request.use_cache if request.HasField("use_cache") else True,
                threshold=request.similarity_threshold
                if request.HasField("similarity_threshold")
                else None,
                attributes=dict(request.attributes),
                ttl_s=request.ttl_seconds if request.HasField("ttl_seconds") else None,
                policy=policy_name(request.policy),
                max_error_rate=request.max_error_rate
                if request.HasField("max_error_rate")
                else None,
                error_accounting=accounting_name(request.error_accounting),
            ),
        )
        log.info(
            "query cache=%s hit=%s similarity=%s%s",
            request.cache_id or "default",
            result.hit is not None,
            f"{result.hit.similarity:.3f}" if result.hit else "-",
            f" prompt={request.query!r}" if self.log_prompts else "",
        )
        reply = pb.QueryResponse(
            query=result.query,
            response=result.response,
            cache_hit=result.hit is not None,
            embedding_dimension=result.embedding_dimension,
            processing_time=result.processing_time_s,
            entry_id=result.entry_id,
            explored=result.explored,
            policy=result.policy,
        )
        if result.hit is not None:
            hit = result.hit
            reply.cached_data.CopyFrom(
                pb.CachedData(
                    cached_response=hit.entry.response,
                    similarity_score=hit.similarity,
                    cached_query=hit.entry.prompt,
                    cache_timestamp=hit.entry.created_at,
                    entry_id=hit.entry.id,
                    strategy=STRATEGY_TO_PB[hit.strategy],
                    cost=cost_pb(hit.entry.cost),
                )
            )
        return reply

    async def Search(self, request: pb.SearchRequest, context: Context) -> pb.SearchResponse:
        strategies = []
        for value in request.strategies:
            if value not in STRATEGY_FROM_PB:
                await abort(
                    context,
                    grpc.StatusCode.INVALID_ARGUMENT,
                    ErrorReason.INVALID_INPUT,
                    f"unknown search strategy {value}",
                )
            strategies.append(STRATEGY_FROM_PB[value])
        result = await _answer(
            "Search",
            context,
            lambda: self.cache.search(
                request.cache_id,
                request.prompt,
                threshold=request.similarity_threshold
                if request.HasField("similarity_threshold")
                else None,
                max_results=request.max_results,
                attributes=dict(request.attributes),
                strategies=strategies or (Strategy.SEMANTIC,),
                policy=policy_name(request.policy),
                max_error_rate=request.max_error_rate
                if request.HasField("max_error_rate")
                else None,
                error_accounting=accounting_name(request.error_accounting),
            ),
        )
        return pb.SearchResponse(
            hits=[
                pb.SearchHit(
                    entry=entry_pb(h),
                    similarity=h.similarity,
                    strategy=STRATEGY_TO_PB[h.strategy],
                )
                for h in result.hits
            ],
            embedding_dimension=result.embedding_dimension,
            processing_time=result.processing_time_s,
        )

    async def Set(self, request: pb.SetRequest, context: Context) -> pb.SetResponse:
        entry_id = await _answer(
            "Set",
            context,
            lambda: self.cache.set(
                request.cache_id,
                request.prompt,
                request.response,
                attributes=dict(request.attributes),
                ttl_s=request.ttl_seconds if request.HasField("ttl_seconds") else None,
            ),
        )
        return pb.SetResponse(entry_id=entry_id)

    async def Delete(self, request: pb.DeleteRequest, context: Context) -> pb.DeleteResponse:
        await _answer(
            "Delete", context, lambda: self.cache.delete(request.cache_id, request.entry_id)
        )
        return pb.DeleteResponse()

    async def SubmitFeedback(
        self, request: pb.SubmitFeedbackRequest, context: Context
    ) -> pb.SubmitFeedbackResponse:
        outcome = await _answer(
            "SubmitFeedback",
            context,
            lambda: self.cache.feedback(
                request.cache_id,
                request.entry_id,
                request.prompt,
                correct=request.correct,
                reporter=access.reporter(request.reporter, access.peer_host(context.peer() or "")),
            ),
        )
        report = outcome.report
        return pb.SubmitFeedbackResponse(
            feedback_id=report.id,
            entry_id=report.entry_id,
            entry_prompt=report.entry_prompt,
            correct=report.correct,
            served_for_prompt=report.correct,
            duplicate=outcome.duplicate,
            learned=outcome.learned,
        )

    async def DeleteEntries(
        self, request: pb.DeleteEntriesRequest, context: Context
    ) -> pb.DeleteEntriesResponse:
        deleted = await _answer(
            "DeleteEntries",
            context,
            lambda: self.cache.delete_matching(request.cache_id, dict(request.attributes)),
        )
        return pb.DeleteEntriesResponse(deleted_count=deleted)

    async def Flush(self, request: pb.FlushRequest, context: Context) -> pb.FlushResponse:
        deleted = await _answer("Flush", context, lambda: self.cache.flush(request.cache_id))
        return pb.FlushResponse(deleted_count=deleted)

    async def GetStats(self, request: pb.GetStatsRequest, context: Context) -> pb.GetStatsResponse:
        snapshot = await _answer("GetStats", context, lambda: self.cache.stats_of(request.cache_id))
        counters = snapshot.counters
        p50, p95, p99 = counters.lookup_percentiles_ms()
        return pb.GetStatsResponse(
            cache_id=snapshot.cache_id,
            cache_size=snapshot.cache_size,
            max_cache_size=snapshot.max_cache_size,
            current_threshold=snapshot.threshold,
            threshold_source=snapshot.threshold_source,
            hits=counters.hits,
            misses=counters.misses,
            hit_rate=counters.hit_rate,
            evictions=counters.evictions,
            expirations=counters.expirations,
            reported_wrong=counters.reported_wrong,
            reported_right=counters.reported_right,
            lookup_p50_ms=p50,
            lookup_p95_ms=p95,
            lookup_p99_ms=p99,
            lookups_measured=len(counters.lookup_seconds),
            savings=savings_pb(snapshot.savings),
            **stats_fields(snapshot),
        )

    async def SetCachePolicy(
        self, request: pb.SetCachePolicyRequest, context: Context
    ) -> pb.CachePolicy:
        policy = await _answer(
            "SetCachePolicy",
            context,
            lambda: self.cache.set_cache_policy(
                request.cache_id,
                policy_name(request.policy),
                request.max_error_rate if request.HasField("max_error_rate") else None,
                accounting_name(request.error_accounting),
            ),
        )
        return policy_pb(request.cache_id, policy)

    async def GetCachePolicy(
        self, request: pb.GetCachePolicyRequest, context: Context
    ) -> pb.CachePolicy:
        policy = await _answer(
            "GetCachePolicy", context, lambda: self.cache.cache_policy(request.cache_id)
        )
        return policy_pb(request.cache_id, policy)

    async def ListDecisions(
        self, request: pb.ListDecisionsRequest, context: Context
    ) -> pb.ListDecisionsResponse:
        return await _answer(
            "ListDecisions", context, lambda: service_admin.list_decisions(self.cache, request)
        )

    async def ListCaches(
        self, request: pb.ListCachesRequest, context: Context
    ) -> pb.ListCachesResponse:
        return await _answer("ListCaches", context, lambda: service_admin.list_caches(self.cache))

    async def ImportEntries(
        self, request: pb.ImportEntriesRequest, context: Context
    ) -> pb.ImportEntriesResponse:
        return await _answer(
            "ImportEntries", context, lambda: service_admin.import_entries(self.cache, request)
        )

    async def ExportEntries(
        self, request: pb.ExportEntriesRequest, context: Context
    ) -> AsyncIterator[pb.ExportEntriesChunk]:
        started = time.perf_counter()
        try:
            async for chunk in service_admin.export_entries(self.cache, request):
                yield chunk
        except Exception as exc:
            await abort_failed("ExportEntries", exc, context, started)
        metrics.RPCS.labels("ExportEntries", "OK").inc()
        log.info("ExportEntries OK in %.1f s", time.perf_counter() - started)

    async def GetServerInfo(
        self, request: pb.GetServerInfoRequest, context: Context
    ) -> pb.GetServerInfoResponse:
        upstream = self.cache.upstream
        serving, store_serving = await asyncio.gather(
            self.embedder.serving(), self.cache.store.ping()
        )
        model = self.embedder.model
        if model is None and serving:
            # Serving but not yet asked what it serves: ask now, so that "serving" always
            # means the answers carry the model's real dimension.
            with contextlib.suppress(EmbedderUnavailableError):
                model = await self.embedder.ensure_model(timeout_s=1.0)
        serving = serving and model is not None
        threshold, threshold_source = self.cache.threshold_in_force()
        band = self.cache.band_in_force()
        verifier = None
        if band is not None:
            verifier = pb.VerifierBand(
                model_id=band.model_id,
                low=band.low,
                high=band.high,
                threshold=band.threshold,
                source=band.source,
                candidates=band.candidates,
            )
        return pb.GetServerInfoResponse(
            verifier=verifier,
            embedder_model_id=model.model_id if model else "",
            embedding_dimension=model.dimension if model else 0,
            embedder_fallback_model=model.fallback if model else False,
            upstream=upstream.kind,
            demo_responder=upstream.kind == "demo",
            upstream_model=upstream.model,
            store_backend=self.store_backend,
            default_threshold=threshold,
            threshold_source=threshold_source,
            max_cache_size=self.cache.policy.max_cache_size,
            embedder_serving=serving,
            store_serving=store_serving,
            # Internal addresses: for an operator (a key holding every cache, or no keys).
            embedder_addresses=self.embedder.addresses if access.sees_everything() else [],
        )

    async def Chat(self, request: pb.ChatRequest, context: Context) -> AsyncIterator[pb.ChatEvent]:
        if self.chat is None:
            await abort(
                context, grpc.StatusCode.UNIMPLEMENTED, None, "chat completions are off here"
            )
            return
        async for event in chat_events(self.chat, request, context):
            yield event

    async def Reindex(
        self, request: pb.ReindexRequest, context: Context
    ) -> AsyncIterator[pb.ReindexProgress]:
        reindexer = self.cache.reindexer
        started = time.perf_counter()
        try:
            cache_ids = [request.cache_id] if request.cache_id else await self.cache.cache_ids()
            for cache_id in cache_ids:
                async for step in reindexer.run(cache_id, request.batch_size or 64):
                    yield pb.ReindexProgress(
                        cache_id=step.cache_id,
                        done=step.done,
                        total=step.total,
                        model=step.model,
                        finished=step.finished,
                    )
        except Exception as exc:
            await abort_failed("Reindex", exc, context, started)
        metrics.RPCS.labels("Reindex", "OK").inc()
        log.info("Reindex OK in %.1f s", time.perf_counter() - started)
