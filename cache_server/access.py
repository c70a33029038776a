"""Who may call what, on which cache, how often: the one place the cache server decides it.

Every CacheService call passes `AccessGate.admit` before its handler runs (through the gRPC
shell's interceptor, service_runtime.grpc_service): the caller's key (gRPC metadata
`authorization: Bearer <key>`, which the gateway forwards from the REST request) names a tenant
(service_runtime.tenants); the method names the action it needs and the request the cache it
touches; then the client's rate and concurrency limits. The tenant rides along with the call
(`current_caller`) for what is decided later: whether a chat request may pass through, what an
upstream call costs the key (cache_server.spending), who reported feedback, the audit log.
"""

from __future__ import annotations

import logging
import uuid
from collections.abc import Mapping, Sequence
from contextvars import ContextVar, Token
from dataclasses import dataclass

import grpc
from prometheus_client import Counter

from cache_server.limits import Limiter
from cache_server.metrics import REGISTRY
from cache_server.store.base import StoreUnavailableError
from service_runtime.cache_ids import RESERVED_SCOPES
from service_runtime.error_reasons import ErrorReason
from service_runtime.grpc_service import CallRefused
from service_runtime.tenants import (
    CLIENT_METADATA,
    KEY_METADATA,
    OPEN,
    Action,
    KeyRing,
    Tenant,
)

log = logging.getLogger(__name__)
audit_log = logging.getLogger("semcache.audit")

SERVICE = "/semcache.cache.v1.CacheService/"
# The action each method needs on the cache its request names. None: any caller, keyed or not
# (server information, which the gateway's /health asks for without a key).
METHOD_ACTIONS: dict[str, Action | None] = {
    "Query": Action.READ,
    "Search": Action.READ,
    "Chat": Action.READ,
    "Set": Action.WRITE,
    "Delete": Action.WRITE,
    "DeleteEntries": Action.WRITE,
    "Flush": Action.WRITE,
    "SubmitFeedback": Action.WRITE,
    "GetStats": Action.ADMIN,
    "GetCachePolicy": Action.ADMIN,
    "SetCachePolicy": Action.ADMIN,
    "Reindex": Action.ADMIN,
    "ListDecisions": Action.ADMIN,
    "ListCaches": Action.ADMIN,
    "ExportEntries": Action.ADMIN,
    "ImportEntries": Action.ADMIN,
    "GetServerInfo": None,
}
# Calls that change what a cache holds or how it serves, or copy it out whole: written to the
# audit log.
AUDITED = {
    "Set",
    "Delete",
    "DeleteEntries",
    "Flush",
    "SubmitFeedback",
    "SetCachePolicy",
    "Reindex",
    "ExportEntries",
    "ImportEntries",
}
# Calls whose empty cache id means every cache, not the default one.
EVERY_CACHE_WHEN_EMPTY = {"Reindex"}
# Calls that name no cache: the action on any cache lets them through, and they show only the
# caches the key holds (`administers`).
NO_CACHE = {"ListCaches"}
# Calls whose empty cache id means every cache the key administers: with a cache id, as any
# call on that cache; without, as a call that names no cache (NO_CACHE).
EVERY_ADMINISTERED_WHEN_EMPTY = {"ExportEntries"}

REFUSED = Counter(
    "semcache_cache_access_refused_total",
    'Calls refused before they ran, by key ("-": no valid key) and why',
    ["key", "reason"],
    registry=REGISTRY,
)
AUDITED_CALLS = Counter(
    "semcache_cache_audit_total",
    "Changes to caches (writes, deletes, flushes, feedback, policy, reindex, export, import) "
    "by key and action",
    ["key", "method"],
    registry=REGISTRY,
)


def sees_everything() -> bool:
    """Whether the caller may see server-wide detail: no keys, or an admin of every cache."""
    tenant = caller().tenant
    return not tenant.keyed or (Action.ADMIN in tenant.actions and tenant.holds_every_cache)


def administers(cache_id: str) -> bool:
    """Whether the caller may administer this cache: what a call that names no cache
    (NO_CACHE) shows of it."""
    return _permits(caller().tenant, "ListDecisions", None, cache_id, Action.ADMIN)


def reporter(given: str, peer_host: str) -> str:
    """Who a feedback report is from: a keyed caller is its key (and, inside it, whoever it
    names: one key cannot speak for another's reporters); else the name it gives, or its host."""
    who = caller()
    if who.tenant.keyed:
        return f"key:{who.tenant.id}" + (f"/{given}" if given else "")
    return given or peer_host


