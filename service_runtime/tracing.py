"""OpenTelemetry traces across the three services: on only when an OTLP endpoint is set.

`setup_tracing` (called by `start_service`, once per process) reads the standard OTEL_*
variables. With neither OTEL_EXPORTER_OTLP_ENDPOINT nor OTEL_EXPORTER_OTLP_TRACES_ENDPOINT set,
or with OTEL_SDK_DISABLED=true or OTEL_TRACES_EXPORTER=none, it installs nothing: no tracer
provider (so FastAPI's own request spans stay off too), no gRPC interceptor, and every span
helper here returns one shared do-nothing context manager after testing one module variable.
Otherwise the provider is the global one, spans are batched (BatchSpanProcessor; OTEL_BSP_*
tune it) and exported over OTLP/gRPC, and what is still held is sent when a service stops
(`flush`) or the process exits (the provider registers itself with atexit).

Spans: a SERVER span per REST request (FastAPI's native telemetry, which uses the global
provider: gateway.app configures it), a CLIENT span per gRPC call made and a SERVER span per
call served, with the W3C trace context in the call's metadata (service_runtime.tracing_grpc),
and the spans the services open with `span`, `async_span` and `batch_span` around the store
search, the embedder's batches, the upstream LLM, the verifier and the judge. None holds a
prompt or an answer.
"""

from __future__ import annotations

import logging
import os
from collections.abc import Callable, Iterable, Mapping
from contextlib import AbstractAsyncContextManager, AbstractContextManager, nullcontext
from types import TracebackType

from opentelemetry import trace
from opentelemetry.context import Context
from opentelemetry.trace import Link, Span, SpanKind, Status, StatusCode
from opentelemetry.util.types import AttributeValue

log = logging.getLogger(__name__)

SERVICE_NAMES = {
    "gateway": "semcache-gateway",
    "cache_server": "semcache-cache-server",
    "embedder": "semcache-embedder",
}
Attributes = Mapping[str, AttributeValue]

# The tracer while tracing is on; None means off, and every helper returns at once.
_tracer: trace.Tracer | None = None
_flush: Callable[[int], bool] | None = None  # the installed provider's force_flush
_OFF: AbstractContextManager[None] = nullcontext()
_OFF_ASYNC: AbstractAsyncContextManager[None] = nullcontext()


class TracingConfigError(ValueError):
    """OTEL_* settings this build cannot honour (another exporter or protocol)."""


def wanted(env: Mapping[str, str]) -> bool:
    """Whether `env` asks for traces: an OTLP endpoint set, the SDK not disabled, the traces
    exporter otlp (the default) and not `none`. Raises TracingConfigError for an exporter or
    protocol other than OTLP over gRPC, rather than ignore it."""
    if env.get("OTEL_SDK_DISABLED", "").strip().lower() == "true":
        return False
    exporter = env.get("OTEL_TRACES_EXPORTER", "otlp").strip().lower() or "otlp"
    if exporter == "none":
        return False
    if exporter != "otlp":
        raise TracingConfigError(
            f"OTEL_TRACES_EXPORTER={exporter}: only otlp (or none) is supported"
        )
    if not (
        env.get("OTEL_EXPORTER_OTLP_TRACES_ENDPOINT") or env.get("OTEL_EXPORTER_OTLP_ENDPOINT")
    ):
        return False
    for name in ("OTEL_EXPORTER_OTLP_TRACES_PROTOCOL", "OTEL_EXPORTER_OTLP_PROTOCOL"):
        protocol = env.get(name, "").strip()
        if protocol:  # the traces-specific variable wins over the general one
            if protocol != "grpc":
                raise TracingConfigError(f"{name}={protocol}: only grpc is supported")
            break
    return True


def setup_tracing(service: str) -> bool:
    """Installs a tracer provider exporting over OTLP/gRPC when the environment asks for it
    (`wanted`); True when tracing is on. `service` is the process's short name ("gateway",
    "cache_server", "embedder"); OTEL_SERVICE_NAME, if set, names it instead."""
    if not wanted(os.environ):
        return False
    # The SDK and the exporter are imported only here: a process without traces never loads them.
    from opentelemetry.exporter.otlp.proto.grpc.trace_exporter import OTLPSpanExporter
    from opentelemetry.sdk.resources import SERVICE_NAME, Resource
    from opentelemetry.sdk.trace import TracerProvider
    from opentelemetry.sdk.trace.export import BatchSpanProcessor

    named = {} if os.environ.get("OTEL_SERVICE_NAME") else {SERVICE_NAME: SERVICE_NAMES[service]}
    # Resource.create adds OTEL_RESOURCE_ATTRIBUTES; the sampler comes from OTEL_TRACES_SAMPLER.
    provider = TracerProvider(resource=Resource.create(named))
    provider.add_span_processor(BatchSpanProcessor(OTLPSpanExporter()))
    trace.set_tracer_provider(provider)
    install(provider)
    global _flush
    _flush = provider.force_flush
    endpoint = os.environ.get("OTEL_EXPORTER_OTLP_TRACES_ENDPOINT") or os.environ.get(
        "OTEL_EXPORTER_OTLP_ENDPOINT"
    )
    log.info(
        "traces on: %s, exported over OTLP/gRPC to %s",
        provider.resource.attributes.get(SERVICE_NAME),
        endpoint,
    )
    return True


