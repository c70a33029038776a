"""The blocking client of the cache service (semcache.cache.v1.CacheService)."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from types import TracebackType
from typing import Any

import grpc

from semcache_client import _cache_rpcs as rpcs
from semcache_client._invokers import SyncInvoker
from semcache_client._stubs import cache_pb
from semcache_client.config import (
    ChannelOption,
    ClientConfig,
    RequestIdFactory,
    RetryPolicy,
    Timeouts,
    TlsConfig,
)
from semcache_client.models import (
    CachePolicy,
    CacheStats,
    CacheSummary,
    ErrorAccounting,
    FeedbackResult,
    HitPolicy,
    QueryResult,
    RecentDecisions,
    ReindexProgress,
    SearchResult,
    SearchStrategy,
    ServerInfo,
)
from semcache_client.streams import ChatStream


class CacheClient:
    """Calls a cache server, or several (balanced round robin), from blocking code.

    Every method takes `timeout_s` (seconds, the whole call with its retries; default from
    `timeouts`) and `request_id` (sent as `x-request-id`; default: `request_id_factory()`, else
    a new one) and raises a `semcache_client.errors.SemcacheError` subclass on failure.
    `cache_id` names the cache (namespace) a call works in; the client's own `cache_id` when
    not given, and the server's "default" cache when neither is. `api_key`: the key the
    operator gave this application, when the server has keys (sent as `authorization`).
    Thread-safe; close it (or use `with`) to release its connections.
    """

    def __init__(
        self,
        addresses: str | Sequence[str] = "localhost:50051",
        *,
        cache_id: str = "",
        tls: TlsConfig | None = None,
        timeouts: Timeouts | None = None,
        retry: RetryPolicy | None = None,
        metadata: Sequence[tuple[str, str]] = (),
        request_id_factory: RequestIdFactory | None = None,
        channel_options: Sequence[ChannelOption] = (),
        api_key: str | None = None,
        config: ClientConfig | None = None,
    ) -> None:
        self.config = config or ClientConfig.build(
            addresses,
            tls=tls,
            timeouts=timeouts,
            retry=retry,
            metadata=metadata,
            request_id_factory=request_id_factory,
            channel_options=channel_options,
            api_key=api_key,
        )
        self.cache_id = cache_id
        self._invoker = SyncInvoker(self.config)

    def _cache(self, cache_id: str | None) -> str:
        return self.cache_id if cache_id is None else cache_id

    def query(
        self,
        query: str,
        *,
        cache_id: str | None = None,
        use_cache: bool = True,
        similarity_threshold: float | None = None,
        attributes: Mapping[str, str] | None = None,
        ttl_seconds: float | None = None,
        policy: HitPolicy | None = None,
        max_error_rate: float | None = None,
        error_accounting: ErrorAccounting | str | None = None,
        timeout_s: float | None = None,
        request_id: str | None = None,
    ) -> QueryResult:
        """Look up; on a miss the server asks its upstream LLM, stores and returns the answer.
        `policy`, `max_error_rate` and `error_accounting` (what the rate bounds): for this
        request only (default: the cache's, else the server's). Never retried (a repeat could
        ask the LLM again)."""
        request = rpcs.query_request(
            query,
            cache_id=self._cache(cache_id),
            use_cache=use_cache,
            similarity_threshold=similarity_threshold,
            attributes=attributes,
            ttl_seconds=ttl_seconds,
            policy=policy,
            max_error_rate=max_error_rate,
            error_accounting=error_accounting,
        )
        reply = self._invoker.call(rpcs.QUERY, request, timeout_s, request_id)
        return rpcs.query_result(reply)

    def search(
        self,
        prompt: str,
        *,
        cache_id: str | None = None,
        similarity_threshold: float | None = None,
        max_results: int = 1,
        attributes: Mapping[str, str] | None = None,
        strategies: Sequence[SearchStrategy] = (),
        policy: HitPolicy | None = None,
        max_error_rate: float | None = None,
        error_accounting: ErrorAccounting | str | None = None,
        timeout_s: float | None = None,
        request_id: str | None = None,
    ) -> SearchResult:
        """Look-up only: up to `max_results` entries at or above the threshold, best first.
        `strategies` are tried in order (default: semantic only)."""
        request = rpcs.search_request(
            prompt,
            cache_id=self._cache(cache_id),
            similarity_threshold=similarity_threshold,
            max_results=max_results,
            attributes=attributes,
            strategies=strategies,
            policy=policy,
            max_error_rate=max_error_rate,
            error_accounting=error_accounting,
        )
        reply = self._invoker.call(rpcs.SEARCH, request, timeout_s, request_id)
        return rpcs.search_result(reply)

    def set(
        self,
        prompt: str,
        response: str,
        *,
        cache_id: str | None = None,
        attributes: Mapping[str, str] | None = None,
        ttl_seconds: float | None = None,
        timeout_s: float | None = None,
        request_id: str | None = None,
    ) -> str:
        """Stores an answer; returns its entry id (the same prompt and attributes in the same
        cache replace the earlier entry)."""
        request = rpcs.set_request(
            prompt,
            response,
            cache_id=self._cache(cache_id),
            attributes=attributes,
            ttl_seconds=ttl_seconds,
        )
        reply = self._invoker.call(rpcs.SET, request, timeout_s, request_id)
        return reply.entry_id

    def delete(
        self,
        entry_id: str,
        *,
        cache_id: str | None = None,
        timeout_s: float | None = None,
        request_id: str | None = None,
    ) -> None:
        """Deletes one entry; NotFound when there is none with that id."""
        request = cache_pb.DeleteRequest(cache_id=self._cache(cache_id), entry_id=entry_id)
        self._invoker.call(rpcs.DELETE, request, timeout_s, request_id)

    def delete_entries(
        self,
        attributes: Mapping[str, str] | None = None,
        *,
        cache_id: str | None = None,
        timeout_s: float | None = None,
        request_id: str | None = None,
    ) -> int:
        """Deletes the entries carrying all `attributes` (every entry when none); returns how
        many went."""
        request = cache_pb.DeleteEntriesRequest(
            cache_id=self._cache(cache_id), attributes=dict(attributes or {})
        )
        reply = self._invoker.call(rpcs.DELETE_ENTRIES, request, timeout_s, request_id)
        return reply.deleted_count

    def flush(
        self,
        *,
        cache_id: str | None = None,
        timeout_s: float | None = None,
        request_id: str | None = None,
    ) -> int:
        """Deletes every entry of the cache and resets its counters; returns how many went."""
        request = cache_pb.FlushRequest(cache_id=self._cache(cache_id))
        reply = self._invoker.call(rpcs.FLUSH, request, timeout_s, request_id)
        return reply.deleted_count

    def get_stats(
        self,
        *,
        cache_id: str | None = None,
        timeout_s: float | None = None,
        request_id: str | None = None,
    ) -> CacheStats:
        request = cache_pb.GetStatsRequest(cache_id=self._cache(cache_id))
        reply = self._invoker.call(rpcs.GET_STATS, request, timeout_s, request_id)
        return rpcs.cache_stats(reply)

    def get_server_info(
        self, *, timeout_s: float | None = None, request_id: str | None = None
    ) -> ServerInfo:
        request = cache_pb.GetServerInfoRequest()
        reply = self._invoker.call(rpcs.GET_SERVER_INFO, request, timeout_s, request_id)
        return rpcs.server_info(reply)

    def submit_feedback(
        self,
        entry_id: str,
        prompt: str,
        correct: bool,
        *,
        cache_id: str | None = None,
        reporter: str | None = None,
        timeout_s: float | None = None,
        request_id: str | None = None,
    ) -> FeedbackResult:
        """Was entry `entry_id` right for `prompt`? A "wrong" entry is not served for that
        prompt again. A report counts once per answer, prompt and `reporter` (default: this
        client's address), and moves the verified policy only when the cache served that
        answer for that prompt (`learned`). Never retried."""
        request = cache_pb.SubmitFeedbackRequest(
            cache_id=self._cache(cache_id),
            entry_id=entry_id,
            prompt=prompt,
            correct=correct,
            reporter=reporter or "",
        )
        reply = self._invoker.call(rpcs.SUBMIT_FEEDBACK, request, timeout_s, request_id)
        return rpcs.feedback_result(reply)

    def set_cache_policy(
        self,
        policy: HitPolicy | None,
        *,
        max_error_rate: float | None = None,
        error_accounting: ErrorAccounting | str | None = None,
        cache_id: str | None = None,
        timeout_s: float | None = None,
        request_id: str | None = None,
    ) -> CachePolicy:
        """Sets the cache's hit policy (None: back to the server's default). Verified only:
        `max_error_rate` and `error_accounting`, what it bounds (`ErrorAccounting.HITS`, wrong
        hits of the semantic hits served, or `REQUESTS`, of all requests as vCache counts);
        None: the server's default."""
        request = rpcs.policy_request(
            policy,
            cache_id=self._cache(cache_id),
            max_error_rate=max_error_rate,
            error_accounting=error_accounting,
        )
        reply = self._invoker.call(rpcs.SET_CACHE_POLICY, request, timeout_s, request_id)
        return rpcs.cache_policy(reply)

    def get_cache_policy(
        self,
        *,
        cache_id: str | None = None,
        timeout_s: float | None = None,
        request_id: str | None = None,
    ) -> CachePolicy:
        request = cache_pb.GetCachePolicyRequest(cache_id=self._cache(cache_id))
        reply = self._invoker.call(rpcs.GET_CACHE_POLICY, request, timeout_s, request_id)
        return rpcs.cache_policy(reply)

    def list_decisions(
        self,
        *,
        limit: int = 50,
        cache_id: str | None = None,
        timeout_s: float | None = None,
        request_id: str | None = None,
    ) -> RecentDecisions:
        """The last look-up decisions on the cache, newest first (at most `limit`, up to
        1000), of the cache server this call reaches (each keeps its own, in memory): what was
        asked, the entry served or the nearest considered, its similarity, and the outcome.
        Prompts truncated, answers never included. Admin of the cache."""
        request = cache_pb.ListDecisionsRequest(cache_id=self._cache(cache_id), limit=limit)
        reply = self._invoker.call(rpcs.LIST_DECISIONS, request, timeout_s, request_id)
        return rpcs.recent_decisions(reply)

    def list_caches(
        self, *, timeout_s: float | None = None, request_id: str | None = None
    ) -> list[CacheSummary]:
        """The caches that hold entries or have a policy, with their size and policy: with
        keys, only those the key administers."""
        request = cache_pb.ListCachesRequest()
        reply = self._invoker.call(rpcs.LIST_CACHES, request, timeout_s, request_id)
        return rpcs.cache_summaries(reply)

    def reindex(
        self,
        *,
        cache_id: str | None = None,
        every_cache: bool = False,
        batch_size: int = 64,
        timeout_s: float | None = None,
        request_id: str | None = None,
    ) -> list[ReindexProgress]:
        """Re-embeds the cache's stored prompts (or `every_cache`'s) with the model the
        embedder serves now: needed after a model change of the same dimension, until which
        the cache refuses similarity look-ups (FailedPrecondition). Waits until it is done
        (deadline: `timeouts.bulk_s`, or `timeout_s`) and returns each cache's last progress.
        A call that stops early is continued by the next. Never retried."""
        request = rpcs.reindex_request("" if every_cache else self._cache(cache_id), batch_size)
        call, plan = self._invoker.stream(rpcs.REINDEX, request, timeout_s, request_id)
        try:
            steps = [rpcs.reindex_progress(message) for message in call]
        except grpc.RpcError as error:
            raise plan.error(error) from error
        plan.succeeded()
        return rpcs.reindexed(steps)

    def chat(
        self,
        prompt: str,
        body: Mapping[str, Any],
        *,
        cache_id: str | None = None,
        attributes: Mapping[str, str] | None = None,
        stream: bool | None = None,
        cacheable: bool = True,
        use_cache: bool = True,
        similarity_threshold: float | None = None,
        ttl_seconds: float | None = None,
        timeout_s: float | None = None,
        request_id: str | None = None,
    ) -> ChatStream:
        """An OpenAI chat completion through the cache: `body` (a chat-completions request,
        sent to the upstream LLM as JSON, with `"stream"` as this call asks) looked up by its
        last user message within its scope, which the cache server derives from the body
        (model, earlier messages, parameters...) and `attributes` (more scope of your own;
        an answer is served only within exactly the attributes it was stored with).
        `prompt` is "" (the server reads the last message) or that message's text. The
        events: one `ChatHit`; or `ChatChunk`s (`stream`, default: the body's `"stream"`) or
        one `ChatCompletion`, then `ChatStored`; or a `ChatUpstreamError`; the stream's
        `route` says how the request was handled. A request that cannot be cached (tools,
        n > 1, ...) or `cacheable=False` is passed to the upstream: no look-up, nothing
        stored; `use_cache=False` skips the look-up only. The call starts now; its deadline
        (default `timeouts.query_s`) covers the whole stream. Never retried (a repeat could
        ask the LLM again)."""
        request = rpcs.chat_request(
            prompt,
            body,
            cache_id=self._cache(cache_id),
            attributes=attributes,
            stream=stream,
            cacheable=cacheable,
            use_cache=use_cache,
            similarity_threshold=similarity_threshold,
            ttl_seconds=ttl_seconds,
        )
        return ChatStream(*self._invoker.stream(rpcs.CHAT, request, timeout_s, request_id))

    def close(self) -> None:
        self._invoker.close()

    def __enter__(self) -> CacheClient:
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.close()
