"""knhkd.telemetry.tracing: setup is repeatable, spans nest, failures are marked.

Guarantees checked: with tracing off ``span()`` yields the invalid span and records
nothing; set up twice, only the newest provider receives spans; a span that an
``Exception`` leaves has ERROR status and the exception event; a span that trio
cancels is not marked as failed; child spans share the parent's trace.
"""

from __future__ import annotations

from collections.abc import Iterator

import pytest
import trio
from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter
from opentelemetry.trace import INVALID_SPAN, StatusCode

from knhkd.config import TelemetryConfig
from knhkd.telemetry import tracing


@pytest.fixture(autouse=True)
def _reset() -> Iterator[None]:
    yield
    tracing.shutdown_tracing()


def test_off_by_default_records_nothing() -> None:
    tracing.setup_tracing(TelemetryConfig())
    with tracing.span("knhk.store.commit", {"knhk.store.records": 1}) as s:
        assert s is INVALID_SPAN
        assert not s.is_recording()


def test_setup_twice_uses_the_newest_provider() -> None:
    first, second = InMemorySpanExporter(), InMemorySpanExporter()
    tracing.setup_tracing(TelemetryConfig(service_name="one"), exporter=first)
    tracing.setup_tracing(TelemetryConfig(service_name="two"), exporter=second)
    with tracing.span("knhk.receipt.generate", kind="cycle_completed", outcome="approved"):
        pass
    assert first.get_finished_spans() == ()
    (done,) = second.get_finished_spans()
    assert done.name == "knhk.receipt.generate"
    assert dict(done.attributes or {}) == {"kind": "cycle_completed", "outcome": "approved"}
    assert done.resource.attributes["service.name"] == "two"


def test_exception_marks_the_span() -> None:
    exp = InMemorySpanExporter()
    tracing.setup_tracing(TelemetryConfig(), exporter=exp)
    with pytest.raises(ValueError, match="boom"), tracing.span("knhk.guard.validate"):
        raise ValueError("boom")
    (done,) = exp.get_finished_spans()
    assert done.status.status_code is StatusCode.ERROR
    assert [e.name for e in done.events] == ["exception"]


def test_nesting_and_cancellation_under_trio() -> None:
    exp = InMemorySpanExporter()
    tracing.setup_tracing(TelemetryConfig(), exporter=exp)

    async def main() -> None:
        with (
            tracing.span("knhk.mape_k.cycle", {"knhk.mape_k.cycle_id": "c1"}),
            trio.move_on_after(0.01),
            tracing.span("knhk.mape_k.monitor"),
        ):
            await trio.sleep(10)

    trio.run(main)
    child, parent = exp.get_finished_spans()
    assert (child.name, parent.name) == ("knhk.mape_k.monitor", "knhk.mape_k.cycle")
    assert child.parent is not None and child.parent.span_id == parent.context.span_id
    assert child.context.trace_id == parent.context.trace_id
    assert child.status.status_code is StatusCode.UNSET


def test_tracer_is_usable_when_off() -> None:
    tracing.setup_tracing(TelemetryConfig())
    with tracing.tracer().start_as_current_span("x") as s:
        assert not s.is_recording()


def test_a_full_queue_drops_and_counts_without_waiting() -> None:
    """An exporter that never returns (a hung collector): the bound admits
    ``queue_size`` spans (queued or being exported), drops every further one at
    once and counts it."""
    import threading

    from opentelemetry.sdk.trace import TracerProvider
    from opentelemetry.sdk.trace.export import SpanExporter, SpanExportResult

    release = threading.Event()

    class Hung(SpanExporter):
        def export(self, spans: object) -> SpanExportResult:
            release.wait(10)
            return SpanExportResult.SUCCESS

    dropped: list[int] = []
    provider = TracerProvider(shutdown_on_exit=False)
    provider.add_span_processor(tracing._Bounded(Hung(), 4, dropped.append))
    t = provider.get_tracer("test")
    for _ in range(20):
        t.start_span("knhk.store.commit").end()
    assert sum(dropped) == 16
    release.set()
    provider.shutdown()
