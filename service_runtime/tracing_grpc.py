"""gRPC calls traced, when service_runtime.tracing is on: a SERVER span per call served, the
child of the W3C trace context (`traceparent`, `tracestate`) in the call's metadata, and a
CLIENT span per call made, its context sent in the call's metadata beside the request id and
the caller's key. While tracing is off, `server_interceptors()` and `client_interceptors()` are
empty: nothing is installed (service_runtime.grpc_service and service_runtime.tls ask them).

Our own two small interceptors rather than the opentelemetry-instrumentation-grpc package: that
is a pre-1.0 (0.x) release that patches grpc globally (wrapt), while these cover the calls
semcache makes, and let "off" mean nothing installed at all.
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Awaitable, Callable
from typing import Any, cast

import grpc
from opentelemetry import propagate, trace
from opentelemetry.trace import Span, SpanKind, Status, StatusCode
from opentelemetry.util.types import AttributeValue

from service_runtime import tracing

# Health checks and reflection are polled by supervisors: not traced.
_UNTRACED = ("/grpc.health.", "/grpc.reflection.")
# A server span is an error only for these (OpenTelemetry's gRPC conventions); a client span
# for any status but OK and CANCELLED (the caller's own doing: the gateway cancels a chat
# stream it has read to the end).
_SERVER_ERRORS = frozenset(
    {
        grpc.StatusCode.UNKNOWN,
        grpc.StatusCode.DEADLINE_EXCEEDED,
        grpc.StatusCode.UNIMPLEMENTED,
        grpc.StatusCode.INTERNAL,
        grpc.StatusCode.UNAVAILABLE,
        grpc.StatusCode.DATA_LOSS,
    }
)


def server_interceptors() -> list[grpc.aio.ServerInterceptor]:
    """What a gRPC server installs first (outermost): a SERVER span per call; none while off."""
    return [TracingServerInterceptor()] if tracing.tracer() is not None else []


def client_interceptors() -> list[grpc.aio.ClientInterceptor]:
    """What a gRPC channel installs: a CLIENT span per call, its context sent in the call's
    metadata; none while off."""
    if tracing.tracer() is None:
        return []
    return [_UnaryUnaryClient(), _UnaryStreamClient()]


def _rpc_attributes(method: str) -> tuple[str, dict[str, AttributeValue]]:
    """The span name ("package.Service/Method") and rpc.* attributes of a method path."""
    name = method.lstrip("/")
    service, _, rpc = name.partition("/")
    return name, {"rpc.system": "grpc", "rpc.service": service, "rpc.method": rpc}


def _end_rpc(span: Span, code: grpc.StatusCode, *, server: bool) -> None:
    span.set_attribute("rpc.grpc.status_code", code.value[0])
    fine = (grpc.StatusCode.OK, grpc.StatusCode.CANCELLED)
    if (code in _SERVER_ERRORS) if server else (code not in fine):
        span.set_status(Status(StatusCode.ERROR, code.name))
    span.end()


def _served_code(
    context: grpc.aio.ServicerContext[Any, Any], error: BaseException | None
) -> grpc.StatusCode:
    code = context.code()
    if isinstance(code, grpc.StatusCode):
        return code
    if error is None:
        return grpc.StatusCode.OK
    return (
        grpc.StatusCode.CANCELLED
        if isinstance(error, asyncio.CancelledError)
        else grpc.StatusCode.UNKNOWN
    )


def _noted(served: Span, error: BaseException) -> BaseException:
    """Records an unexpected exception on the span (an abort or a cancellation is not one:
    its status code says it)."""
    if not isinstance(error, grpc.aio.AbortError | asyncio.CancelledError):
        served.record_exception(error)
    return error


class TracingServerInterceptor(grpc.aio.ServerInterceptor):
    """A SERVER span per call, the child of the caller's context from the call's metadata, and
    current while the method runs (so the calls it makes are its children)."""

    async def intercept_service(
        self,
        continuation: Callable[
            [grpc.HandlerCallDetails], Awaitable[grpc.RpcMethodHandler[Any, Any] | None]
        ],
        handler_call_details: grpc.HandlerCallDetails,
    ) -> grpc.RpcMethodHandler[Any, Any] | None:
        handler = await continuation(handler_call_details)
        tracer, method = tracing.tracer(), handler_call_details.method
        if handler is None or tracer is None or method.startswith(_UNTRACED):
            return handler
        carrier = {
            k: v for k, v in (handler_call_details.invocation_metadata or ()) if isinstance(v, str)
        }
        parent = propagate.extract(carrier)
        name, attributes = _rpc_attributes(method)

        def started() -> Span:
            return tracer.start_span(name, parent, SpanKind.SERVER, attributes)

        if handler.unary_unary is not None:
            unary = handler.unary_unary

            async def traced(request: Any, context: grpc.aio.ServicerContext[Any, Any]) -> Any:
                served, error = started(), None
                try:
                    with trace.use_span(
                        served, record_exception=False, set_status_on_exception=False
                    ):
                        return await unary(request, context)  # type: ignore[arg-type]  # sync ctx
                except BaseException as exc:
                    error = _noted(served, exc)
                    raise
                finally:
                    _end_rpc(served, _served_code(context, error), server=True)

            return grpc.unary_unary_rpc_method_handler(
                traced,
                request_deserializer=handler.request_deserializer,
                response_serializer=handler.response_serializer,
            )
        if handler.unary_stream is not None:
            stream = cast(Callable[..., AsyncIterator[Any]], handler.unary_stream)

            async def streamed(request: Any, context: grpc.aio.ServicerContext[Any, Any]) -> Any:
                served, error = started(), None
                try:
                    with trace.use_span(
                        served, record_exception=False, set_status_on_exception=False
                    ):
                        async for reply in stream(request, context):
                            yield reply
                except BaseException as exc:
                    error = _noted(served, exc)
                    raise
                finally:
                    _end_rpc(served, _served_code(context, error), server=True)

            return grpc.unary_stream_rpc_method_handler(
                streamed,
                request_deserializer=handler.request_deserializer,
                response_serializer=handler.response_serializer,
            )
        return handler


_FINISHING: set[asyncio.Task[None]] = set()  # client spans waiting for their call's status


def _client_call(
    tracer: trace.Tracer, method: str, details: grpc.aio.ClientCallDetails
) -> tuple[Span, grpc.aio.ClientCallDetails]:
    """A CLIENT span for the call, and the call's details with its context in the metadata."""
    name, attributes = _rpc_attributes(method)
    calling = tracer.start_span(name, kind=SpanKind.CLIENT, attributes=attributes)
    carrier: dict[str, str] = {}
    propagate.inject(carrier, context=trace.set_span_in_context(calling))
    metadata = grpc.aio.Metadata(*(details.metadata or ()), *carrier.items())
    traced = grpc.aio.ClientCallDetails(
        details.method, details.timeout, metadata, details.credentials, details.wait_for_ready
    )
    return calling, traced


