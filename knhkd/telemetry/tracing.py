"""OpenTelemetry tracing of knhkd, behind three functions.

Guarantees:
- ``setup_tracing(cfg)`` installs a ``TracerProvider`` whose resource names the
  service (``cfg.service_name``, plus ``cfg.resource_attributes``); with
  ``traces = "console"`` finished spans are written one JSON object per line to
  stdout, with ``traces = "otlp"`` they are POSTed as OTLP/HTTP protobuf to
  ``cfg.otlp_endpoint``; either way by a background batch thread, so a span
  never blocks the trio thread on I/O.
- The queue in front of that thread is bounded (``cfg.queue_size`` spans, those
  being exported included): when it is full a finished span is dropped at once
  and counted through ``on_drop`` — a collector that is down or never answers
  costs the caller one lock and one comparison per span, never a wait; and
  stopping waits at most ``SHUTDOWN_FLUSH_S`` for it.
- W3C Trace Context (``traceparent``/``tracestate``) is what ``extract``
  understands: a request's span continues its caller's trace.
- With ``traces = "none"`` (the default) no provider, exporter or thread exists and
  ``span()`` costs well under a microsecond: it returns the invalid span without
  entering OpenTelemetry at all.
- ``setup_tracing`` may be called any number of times (tests, reload): the previous
  provider is flushed and shut down before the new one takes over.
- Span names and attribute keys are the ones declared in ``registry/spans.yaml``.
- An exception (``Exception``) leaving a span is recorded on it and sets its status
  to ERROR; cancellation (``trio.Cancelled``, ``KeyboardInterrupt``, other
  ``BaseException``) ends the span without marking it failed, because being
  cancelled is how trio stops work, not a fault.

Must never: block a caller on the exporter, or log the exporter's headers (they
may hold a collector's credentials). Must never install OpenTelemetry's global
``TracerProvider``. It can be set only
once per process, which would make setup unrepeatable; knhkd uses no third-party
instrumentation that would read it, so the one provider lives in this module
(the only state it keeps) and is reached through ``tracer()`` and ``span()``.
"""

from __future__ import annotations

import threading
from collections.abc import Callable, Iterator, Mapping, Sequence
from contextlib import AbstractContextManager, contextmanager
from types import TracebackType
from typing import TypeVar

from opentelemetry import context as otel_context
from opentelemetry import trace
from opentelemetry.context import Context
from opentelemetry.exporter.otlp.proto.http.trace_exporter import OTLPSpanExporter
from opentelemetry.sdk.resources import SERVICE_NAME, SERVICE_VERSION, Resource
from opentelemetry.sdk.trace import ReadableSpan, SpanProcessor, TracerProvider
from opentelemetry.sdk.trace.export import (
    BatchSpanProcessor,
    ConsoleSpanExporter,
    SimpleSpanProcessor,
    SpanExporter,
    SpanExportResult,
)
from opentelemetry.trace import INVALID_SPAN, Link, Span, SpanContext, Status, StatusCode
from opentelemetry.trace.propagation.tracecontext import TraceContextTextMapPropagator
from opentelemetry.util.types import AttributeValue

from knhkd import __version__
from knhkd.config import TelemetryConfig

__all__ = [
    "SERVER",
    "TRACER_NAME",
    "AttributeValue",
    "annotate",
    "bind_current",
    "child_span",
    "current_context",
    "enabled",
    "error_status",
    "extract",
    "linked_span",
    "setup_tracing",
    "shutdown_tracing",
    "span",
    "start_span",
    "tracer",
    "use_span",
]

T = TypeVar("T")

SERVER = trace.SpanKind.SERVER


def error_status(description: str) -> Status:
    return Status(StatusCode.ERROR, description)


def annotate(attributes: Mapping[str, AttributeValue]) -> None:
    """Set attributes on the current span (nothing when tracing is off)."""
    if _current.tracer is not None:
        trace.get_current_span().set_attributes(attributes)

TRACER_NAME = "knhkd"

_NOOP_TRACER = trace.NoOpTracer()


class _Tracing:
    """The provider in use and its tracer; both None when tracing is off."""

    provider: TracerProvider | None = None
    tracer: trace.Tracer | None = None


_current = _Tracing()


def _one_line(span: ReadableSpan) -> str:
    # One line per span: journald and `grep` see one record per span.
    text: str = span.to_json(indent=None)
    return text + "\n"


class _Releasing(SpanExporter):
    """The real exporter; tells the bound how many spans left the queue."""

    def __init__(self, inner: SpanExporter, release: Callable[[int], None]) -> None:
        self._inner = inner
        self._release = release

    def export(self, spans: Sequence[ReadableSpan]) -> SpanExportResult:
        try:
            return self._inner.export(spans)
        finally:
            self._release(len(spans))

    def shutdown(self) -> None:
        self._inner.shutdown()

    def force_flush(self, timeout_millis: int = 30000) -> bool:
        return self._inner.force_flush(timeout_millis)


