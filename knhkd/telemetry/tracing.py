"""OpenTelemetry tracing of knhkd, behind three functions.

Guarantees:
- ``setup_tracing(cfg)`` installs a ``TracerProvider`` whose resource names the
  service (``cfg.service_name``); with ``traces = "console"`` finished spans are
  written one JSON object per line to stdout by a background batch thread, so a
  span never blocks the trio thread on I/O.
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

Must never: install OpenTelemetry's global ``TracerProvider``. It can be set only
once per process, which would make setup unrepeatable; knhkd uses no third-party
instrumentation that would read it, so the one provider lives in this module
(the only state it keeps) and is reached through ``tracer()`` and ``span()``.
"""

from __future__ import annotations

from collections.abc import Mapping
from contextlib import AbstractContextManager
from types import TracebackType

from opentelemetry import trace
from opentelemetry.sdk.resources import SERVICE_NAME, SERVICE_VERSION, Resource
from opentelemetry.sdk.trace import ReadableSpan, TracerProvider
from opentelemetry.sdk.trace.export import (
    BatchSpanProcessor,
    ConsoleSpanExporter,
    SimpleSpanProcessor,
    SpanExporter,
)
from opentelemetry.trace import INVALID_SPAN, Span, Status, StatusCode
from opentelemetry.util.types import AttributeValue

from knhkd import __version__
from knhkd.config import TelemetryConfig

__all__ = ["TRACER_NAME", "setup_tracing", "shutdown_tracing", "span", "tracer"]

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


def setup_tracing(cfg: TelemetryConfig, *, exporter: SpanExporter | None = None) -> None:
    """Install the tracing ``cfg`` asks for, replacing any earlier setup.

    ``exporter`` (tests) additionally receives every finished span synchronously,
    and turns tracing on even when ``cfg.traces`` is "none".
    """
    shutdown_tracing()
    if cfg.traces == "none" and exporter is None:
        return
    resource = Resource.create({SERVICE_NAME: cfg.service_name, SERVICE_VERSION: __version__})
    # shutdown_on_exit=False: an atexit hook per provider would keep every
    # replaced provider alive; the daemon calls shutdown_tracing() on its way out.
    provider = TracerProvider(resource=resource, shutdown_on_exit=False)
    if cfg.traces == "console":
        provider.add_span_processor(BatchSpanProcessor(ConsoleSpanExporter(formatter=_one_line)))
    if exporter is not None:
        provider.add_span_processor(SimpleSpanProcessor(exporter))
    _current.provider = provider
    _current.tracer = provider.get_tracer(TRACER_NAME, __version__)


def shutdown_tracing() -> None:
    """Flush and stop the current provider, if any; tracing is off afterwards."""
    provider = _current.provider
    _current.provider = None
    _current.tracer = None
    if provider is not None:
        provider.shutdown()


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

    def __init__(self, t: trace.Tracer, name: str, attrs: Mapping[str, AttributeValue]) -> None:
        self._cm = t.start_as_current_span(
            name, attributes=attrs, record_exception=False, set_status_on_exception=False
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
