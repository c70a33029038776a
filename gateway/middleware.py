"""The gateway's pure-ASGI guard: body-size limit, API key, JSON bodies only, and per-route
metrics (labelled by route template), in front of every request. It forwards the caller's key
and address on every call made for the request (service_runtime.tenants.forwarded): the cache
server decides what the key may do and applies its limits."""

from __future__ import annotations

import logging
import re
import time
from collections.abc import Iterable, Iterator
from typing import Any

from fastapi import Request
from starlette.datastructures import Headers
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from gateway.errors import ProblemError, problem_response
from gateway.metrics import LATENCY, REQUESTS
from service_runtime.logs import REQUEST_ID_HEADER, clean_request_id, request_id
from service_runtime.tenants import CLIENT_METADATA, KEY_METADATA, KeyRing, forwarded

log = logging.getLogger("gateway")

OPEN_PATHS = {"/health"}  # reachable without the API key (load balancers, orchestrators)
# The console's static shell (gateway.console): a browser's navigation carries no key, and the
# shell holds no data; every call the page then makes carries the operator's key.
CONSOLE_PATH, CONSOLE_ASSETS = "/console", "/console/static/"


def _is_open(path: str) -> bool:
    if path in OPEN_PATHS or path.startswith(CONSOLE_ASSETS):
        return True
    return path in (CONSOLE_PATH, CONSOLE_PATH + "/")  # the latter is redirected to the former


def _has_body(headers: Headers) -> bool:
    return headers.get("content-length", "0") != "0" or "transfer-encoding" in headers


def _is_json(content_type: str | None) -> bool:
    """application/json or any application/...+json, parameters allowed. A body without a
    declared type is refused too, as FastAPI does (no cross-site "simple" requests)."""
    if content_type is None:
        return False
    media = content_type.partition(";")[0].strip().lower()
    return media == "application/json" or (
        media.startswith("application/") and media.endswith("+json")
    )


class GuardMiddleware:
    """Pure ASGI (no per-request task or stream wrapping): body-size limit, API key, JSON
    bodies only, metrics."""

    def __init__(self, app: ASGIApp, max_body_bytes: int, keys: KeyRing) -> None:
        self.app = app
        self.max_body_bytes = max_body_bytes
        self.keys = keys
        self.routes = RouteTemplates()

    def _refusal(self, scope: Scope, headers: Headers) -> ProblemError | None:
        length = headers.get("content-length")
        if length is not None and (not length.isdigit() or int(length) > self.max_body_bytes):
            return ProblemError(413, f"request body over {self.max_body_bytes} bytes")
        if (
            self.keys.keyed
            and not _is_open(scope["path"])
            and self.keys.authenticate(headers.get("authorization")) is None
        ):
            return ProblemError(
                401,
                "missing or unknown API key (Authorization: Bearer <key>)",
                headers={"WWW-Authenticate": "Bearer"},
            )
        if _has_body(headers) and not _is_json(headers.get("content-type")):
            return ProblemError(
                415,
                f"a body of type {headers.get('content-type', 'none declared')!r} cannot be "
                "read: send JSON (Content-Type: application/json)",
            )
        return None

    async def _bounded_body(self, receive: Receive) -> tuple[Receive, ProblemError | None]:
        """Reads the whole body (at most max_body_bytes) and replays it to the app."""
        chunks: list[bytes] = []
        size = 0
        while True:
            message = await receive()
            if message["type"] != "http.request":
                first: Message = message
                break
            chunk = message.get("body", b"")
            size += len(chunk)
            if size > self.max_body_bytes:
                too_big = ProblemError(413, f"request body over {self.max_body_bytes} bytes")
                return receive, too_big
            chunks.append(chunk)
            if not message.get("more_body", False):
                first = {"type": "http.request", "body": b"".join(chunks), "more_body": False}
                break
        replayed = False

        async def replay() -> Message:
            nonlocal replayed
            if not replayed:
                replayed = True
                return first
            return await receive()

        return replay, None

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        started = time.perf_counter()
        route = self.routes.template(scope)
        status = 500
        headers = Headers(scope=scope)
        rid = clean_request_id(headers.get(REQUEST_ID_HEADER))
        token = request_id.set(rid)
        client = scope.get("client") or ("unknown", 0)
        caller: tuple[tuple[str, str], ...] = ((CLIENT_METADATA, str(client[0])),)
        if "authorization" in headers:
            caller += ((KEY_METADATA, headers["authorization"]),)
        forwarding = forwarded.set(caller)

        async def send_and_record(message: Message) -> None:
            nonlocal status
            if message["type"] == "http.response.start":
                status = int(message["status"])
                message["headers"] = [*message.get("headers", []), (b"x-request-id", rid.encode())]
            await send(message)

        try:
            refusal = self._refusal(scope, headers)
            if refusal is None and "content-length" not in headers:
                # A body without a declared length (chunked) is read here, up to the limit.
                receive, refusal = await self._bounded_body(receive)
            if refusal is not None:
                response = problem_response(Request(scope), refusal)
                await response(scope, receive, send_and_record)
            else:
                await self.app(scope, receive, send_and_record)
        finally:
            elapsed = time.perf_counter() - started
            LATENCY.labels(route, scope["method"]).observe(elapsed)
            REQUESTS.labels(route, scope["method"], str(status)).inc()
            log.info("%s %s %d in %.1f ms", scope["method"], route, status, elapsed * 1e3)
            forwarded.reset(forwarding)
            request_id.reset(token)


class RouteTemplates:
    """Maps a request path to its route's template ("/v1/caches/{cacheId}/entries/{entryId}"),
    so that metric labels stay few however many entry ids are requested. Built on first use
    from the application's routes, routers included through `include_router` too (FastAPI
    keeps those behind a wrapper that has no path of its own)."""

    def __init__(self) -> None:
        self._table: list[tuple[re.Pattern[str], frozenset[str], str]] | None = None

    @staticmethod
    def _flatten(routes: Iterable[Any]) -> Iterator[tuple[re.Pattern[str], frozenset[str], str]]:
        for route in routes:
            included = getattr(route, "original_router", None)
            if included is not None:
                yield from RouteTemplates._flatten(included.routes)
            elif isinstance(getattr(route, "path_regex", None), re.Pattern):
                methods = frozenset(getattr(route, "methods", None) or ())
                yield route.path_regex, methods, str(route.path)

    def template(self, scope: Scope) -> str:
        if self._table is None:
            self._table = list(self._flatten(scope["app"].router.routes))
        path, method = scope["path"], scope["method"]
        path_only: str | None = None  # the path matches but not the method (405)
        for regex, methods, template in self._table:
            if regex.match(path):
                if not methods or method in methods:
                    return template
                path_only = path_only or template
        return path_only or "unmatched"