class _Bounded(SpanProcessor):
    """OpenTelemetry's ``BatchSpanProcessor`` behind a counted bound.

    The SDK's own queue drops silently (a warning per span, no count); here a
    span is admitted only while fewer than ``limit`` are queued or being
    exported, so the SDK queue (of the same size) never overflows and every
    span refused is counted once through ``on_drop``.
    """

    def __init__(
        self, exporter: SpanExporter, limit: int, on_drop: Callable[[int], None]
    ) -> None:
        self._lock = threading.Lock()
        self._pending = 0
        self._limit = limit
        self._on_drop = on_drop
        self._batch = BatchSpanProcessor(
            _Releasing(exporter, self._release),
            max_queue_size=limit,
            max_export_batch_size=min(512, limit),
        )

    def _release(self, n: int) -> None:
        with self._lock:
            self._pending -= n

    def on_start(self, span: trace.Span, parent_context: Context | None = None) -> None:
        return None

    def on_end(self, span: ReadableSpan) -> None:
        if span.context is None or not span.context.trace_flags.sampled:
            return
        with self._lock:
            admitted = self._pending < self._limit
            if admitted:
                self._pending += 1
        if admitted:
            self._batch.on_end(span)
        else:
            self._on_drop(1)

    def shutdown(self) -> None:
        self._batch.shutdown()  # type: ignore[no-untyped-call]

    def force_flush(self, timeout_millis: int = 30000) -> bool:
        return self._batch.force_flush(timeout_millis)


def _exporter(cfg: TelemetryConfig) -> SpanExporter | None:
    if cfg.traces == "console":
        return ConsoleSpanExporter(formatter=_one_line)
    if cfg.traces == "otlp":
        # Everything given explicitly: the exporter would otherwise read OTEL_*
        # itself, and config.otel_env has already folded those in with their
        # documented precedence.
        return OTLPSpanExporter(
            endpoint=cfg.otlp_endpoint,
            headers=dict(cfg.otlp_headers),
            timeout=cfg.otlp_timeout_s,
        )
    return None


def _ignore(n: int) -> None:
    return None


def setup_tracing(
    cfg: TelemetryConfig,
    *,
    exporter: SpanExporter | None = None,
    on_drop: Callable[[int], None] = _ignore,
) -> None:
    """Install the tracing ``cfg`` asks for, replacing any earlier setup.

    ``exporter`` (tests) additionally receives every finished span synchronously,
    and turns tracing on even when ``cfg.traces`` is "none". ``on_drop(n)`` is
    called (from any thread) for spans dropped because the queue was full.
    """
    shutdown_tracing()
    if cfg.traces == "none" and exporter is None:
        return
    resource = Resource.create(
        {
            **cfg.resource_attributes,
            SERVICE_NAME: cfg.service_name,
            SERVICE_VERSION: __version__,
        }
    )
    # shutdown_on_exit=False: an atexit hook per provider would keep every
    # replaced provider alive; the daemon calls shutdown_tracing() on its way out.
    provider = TracerProvider(resource=resource, shutdown_on_exit=False)
    out = _exporter(cfg)
    if out is not None:
        provider.add_span_processor(_Bounded(out, cfg.queue_size, on_drop))
    if exporter is not None:
        provider.add_span_processor(SimpleSpanProcessor(exporter))
    _current.provider = provider
    _current.tracer = provider.get_tracer(TRACER_NAME, __version__)


# The longest stopping waits for queued spans to reach the collector: the
# SDK's own shutdown waits up to 30 s on an export in flight, which a hung
# collector would add to every stop (and systemd's stop timeout).
SHUTDOWN_FLUSH_S = 5.0


def shutdown_tracing() -> None:
    """Flush and stop the current provider, if any, waiting at most
    ``SHUTDOWN_FLUSH_S`` (the spans still queued then are lost); tracing is off
    afterwards."""
    provider = _current.provider
    _current.provider = None
    _current.tracer = None
    if provider is not None:
        # The exporter threads are daemon threads: one still blocked on a
        # collector that never answers does not hold the process up.
        stopping = threading.Thread(target=provider.shutdown, name="otel-shutdown", daemon=True)
        stopping.start()
        stopping.join(SHUTDOWN_FLUSH_S)


def tracer() -> trace.Tracer:
    """The knhkd tracer; a no-op tracer when tracing is off."""
    return _current.tracer or _NOOP_TRACER


class _Off:
    """The span of tracing-off: enters nothing, costs one call."""

    __slots__ = ()

    def __enter__(self) -> Span:
        return INVALID_SPAN

    def __exit__(self, *exc: object) -> None:
        return None


_OFF = _Off()


