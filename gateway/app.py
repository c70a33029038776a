"""The FastAPI application: lifespan (one gRPC channel to the cache server, kept on
app.state), the guard middleware (gateway.middleware), error rendering (every error an RFC 7807
Problem), routes."""

from __future__ import annotations

import asyncio
import logging
from collections.abc import AsyncIterator, MutableMapping
from contextlib import asynccontextmanager
from typing import Any

from fastapi import FastAPI, Request, Response
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse
from prometheus_client import CONTENT_TYPE_LATEST, generate_latest
from starlette.exceptions import HTTPException as StarletteHTTPException

from gateway import console
from gateway.errors import (
    CacheCallError,
    ProblemError,
    from_grpc,
    is_langcache,
    problem_response,
)
from gateway.metrics import REGISTRY
from gateway.middleware import GuardMiddleware
from gateway.routes import chat, conversations, feedback, langcache, operations, original, policy
from gateway.settings import GatewaySettings
from protos.semcache.cache.v1 import cache_pb2_grpc as pb_grpc
from service_runtime import tracing
from service_runtime.logs import REQUEST_ID_HEADER, clean_request_id, request_id
from service_runtime.tenants import KeyRing
from service_runtime.tls import ClientTls

log = logging.getLogger("gateway")
UNTRACED_PATHS = frozenset({"/health", "/metrics"})


def grpc_target(addresses: str) -> str:
    """ "host:port" as is; "ip:port,ip:port" as one gRPC target over all of them."""
    parts = [a.strip() for a in addresses.split(",") if a.strip()]
    return parts[0] if len(parts) == 1 else "ipv4:" + ",".join(parts)


def _untraced(scope: MutableMapping[str, Any]) -> bool:
    return scope.get("path") in UNTRACED_PATHS


def create_app(settings: GatewaySettings | None = None) -> FastAPI:
    settings = settings or GatewaySettings()

    @asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        tls = ClientTls(
            settings.cache_server_tls_ca_file,
            settings.cache_server_tls_cert_file,
            settings.cache_server_tls_key_file,
            settings.cache_server_tls_server_name,
        )
        channel = tls.channel(
            grpc_target(settings.cache_server_address),
            [
                # Several cache servers (a list, or a DNS name with several addresses):
                # spread calls over all of them.
                ("grpc.lb_policy_name", "round_robin"),
                ("grpc.initial_reconnect_backoff_ms", 100),
                ("grpc.max_reconnect_backoff_ms", 1000),
            ],
        )
        app.state.channel = channel
        app.state.cache = pb_grpc.CacheServiceStub(channel)
        log.info("gateway: cache server at %s", settings.cache_server_address)
        try:
            yield
        finally:
            await channel.close()
            await asyncio.to_thread(tracing.flush)  # uvicorn's exit skips atexit

    app = FastAPI(
        title="semcache",
        version="1.0.0",
        description="Semantic cache for LLM applications: the original REST API (`/query`, "
        "`/health`, `/cache/stats`) and a LangCache-compatible API (`/v1/caches/...`). "
        "Similarity is the cosine similarity of normalised embeddings; a hit is "
        "similarity >= threshold, so a higher threshold is stricter.",
        lifespan=lifespan,
        # FastAPI's own span per request ("POST /query"), on only while service_runtime.tracing
        # has installed a tracer provider: none for probes and scrapes, and none per
        # dependency or endpoint call (the gRPC call's span says where the time goes).
        telemetry={"operation_spans": False, "exclude": _untraced},
    )
    app.state.settings = settings
    app.state.keys = keys = KeyRing.configured(
        api_key=settings.api_key.get_secret_value() if settings.api_key is not None else None,
        keys_file=settings.keys_file,
        reload_s=settings.keys_reload_s,
    )
    app.add_middleware(GuardMiddleware, max_body_bytes=settings.max_body_bytes, keys=keys)

    @app.exception_handler(ProblemError)
    async def on_problem(request: Request, error: ProblemError) -> JSONResponse:
        return problem_response(request, error)

    @app.exception_handler(CacheCallError)
    async def on_cache_call_error(request: Request, error: CacheCallError) -> JSONResponse:
        problem = from_grpc(error.error, langcache=is_langcache(request.url.path))
        return problem_response(request, problem)

    @app.exception_handler(StarletteHTTPException)
    async def on_http_error(request: Request, error: StarletteHTTPException) -> JSONResponse:
        # Starlette's and FastAPI's own refusals: unknown route (404), wrong method (405, with
        # its Allow header), a body that cannot be parsed at all (400).
        detail = str(error.detail)
        if error.status_code == 404 and detail == "Not Found":
            detail = f"no route {request.url.path}"
        elif error.status_code == 405:
            detail = f"{request.method} is not allowed on {request.url.path}"
        elif error.status_code == 400 and detail == "There was an error parsing the body":
            detail = "the request body could not be parsed: send JSON encoded as UTF-8"
        return problem_response(
            request,
            ProblemError(
                error.status_code, detail, headers=dict(error.headers) if error.headers else None
            ),
        )

    @app.exception_handler(Exception)
    async def on_unexpected(request: Request, error: Exception) -> JSONResponse:
        # The last resort: a bug still answers with a Problem (and is logged with its trace);
        # the caller is told only the request id, which the log line names. The guard's own
        # request id is gone here (this runs outside it): the caller's, or a new one.
        rid = request_id.get() or clean_request_id(request.headers.get(REQUEST_ID_HEADER))
        log.error(
            "unexpected error on %s %s (request id %s)",
            request.method,
            request.url.path,
            rid,
            exc_info=error,
        )
        problem = ProblemError(
            500, f"internal error (request id {rid})", headers={REQUEST_ID_HEADER: rid}
        )
        return problem_response(request, problem)

    @app.exception_handler(RequestValidationError)
    async def on_invalid(request: Request, error: RequestValidationError) -> JSONResponse:
        fields = [
            {
                "field": ".".join(str(p) for p in e.get("loc", ())[1:]) or "body",
                "rule": str(e.get("type", "invalid")),
                "message": str(e.get("msg", "invalid")),
            }
            for e in error.errors()
        ]
        detail = "; ".join(f"{f['field']}: {f['message']}" for f in fields)
        # FastAPI's 422 (the original API); the LangCache API makes it a 400, as its SDK
        # expects (gateway.errors.problem_response).
        return problem_response(request, ProblemError(422, detail, fields=fields))

    @app.get("/metrics", include_in_schema=False)
    async def metrics() -> Response:
        return Response(generate_latest(REGISTRY), media_type=CONTENT_TYPE_LATEST)

    app.include_router(original.router)
    app.include_router(langcache.router)
    app.include_router(conversations.router)
    app.include_router(feedback.router)
    app.include_router(policy.router)
    app.include_router(operations.router)
    app.include_router(chat.router)
    app.include_router(console.router)
    return app
