"""The shell every gRPC service runs in: a grpc.aio server with the standard health service and
reflection, a port file for supervisors and tests, and graceful shutdown on SIGTERM/SIGINT.

Start-up: listen with health NOT_SERVING -> `prepare()` (load models, open stores...) ->
SERVING. Shutdown: NOT_SERVING -> stop taking RPCs and let in-flight ones finish within the
grace period -> `cleanup()`.
"""

from __future__ import annotations

import asyncio
import logging
import math
import signal
from collections.abc import (
    AsyncIterator,
    Awaitable,
    Callable,
    Coroutine,
    Iterable,
    Mapping,
    Sequence,
)
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Protocol, cast

import grpc
from google.protobuf.message import DecodeError
from grpc_health.v1 import health, health_pb2, health_pb2_grpc
from grpc_reflection.v1alpha import reflection

from service_runtime import tracing, tracing_grpc
from service_runtime.error_reasons import REASON_KEY, RETRY_AFTER_KEY, ErrorReason
from service_runtime.logs import REQUEST_ID_HEADER, clean_request_id, request_id
from service_runtime.tls import ServerTls

log = logging.getLogger(__name__)

DEFAULT_MAX_MESSAGE_BYTES = 16 * 1024 * 1024


@dataclass(frozen=True)
class _Malformed:
    reason: str


class CallRefused(Exception):
    """Raised by a CallGate: the call is answered with this status and reason, unserved."""

    def __init__(
        self,
        code: grpc.StatusCode,
        reason: ErrorReason,
        message: str,
        retry_after_s: float | None = None,
    ) -> None:
        super().__init__(message)
        self.code = code
        self.reason = reason
        self.message = message
        self.retry_after_s = retry_after_s

    def trailing_metadata(self) -> tuple[tuple[str, str], ...]:
        reason = ((REASON_KEY, self.reason.value),)
        if self.retry_after_s is None:
            return reason
        return (*reason, (RETRY_AFTER_KEY, str(max(1, math.ceil(self.retry_after_s)))))


class CallGate(Protocol):
    """Decides, before a method runs, whether its caller may call it (raises CallRefused);
    what `admit` returns is handed back to `release` when the call has ended."""

    async def admit(
        self,
        method: str,
        request: object,
        metadata: Mapping[str, str],
        peer: str,
        certificates: Sequence[str],
    ) -> object | None:
        """`certificates`: the names of the caller's verified client certificate (mutual
        TLS; its common name and DNS SANs), empty without one."""
        ...

    async def release(self, admission: object, code: grpc.StatusCode | None) -> None: ...


def _ended_with(context: grpc.aio.ServicerContext[Any, Any], failed: bool) -> grpc.StatusCode:
    code = context.code()
    if isinstance(code, grpc.StatusCode):
        return code
    return grpc.StatusCode.UNKNOWN if failed else grpc.StatusCode.OK


def _certificate_names(context: grpc.aio.ServicerContext[Any, Any]) -> list[str]:
    """The names a verified client certificate gives its caller (empty without mutual TLS)."""
    auth = context.auth_context() or {}
    names = [*auth.get("x509_common_name", ()), *auth.get("x509_subject_alternative_name", ())]
    return [n.decode(errors="replace") if isinstance(n, bytes) else str(n) for n in names]


async def _admitted(
    gate: CallGate | None,
    method: str,
    request: object,
    metadata: Mapping[str, str],
    context: grpc.aio.ServicerContext[Any, Any],
) -> object | None:
    if gate is None:
        return None
    try:
        return await gate.admit(
            method, request, metadata, context.peer() or "", _certificate_names(context)
        )
    except CallRefused as refused:
        # The line every service writes for each error it answers (what clients were told).
        log.info("error answered: %s %s", refused.code.name, refused.message)
        await context.abort(
            refused.code, refused.message, trailing_metadata=refused.trailing_metadata()
        )
        raise  # unreachable: abort raises


class UnaryCallInterceptor(grpc.aio.ServerInterceptor):
    """Wraps every method once, for three things:
    - each call is served with its caller's request id (`x-request-id` metadata, or a new id)
      in the `request_id` context variable, so that log lines carry it;
    - a request that does not parse (invalid UTF-8 in a string, corrupt wire format) is
      INVALID_ARGUMENT with the reason, instead of grpc's UNKNOWN;
    - the service's gate, if it has one, admits the call (or refuses it) before it runs."""

    def __init__(self, gate: CallGate | None = None) -> None:
        self.gate = gate

    async def intercept_service(
        self,
        continuation: Callable[
            [grpc.HandlerCallDetails], Awaitable[grpc.RpcMethodHandler[Any, Any] | None]
        ],
        handler_call_details: grpc.HandlerCallDetails,
    ) -> grpc.RpcMethodHandler[Any, Any] | None:
        handler = await continuation(handler_call_details)
        if handler is None or handler.request_deserializer is None:
            return handler
        metadata = {
            k: v for k, v in (handler_call_details.invocation_metadata or ()) if isinstance(v, str)
        }
        rid = clean_request_id(metadata.get(REQUEST_ID_HEADER))
        method, gate = handler_call_details.method, self.gate
        if handler.unary_stream is not None:
            return _streaming_with_request_id(handler, rid, method, metadata, gate)
        if handler.unary_unary is None:
            return handler
        deserialize, behaviour = handler.request_deserializer, handler.unary_unary

        def parse(data: bytes) -> object:
            try:
                return deserialize(data)
            except DecodeError as exc:
                return _Malformed(str(exc))

        async def guarded(request: object, context: grpc.aio.ServicerContext[Any, Any]) -> Any:
            token = request_id.set(rid)
            admission = None
            failed = True
            try:
                if isinstance(request, _Malformed):
                    await context.abort(
                        grpc.StatusCode.INVALID_ARGUMENT,
                        f"malformed request: {request.reason}",
                        trailing_metadata=((REASON_KEY, ErrorReason.INVALID_INPUT.value),),
                    )
                admission = await _admitted(gate, method, request, metadata, context)
                reply = await behaviour(request, context)  # type: ignore[arg-type]  # sync ctx
                failed = False
                return reply
            finally:
                if gate is not None and admission is not None:
                    await gate.release(admission, _ended_with(context, failed))
                request_id.reset(token)

        return grpc.unary_unary_rpc_method_handler(
            guarded, request_deserializer=parse, response_serializer=handler.response_serializer
        )