class _On:
    """A live span, current for the block; records ``Exception``s, not cancellation."""

    __slots__ = ("_cm", "_span")

    def __init__(
        self,
        t: trace.Tracer,
        name: str,
        attrs: Mapping[str, AttributeValue],
        context: Context | None = None,
        links: Sequence[SpanContext] = (),
    ) -> None:
        self._cm = t.start_as_current_span(
            name,
            context=context,
            links=[Link(c) for c in links],
            attributes=attrs,
            record_exception=False,
            set_status_on_exception=False,
        )

    def __enter__(self) -> Span:
        self._span = self._cm.__enter__()
        return self._span

    def __exit__(
        self,
        typ: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        if isinstance(exc, Exception):
            self._span.record_exception(exc)
            self._span.set_status(Status(StatusCode.ERROR, f"{type(exc).__name__}: {exc}"))
        self._cm.__exit__(typ, exc, tb)


def span(
    name: str,
    attributes: Mapping[str, AttributeValue] | None = None,
    /,
    **more: AttributeValue,
) -> AbstractContextManager[Span]:
    """A context manager running its block in a span named ``name``.

    Dotted attribute keys (``observation.id``) go in ``attributes``; plain ones may
    be given as keywords (``span("knhk.receipt.generate", kind=k, sector=s)``).
    With tracing off it returns a shared object that does nothing: not even
    OpenTelemetry's no-op tracer, whose context attach/detach costs ~10 µs here.
    """
    t = _current.tracer
    if t is None:
        return _OFF
    return _On(t, name, {**attributes, **more} if attributes else more)


def enabled() -> bool:
    """Whether spans are recorded at all (callers skip building links when not)."""
    return _current.tracer is not None


def current_context() -> SpanContext | None:
    """The current span's context, to link to later; None when tracing is off or
    no span is current."""
    if _current.tracer is None:
        return None
    ctx = trace.get_current_span().get_span_context()
    return ctx if ctx.is_valid else None


def extract(headers: Mapping[str, str]) -> Context | None:
    """The caller's trace from W3C ``traceparent``/``tracestate`` headers (keys
    lower-case); None when tracing is off or the headers carry none."""
    if _current.tracer is None or "traceparent" not in headers:
        return None
    return TraceContextTextMapPropagator().extract(headers)


def start_span(
    name: str,
    attributes: Mapping[str, AttributeValue] | None = None,
    *,
    parent: Context | Span | None = None,
    links: Sequence[SpanContext] = (),
    root: bool = False,
    kind: trace.SpanKind = trace.SpanKind.INTERNAL,
    start_time: int | None = None,
) -> Span:
    """A span the caller ends (``span.end()``), not made current: one that
    outlives a block, such as a MAPE-K cycle crossing three actors. ``root``
    starts a new trace whatever is current; ``links`` name spans of other
    traces it follows from."""
    t = _current.tracer
    if t is None:
        return INVALID_SPAN
    if isinstance(parent, Span):
        ctx: Context | None = trace.set_span_in_context(parent)
    elif root:
        ctx = Context()
    else:
        ctx = parent
    return t.start_span(
        name,
        context=ctx,
        kind=kind,
        attributes=attributes,
        links=[Link(c) for c in links],
        start_time=start_time,
        record_exception=False,
        set_status_on_exception=False,
    )


@contextmanager
def use_span(s: Span) -> Iterator[Span]:
    """Make ``s`` current for the block, without ending it; an ``Exception``
    leaving the block is recorded on it."""
    if s is INVALID_SPAN:
        yield s
        return
    token = otel_context.attach(trace.set_span_in_context(s))
    try:
        yield s
    except Exception as exc:
        s.record_exception(exc)
        s.set_status(Status(StatusCode.ERROR, f"{type(exc).__name__}: {exc}"))
        raise
    finally:
        otel_context.detach(token)


def child_span(
    parent: Span, name: str, attributes: Mapping[str, AttributeValue] | None = None
) -> AbstractContextManager[Span]:
    """A span for the block, child of ``parent`` (not of whatever is current)
    and current inside the block."""
    t = _current.tracer
    if t is None:
        return _OFF
    return _On(t, name, attributes or {}, trace.set_span_in_context(parent))


A = TypeVar("A")


def bind_current(fn: Callable[[A], T]) -> Callable[[A], T]:
    """``fn`` made to run in the caller's current context wherever it is later
    called (the writer's thread); ``fn`` itself when tracing is off."""
    if _current.tracer is None:
        return fn
    ctx = otel_context.get_current()

    def bound(arg: A) -> T:
        token = otel_context.attach(ctx)
        try:
            return fn(arg)
        finally:
            otel_context.detach(token)

    return bound


def linked_span(
    name: str, attributes: Mapping[str, AttributeValue], links: Sequence[SpanContext]
) -> AbstractContextManager[Span]:
    """A span for the block, current inside it, linked to ``links`` (the
    spans of other traces it serves, such as the requests a commit groups)."""
    t = _current.tracer
    if t is None:
        return _OFF
    return _On(t, name, attributes, links=links)
