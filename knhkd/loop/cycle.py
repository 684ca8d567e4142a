"""One MAPE-K cycle as it travels analyzer → planner → executor, and the
scheduler that starts cycles on an interval and on demand.

Guarantees:
- A ``Cycle`` is created by the scheduler, enriched by each phase actor, and
  finished exactly once (``finish`` or ``fail``); whoever waits on it is woken
  either way. An error in a phase fails its cycle, never its actor.
- Interval cycles never overlap: the next interval starts when the previous
  cycle has finished. On-demand cycles queue behind it.

- Traces: each cycle is one trace, rooted at the ``knhk.mape_k.cycle`` span
  (started by the analyzer, ended exactly once with the cycle, ``outcome``
  completed or failed); every phase span is its child wherever the phase
  runs, and the cycle links to the ingest requests committed since the
  previous cycle (``BatchLinks``, the newest ``MAX_LINKS``) and to the request
  that asked for it.

Must never: drop a cycle without waking its waiter.
"""

from __future__ import annotations

import logging
import time
from collections import deque
from collections.abc import Awaitable, Callable, Iterable
from contextlib import AbstractContextManager
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Literal

import trio
from opentelemetry.trace import INVALID_SPAN, Span, SpanContext
from ulid import ULID

from knhkd.errors import KnhkdError
from knhkd.loop.writer import CommitFailed, WriterClosed
from knhkd.model import (
    CycleReport,
    DetectedPattern,
    Observation,
    ObservationCounts,
    Proposal,
)
from knhkd.telemetry import tracing

log = logging.getLogger(__name__)

Trigger = Literal["interval", "on_demand"]


class CycleFailed(KnhkdError):
    """A cycle could not complete; its decisions so far stay receipted (500,
    with the reason: the cycle's failure is the caller's news)."""

    problem = "cycle-failed"
    title = "Cycle failed"


@dataclass(eq=False)
class Cycle:
    trigger: Trigger
    # Who asked for it (``Principal.name``); "" for the scheduler's own.
    principal: str = ""
    id: str = field(default_factory=lambda: f"cyc-{ULID()}")
    started_ns: int = field(default_factory=time.time_ns)
    started_perf: float = field(default_factory=time.perf_counter)
    patterns: list[DetectedPattern] = field(default_factory=list)
    proposals: list[Proposal] = field(default_factory=list)
    receipt_ids: list[str] = field(default_factory=list)
    validations_passed: int = 0
    validations_failed: int = 0
    snapshots_promoted: int = 0
    done: trio.Event = field(default_factory=trio.Event)
    report: CycleReport | None = None
    error: Exception | None = None
    # The span of the request that asked for the cycle (linked, not parent:
    # a cycle is a trace of its own), and the cycle's root span.
    requested_by: SpanContext | None = field(default_factory=tracing.current_context)
    span: Span = INVALID_SPAN

    def begin_trace(self, links: list[SpanContext]) -> None:
        """Start the cycle's root span (the analyzer, when the cycle reaches it)."""
        if self.requested_by is not None:
            links = [self.requested_by, *links]
        self.span = tracing.start_span(
            "knhk.mape_k.cycle", {"knhk.mape_k.cycle_id": self.id}, root=True, links=links
        )

    def phase(
        self, phase: str, attributes: dict[str, tracing.AttributeValue] | None = None
    ) -> AbstractContextManager[Span]:
        """The span of one phase of this cycle, a child of the cycle's span."""
        attrs: dict[str, tracing.AttributeValue] = {
            "knhk.mape_k.cycle_id": self.id,
            "knhk.mape_k.phase": phase,
        }
        return tracing.child_span(self.span, f"knhk.mape_k.{phase}", attrs | (attributes or {}))

    def _end_trace(self, outcome: str, error: Exception | None = None) -> None:
        self.span.set_attribute("outcome", outcome)
        if error is not None:
            self.span.set_status(tracing.error_status(f"{type(error).__name__}: {error}"))
        self.span.end()

    def build_report(self, *, outcome: Literal["completed", "failed"], detail: str) -> CycleReport:
        now_ns = time.time_ns()
        return CycleReport(
            id=self.id,
            started_at=datetime.fromtimestamp(self.started_ns / 1e9, UTC),
            completed_at=datetime.fromtimestamp(now_ns / 1e9, UTC),
            duration_ms=round((time.perf_counter() - self.started_perf) * 1000.0, 3),
            patterns_detected=len(self.patterns),
            proposals_generated=len(self.proposals),
            validations_passed=self.validations_passed,
            validations_failed=self.validations_failed,
            snapshots_promoted=self.snapshots_promoted,
            outcome=outcome,
            receipt_ids=list(self.receipt_ids),
            trigger=self.trigger,
            detail=detail,
        )

    def finish(self, report: CycleReport) -> None:
        if not self.done.is_set():
            self.report = report
            self._end_trace(report.outcome)
            self.done.set()
            log.debug(
                "cycle %s (%s) %s in %.1f ms: %d patterns, %d proposals, %d passed, "
                "%d failed, %d promoted",
                report.id,
                report.trigger,
                report.outcome,
                report.duration_ms,
                report.patterns_detected,
                report.proposals_generated,
                report.validations_passed,
                report.validations_failed,
                report.snapshots_promoted,
            )

    def fail(self, error: Exception) -> None:
        if not self.done.is_set():
            self.error = error
            self._end_trace("failed", error)
            self.done.set()

    async def run_phase(self, step: Awaitable[None]) -> None:
        """Run one phase of this cycle; any failure fails the cycle, and only
        the cycle.

        A phase works on this cycle's inputs (its observations, patterns,
        proposals): an error in it is explained by them, so it ends the cycle
        (its waiter gets ``CycleFailed`` naming it) and the actor goes on with
        the next; a restart would meet the same inputs again. Store failures
        are supervised where they happen, at the writer.
        """
        try:
            await step
        except (CommitFailed, WriterClosed) as exc:
            self.fail(exc)
        except Exception as exc:
            log.exception("cycle %s failed: %s: %s", self.id, type(exc).__name__, exc)
            self.fail(exc)

    async def wait(self) -> CycleReport:
        await self.done.wait()
        if self.report is None:
            raise CycleFailed(f"cycle {self.id} failed: {self.error}")
        return self.report