def _streaming_with_request_id(
    handler: grpc.RpcMethodHandler[Any, Any],
    rid: str,
    method: str,
    metadata: Mapping[str, str],
    gate: CallGate | None,
) -> grpc.RpcMethodHandler[Any, Any]:
    """A server-streaming method served with its caller's request id and admitted by the
    gate, as unary ones are."""
    # An aio server's streaming behaviour: an async generator of replies.
    behaviour = cast(Callable[..., AsyncIterator[Any]], handler.unary_stream)

    async def streamed(request: object, context: grpc.aio.ServicerContext[Any, Any]) -> Any:
        token = request_id.set(rid)
        admission = None
        failed = True
        try:
            admission = await _admitted(gate, method, request, metadata, context)
            async for reply in behaviour(request, context):
                yield reply
            failed = False
        finally:
            if gate is not None and admission is not None:
                await gate.release(admission, _ended_with(context, failed))
            request_id.reset(token)

    return grpc.unary_stream_rpc_method_handler(
        streamed,
        request_deserializer=handler.request_deserializer,
        response_serializer=handler.response_serializer,
    )


class GrpcService:
    def __init__(
        self,
        *,
        host: str,
        port: int,
        service_names: Iterable[str],
        port_file: Path | None = None,
        max_message_bytes: int = DEFAULT_MAX_MESSAGE_BYTES,
        logger: logging.Logger = log,
        tls: ServerTls | None = None,
        max_connection_age_s: float = 0.0,
        connection_age_grace_s: float = 10.0,
        gate: CallGate | None = None,
    ) -> None:
        options: list[tuple[str, int]] = [
            ("grpc.max_receive_message_length", max_message_bytes),
            ("grpc.max_send_message_length", max_message_bytes),
        ]
        if max_connection_age_s > 0:
            # A client's round_robin resolves the name again only when a connection closes:
            # without this, replicas added by a scale-up would get no calls from it.
            options += [
                ("grpc.max_connection_age_ms", int(max_connection_age_s * 1000)),
                ("grpc.max_connection_age_grace_ms", int(connection_age_grace_s * 1000)),
            ]
        # Tracing's (service_runtime.tracing_grpc; none while off) first: the outermost, so that a
        # call's span covers its admission too.
        self.interceptors = [*tracing_grpc.server_interceptors(), UnaryCallInterceptor(gate)]
        self.server = grpc.aio.server(interceptors=self.interceptors, options=options)
        self.health = health.aio.HealthServicer()
        health_pb2_grpc.add_HealthServicer_to_server(self.health, self.server)
        self.service_names = list(service_names)
        reflection.enable_server_reflection(
            [*self.service_names, health.SERVICE_NAME, reflection.SERVICE_NAME], self.server
        )
        self.host = host
        address = f"{host}:{port}"
        if tls is not None and tls.enabled:
            self.port = self.server.add_secure_port(address, tls.credentials())
        else:
            self.port = self.server.add_insecure_port(address)
        self.port_file = port_file
        self.log = logger

    async def set_serving(self, serving: bool) -> None:
        status = (
            health_pb2.HealthCheckResponse.SERVING
            if serving
            else health_pb2.HealthCheckResponse.NOT_SERVING
        )
        for name in ("", *self.service_names):
            await self.health.set(name, status)

    async def start(self) -> None:
        await self.set_serving(False)
        await self.server.start()
        self.log.info("listening on %s:%d (NOT_SERVING until ready)", self.host, self.port)
        if self.port_file is not None:
            self.port_file.write_text(f"{self.port}\n")

    async def stop(self, grace_s: float) -> None:
        await self.set_serving(False)
        self.log.info("shutting down: finishing in-flight requests (grace %.1fs)", grace_s)
        await self.server.stop(grace_s)


async def serve_until_signal(
    service: GrpcService,
    *,
    prepare: Callable[[], Coroutine[Any, Any, None]],
    cleanup: Callable[[], Coroutine[Any, Any, None]],
    grace_s: float,
) -> int:
    """Runs `service` until SIGTERM/SIGINT; a failing `prepare` stops it and is re-raised."""
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, stop.set)
    await service.start()
    preparing = asyncio.create_task(prepare())
    stopping = asyncio.create_task(stop.wait())
    await asyncio.wait({preparing, stopping}, return_when=asyncio.FIRST_COMPLETED)
    if preparing.done() and (error := preparing.exception()) is not None:
        stopping.cancel()
        await service.server.stop(0)
        await cleanup()
        raise error
    if not stop.is_set():
        await service.set_serving(True)
    await stop.wait()
    preparing.cancel()
    await service.stop(grace_s)
    await cleanup()
    await asyncio.to_thread(tracing.flush)  # also at exit (atexit), but a kill may come first
    return 0