def _end_when_done(calling: Span, call: grpc.aio.Call) -> None:
    async def finish(done: grpc.aio.Call) -> None:
        try:
            code = await done.code()
        except BaseException:
            code = grpc.StatusCode.UNKNOWN
        _end_rpc(calling, code, server=False)

    def on_done(done: Any) -> None:
        task = asyncio.ensure_future(finish(done))
        _FINISHING.add(task)
        task.add_done_callback(_FINISHING.discard)

    call.add_done_callback(on_done)


async def _traced_call(
    start: Callable[[grpc.aio.ClientCallDetails], Awaitable[Any]],
    details: grpc.aio.ClientCallDetails,
) -> Any:
    """Starts the call in a CLIENT span that ends when the call does (health checks and
    reflection untraced)."""
    tracer = tracing.tracer()
    method = details.method.decode() if isinstance(details.method, bytes) else str(details.method)
    if tracer is None or method.startswith(_UNTRACED):
        return await start(details)
    calling, traced = _client_call(tracer, method, details)
    try:
        call = await start(traced)
    except BaseException as exc:
        calling.record_exception(exc)
        _end_rpc(calling, grpc.StatusCode.UNKNOWN, server=False)
        raise
    _end_when_done(calling, call)
    return call


class _UnaryUnaryClient(grpc.aio.UnaryUnaryClientInterceptor):
    async def intercept_unary_unary(
        self, continuation: Any, client_call_details: grpc.aio.ClientCallDetails, request: Any
    ) -> Any:
        return await _traced_call(lambda d: continuation(d, request), client_call_details)


class _UnaryStreamClient(grpc.aio.UnaryStreamClientInterceptor):
    async def intercept_unary_stream(
        self, continuation: Any, client_call_details: grpc.aio.ClientCallDetails, request: Any
    ) -> Any:
        return await _traced_call(lambda d: continuation(d, request), client_call_details)