async def each_cycle(
    inbox: trio.MemoryReceiveChannel[Cycle], phase: Callable[[Cycle], Awaitable[None]]
) -> None:
    """A phase actor's body: run ``phase`` on every cycle that arrives (a
    failure fails that cycle, see ``Cycle.run_phase``) until the inbox closes."""
    while True:
        try:
            cycle = await inbox.receive()
        except trio.EndOfChannel:
            return
        await cycle.run_phase(phase(cycle))


# Links per cycle span: OpenTelemetry's default limit is 128 links per span.
MAX_LINKS = 100


class BatchLinks:
    """Span contexts of the ingest requests committed since the last cycle
    took them; bounded, the oldest forgotten first."""

    def __init__(self) -> None:
        self._links: deque[SpanContext] = deque(maxlen=MAX_LINKS)

    def add(self, links: Iterable[SpanContext]) -> None:
        self._links.extend(links)

    def take(self) -> list[SpanContext]:
        out = list(self._links)
        self._links.clear()
        return out


# What the analyzer's inbox carries: committed observations (a ring batch as
# counts), or a cycle to run.
AnalyzerMessage = list[Observation] | ObservationCounts | Cycle


class CycleScheduler:
    def __init__(
        self,
        to_analyzer: trio.MemorySendChannel[AnalyzerMessage],
        interval_s: Callable[[], float],
    ) -> None:
        self._to_analyzer = to_analyzer
        self._interval_s = interval_s

    async def request(self, trigger: Trigger = "on_demand", *, principal: str = "") -> Cycle:
        cycle = Cycle(trigger=trigger, principal=principal)
        await self._to_analyzer.send(cycle)
        return cycle

    async def run(self) -> None:
        """Actor body: one cycle per interval, never overlapping."""
        while True:
            await trio.sleep(self._interval_s())
            cycle = await self.request("interval")
            try:
                await cycle.wait()
            except CycleFailed as exc:
                log.warning("%s", exc)