class NotPermittedError(Exception):
    """The caller's key does not grant what its request needs (PERMISSION_DENIED)."""


class BudgetSpentError(Exception):
    """The caller's key has spent its upstream budget for today (RESOURCE_EXHAUSTED)."""

    def __init__(self, message: str, retry_after_s: float) -> None:
        super().__init__(message)
        self.retry_after_s = retry_after_s


@dataclass(frozen=True)
class Caller:
    tenant: Tenant
    client: str  # whose limits: "key:<id>", or "ip:<address>" without keys

    @property
    def key_id(self) -> str:
        return self.tenant.id if self.tenant.keyed else "-"


current_caller: ContextVar[Caller | None] = ContextVar("current_caller", default=None)


def caller() -> Caller:
    """The caller of the call being served (the open tenant outside any call: tests, tools)."""
    return current_caller.get() or Caller(OPEN, "local")


@dataclass(frozen=True)
class DefaultLimits:
    """The limits of a key that sets none, and of every client when there are no keys."""

    rate_per_s: float | None = None
    burst: int = 20
    concurrency: int | None = None
    upstream_requests_per_day: int | None = None
    upstream_tokens_per_day: int | None = None
    open_passthrough: bool = False  # without keys: may uncacheable chats pass through?


@dataclass
class Admission:
    caller: Caller
    method: str
    cache_id: str
    slot: str | None = None
    token: Token[Caller | None] | None = None


def _permits(tenant: Tenant, name: str, request: object, cache_id: str, action: Action) -> bool:
    """Whether the key grants the call: `action` on its cache. Three exceptions: a call whose
    empty cache id means every cache needs a key holding every cache; a call that names no
    cache (NO_CACHE, or an export of every cache the key administers) needs the action on any
    cache, and shows only the caches it administers; and in a cache the server keeps for others
    (service_runtime.cache_ids.RESERVED_SCOPES), a look-up or a store is a read of the
    application cache its scope attribute names, the deletion of one entry by its id (an id
    only that scope's look-ups return) is a read of any cache, and anything else there (flush,
    statistics) is for a key holding every cache."""
    if name in EVERY_CACHE_WHEN_EMPTY and not cache_id:
        return action in tenant.actions and tenant.holds_every_cache
    if name in NO_CACHE or (name in EVERY_ADMINISTERED_WHEN_EMPTY and not cache_id):
        return action in tenant.actions
    scope = RESERVED_SCOPES.get(cache_id)
    if scope is None:
        return tenant.may(action, cache_id)
    if name in ("Search", "Query"):
        served = dict(getattr(request, "attributes", None) or {}).get(scope)
        return bool(served) and tenant.may(Action.READ, str(served))
    if name == "Delete":
        return Action.READ in tenant.actions and bool(tenant.caches)
    return action in tenant.actions and tenant.holds_every_cache


def _client_of(metadata: Mapping[str, str], peer: str) -> str:
    forwarded = metadata.get(CLIENT_METADATA)
    return f"ip:{forwarded[:64]}" if forwarded else f"ip:{peer_host(peer)}"


def peer_host(peer: str) -> str:
    """A gRPC peer without its port ("ipv4:10.0.0.7:51234" -> "ipv4:10.0.0.7"): every
    connection of one host is one caller."""
    return peer.rsplit(":", 1)[0] if peer.count(":") >= 2 else peer