def flush(timeout_s: float = 5.0) -> None:
    """Sends the spans still held, waiting up to `timeout_s` (blocks: from async code, run it
    in a thread). For a process that may end without running atexit: uvicorn ends the gateway
    by raising the SIGTERM it caught again once it has shut down."""
    if _flush is not None:
        _flush(int(timeout_s * 1000))


def install(provider: trace.TracerProvider) -> None:
    """Turns the span helpers on, with `provider`'s tracer (setup_tracing, and tests)."""
    global _tracer
    _tracer = provider.get_tracer("semcache")


def uninstall() -> None:
    """Turns the span helpers off again (tests)."""
    global _tracer
    _tracer = None


def enabled() -> bool:
    return _tracer is not None


def tracer() -> trace.Tracer | None:
    """The tracer while tracing is on, else None."""
    return _tracer


def span(
    name: str, attributes: Attributes | None = None, *, kind: SpanKind = SpanKind.INTERNAL
) -> AbstractContextManager[Span | None]:
    """`with span(...) as s:` a span around the block, the current context within it (s is
    None while tracing is off). An exception leaving the block is recorded on it."""
    if _tracer is None:
        return _OFF
    return _tracer.start_as_current_span(name, kind=kind, attributes=attributes)


def async_span(
    name: str, attributes: Attributes | None = None, *, kind: SpanKind = SpanKind.INTERNAL
) -> AbstractAsyncContextManager[Span | None]:
    """`async with async_span(...) as s:` a span that never becomes the current context (for
    a block that yields, in an async generator); s is None while tracing is off."""
    if _tracer is None:
        return _OFF_ASYNC
    return _Detached(_tracer.start_span(name, kind=kind, attributes=attributes))


class _Detached:
    """A span ended when the block ends, never made current; sync or async."""

    def __init__(self, started: Span) -> None:
        self.span = started

    def __enter__(self) -> Span:
        return self.span

    def __exit__(
        self, kind: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        if isinstance(exc, Exception):  # not GeneratorExit: a consumer that stopped early
            self.span.record_exception(exc)
            self.span.set_status(Status(StatusCode.ERROR, f"{type(exc).__name__}: {exc}"))
        self.span.end()

    async def __aenter__(self) -> Span:
        return self.span

    async def __aexit__(
        self, kind: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        self.__exit__(kind, exc, tb)


# -- batches serving several requests (the embedder's batcher) ------------------------------


def caller() -> Span | None:
    """The span of the request being served, for a batch to link to (None while off)."""
    if _tracer is None:
        return None
    current = trace.get_current_span()
    return current if current.get_span_context().is_valid else None


def batch_span(
    name: str, callers: Iterable[Span | None], attributes: Attributes
) -> AbstractContextManager[Span | None]:
    """A span for one batch that serves several requests, each maybe of another trace: the
    root of its own trace, linked to each caller's span (`caller()`); each caller's span gets
    an event that names the batch span. `callers` is not read while tracing is off."""
    if _tracer is None:
        return _OFF
    return _Batch(_tracer, name, callers, attributes)


class _Batch:
    def __init__(
        self,
        tracer: trace.Tracer,
        name: str,
        callers: Iterable[Span | None],
        attributes: Attributes,
    ) -> None:
        distinct = {c.get_span_context().span_id: c for c in callers if c is not None}
        self.callers = list(distinct.values())
        self.name = name
        self.span = tracer.start_span(
            name,
            context=Context(),  # a root: the batch belongs to no one request's trace
            links=[Link(c.get_span_context()) for c in self.callers],
            attributes={**attributes, "semcache.batch.requests": len(self.callers)},
        )

    def __enter__(self) -> Span:
        return self.span

    def __exit__(
        self, kind: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        _Detached(self.span).__exit__(kind, exc, tb)
        ids = self.span.get_span_context()
        event: dict[str, AttributeValue] = {
            "semcache.batch.trace_id": trace.format_trace_id(ids.trace_id),
            "semcache.batch.span_id": trace.format_span_id(ids.span_id),
            "semcache.batch.requests": len(self.callers),
        }
        for served in self.callers:
            if served.is_recording():  # not ended (its request may have been cancelled)
                served.add_event(self.name, event)