class AccessGate:
    def __init__(self, keys: KeyRing, limiter: Limiter, defaults: DefaultLimits) -> None:
        self.keys = keys
        self.limiter = limiter
        self.defaults = defaults
        # Every caller when there are no keys: it may pass chats through only if told so.
        self._open = Tenant(OPEN.id, keyed=False, passthrough=defaults.open_passthrough)

    def tenant_for(
        self, metadata: Mapping[str, str], certificates: Sequence[str] = ()
    ) -> Tenant | None:
        tenant = self.keys.authenticate(metadata.get(KEY_METADATA), certificates)
        return self._open if tenant is OPEN else tenant

    async def admit(
        self,
        method: str,
        request: object,
        metadata: Mapping[str, str],
        peer: str,
        certificates: Sequence[str] = (),
    ) -> Admission | None:
        """Raises CallRefused; None for a method the gate does not guard (health, reflection)."""
        if not method.startswith(SERVICE):
            return None
        name = method[len(SERVICE) :]
        action = METHOD_ACTIONS.get(name, Action.ADMIN)
        cache_id = str(getattr(request, "cache_id", "") or "")
        tenant = self.tenant_for(metadata, certificates)
        if tenant is None:
            if action is None:  # open to anyone: served as to a caller with no grants
                tenant = Tenant("-", caches=(), actions=frozenset(), passthrough=False)
            else:
                REFUSED.labels("-", "unauthenticated").inc()
                raise CallRefused(
                    grpc.StatusCode.UNAUTHENTICATED,
                    ErrorReason.UNAUTHENTICATED,
                    "missing or unknown API key (send 'authorization: Bearer <key>')",
                )
        if action is not None and not _permits(tenant, name, request, cache_id, action):
            every = name in EVERY_CACHE_WHEN_EMPTY and not cache_id
            REFUSED.labels(tenant.id, "not-permitted").inc()
            what = "every cache" if every else f"cache {cache_id or 'default'!r}"
            if name in NO_CACHE or (name in EVERY_ADMINISTERED_WHEN_EMPTY and not cache_id):
                what = "any cache"
            raise CallRefused(
                grpc.StatusCode.PERMISSION_DENIED,
                ErrorReason.NOT_PERMITTED,
                f"key {tenant.id!r} may not {action.value} {what} ({name})",
            )
        client = f"key:{tenant.id}" if tenant.keyed else _client_of(metadata, peer)
        admission = Admission(Caller(tenant, client), name, cache_id)
        if action is not None:
            try:
                await self._limit(admission)
            except StoreUnavailableError as exc:  # Redis down: so is every cache it holds
                log.warning("limits of %s not checked: %s", client, exc)
                raise CallRefused(
                    grpc.StatusCode.UNAVAILABLE,
                    ErrorReason.STORE_UNAVAILABLE,
                    "the cache store is unavailable; retry shortly",
                ) from exc
        admission.token = current_caller.set(admission.caller)
        return admission

    async def _limit(self, admission: Admission) -> None:
        tenant, client = admission.caller.tenant, admission.caller.client
        rate = tenant.limits.rate_per_s or self.defaults.rate_per_s
        if rate is not None:
            burst = tenant.limits.burst or self.defaults.burst
            wait = await self.limiter.take(client, rate, burst)
            if wait > 0:
                REFUSED.labels(admission.caller.key_id, "rate-limited").inc()
                raise CallRefused(
                    grpc.StatusCode.RESOURCE_EXHAUSTED,
                    ErrorReason.RATE_LIMITED,
                    f"rate limit of {rate:g} requests/s exceeded; retry later",
                    retry_after_s=wait,
                )
        limit = tenant.limits.concurrency or self.defaults.concurrency
        if limit is not None:
            slot = uuid.uuid4().hex
            if not await self.limiter.enter(client, limit, slot):
                REFUSED.labels(admission.caller.key_id, "too-many-at-once").inc()
                raise CallRefused(
                    grpc.StatusCode.RESOURCE_EXHAUSTED,
                    ErrorReason.RATE_LIMITED,
                    f"more than {limit} requests at once; retry when one has finished",
                    retry_after_s=1.0,
                )
            admission.slot = slot

    async def release(self, admission: object, code: grpc.StatusCode | None) -> None:
        """After the call (`code`: how it ended, None if unknown): frees its slot, audits it."""
        assert isinstance(admission, Admission)
        if admission.token is not None:
            current_caller.reset(admission.token)
        if admission.slot is not None:
            try:
                await self.limiter.leave(admission.caller.client, admission.slot)
            except StoreUnavailableError as exc:  # the slot's lease frees it in time
                log.warning("slot of %s not freed: %s", admission.caller.client, exc)
        if admission.method in AUDITED:
            self._audit(admission, code)

    @staticmethod
    def _audit(admission: Admission, code: grpc.StatusCode | None) -> None:
        every = admission.method in EVERY_CACHE_WHEN_EMPTY | EVERY_ADMINISTERED_WHEN_EMPTY
        fields = {
            "key": admission.caller.key_id,
            "client": admission.caller.client,
            "action": admission.method,
            "cache": admission.cache_id or ("*" if every else "default"),
            "outcome": code.name if code is not None else "UNKNOWN",
        }
        AUDITED_CALLS.labels(fields["key"], admission.method).inc()
        # key=value in text logs; the fields as JSON keys in JSON logs (service_runtime.logs).
        audit_log.info(
            "audit %s", " ".join(f"{k}={v}" for k, v in fields.items()), extra={"fields": fields}
        )
