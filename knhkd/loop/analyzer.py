"""The analyzer actor: committed observations in, patterns out.

Guarantees:
- Detector windows are rebuilt from the store when the actor (re)starts, and
  observations already counted are never counted twice (sequence floor).
- On a cycle, the detectors are evaluated once; every pattern is stored with a
  ``pattern_detected`` receipt in one transaction before the cycle moves on.
- A stored observation that cannot be decoded (damaged on disk) is skipped
  when windows are rebuilt: counted in
  ``knhk_store_records_unreadable{table="observations"}`` and logged once per
  rebuild with its sequence number, never a crash loop of the actor.

Must never: block the event loop on storage beyond a short read transaction.
"""

from __future__ import annotations

import logging
import time

import lmdb
import msgspec
import trio

from knhkd.analyze.detectors import Detectors
from knhkd.loop.context import LoopContext
from knhkd.loop.cycle import AnalyzerMessage, BatchLinks, Cycle
from knhkd.model import (
    Alert,
    DetectedPattern,
    EnforceInvariant,
    Observation,
    ObservationCounts,
    Outcome,
    ProposeChange,
    SignedReceipt,
)
from knhkd.receipts import canonical
from knhkd.receipts.log import Draft, ReceiptLog
from knhkd.store.env import Store
from knhkd.store.writer import Job

log = logging.getLogger(__name__)


def _outcome(pattern: DetectedPattern) -> Outcome:
    action = pattern.recommended_action
    if isinstance(action, ProposeChange):
        return Outcome("pending", "plan")
    if isinstance(action, Alert):
        return Outcome("approved", f"alert:{action.severity}")
    if isinstance(action, EnforceInvariant):
        return Outcome("approved", f"enforce:{action.invariant}")
    return Outcome("approved", "observe")


def store_patterns_job(
    store: Store, receipts: ReceiptLog, patterns: list[DetectedPattern]
) -> Job[list[SignedReceipt]]:
    def job(txn: lmdb.Transaction) -> list[SignedReceipt]:
        out = []
        for p in patterns:
            store.tables.patterns.add(txn, p)
            out.append(
                receipts.append(
                    txn,
                    Draft(
                        kind="pattern_detected",
                        outcome=_outcome(p),
                        subject_ids=[p.id],
                        sector=p.sector or "",
                        inputs={
                            "name": p.name,
                            "confidence": f"{p.confidence:.6f}",
                            "evidence_count": str(p.evidence_count),
                        },
                    ),
                )
            )
        return out

    return job


class Analyzer:
    def __init__(
        self,
        ctx: LoopContext,
        inbox: trio.MemoryReceiveChannel[AnalyzerMessage],
        to_planner: trio.MemorySendChannel[Cycle],
        links: BatchLinks | None = None,
    ) -> None:
        self._links = BatchLinks() if links is None else links
        self._ctx = ctx
        self._inbox = inbox
        self._to_planner = to_planner
        self.detectors: Detectors | None = None

    def _rebuild(self) -> tuple[Detectors, int]:
        cfg = self._ctx.config().analyze
        now = time.time_ns()
        horizon = now - int(
            max(cfg.high_frequency.window_s, cfg.error_spike.window_s, cfg.schema_drift.window_s)
            * 1e9
        )
        recent: list[Observation] = []
        floor = -1
        unreadable: list[int] = []
        table = self._ctx.store.tables.observations
        with self._ctx.store.reader() as txn:
            for seq, raw in table.items_reversed_raw(txn):
                if floor < 0:
                    floor = seq  # the newest stored: counted here, never again
                try:
                    obs = table.decode(raw)
                except (msgspec.DecodeError, msgspec.ValidationError):
                    unreadable.append(seq)
                    continue
                if obs.ingested_at_ns < horizon:
                    break
                recent.append(obs)
        if unreadable:
            self._ctx.metrics.records_unreadable.labels("observations").inc(len(unreadable))
            log.error(
                "analyzer: %d stored observation(s) cannot be decoded and are skipped "
                "(seq %s); run knhkctl fsck",
                len(unreadable),
                ", ".join(map(str, unreadable[:10])) + (" ..." if len(unreadable) > 10 else ""),
            )
        recent.reverse()
        last_seen = recent[-1].ingested_at_ns if recent else now
        detectors = Detectors(cfg, self._ctx.knowledge().schema, start_ns=last_seen)
        if recent:
            detectors.observe(recent)
        return detectors, floor

    async def run(self) -> None:
        # Off the event loop: with many observations in the windows (every one
        # of a burst just stored) reading them back takes seconds, and the
        # daemon serves meanwhile; what is committed in between waits in the
        # inbox and is counted once (the floor).
        detectors, floor = await trio.to_thread.run_sync(self._rebuild)
        self.detectors = detectors
        while True:
            try:
                msg = await self._inbox.receive()
            except trio.EndOfChannel:
                return
            if isinstance(msg, Cycle):
                await msg.run_phase(self._analyze(detectors, msg))
                continue
            if isinstance(msg, ObservationCounts):
                # A commit is all above the floor or all below it.
                if msg.first_seq > floor:
                    detectors.observe_counts(msg)
                continue
            fresh = [o for o in msg if o.seq > floor]
            if fresh:
                detectors.observe(fresh)

    async def _analyze(self, detectors: Detectors, cycle: Cycle) -> None:
        # The observations this cycle sees were fed to the detectors as they
        # were committed: Monitor's span marks that hand-over and carries the
        # links to the requests that committed them (on the cycle's span).
        cycle.begin_trace(self._links.take())
        with cycle.phase("monitor"):
            pass
        with cycle.phase("analyze") as phase_span:
            started = time.perf_counter()
            detectors.set_schema(self._ctx.knowledge().schema)
            patterns = detectors.evaluate(time.time_ns())
            self._ctx.metrics.pattern_detection_duration_seconds.observe(
                time.perf_counter() - started
            )
            if patterns:
                top = max(patterns, key=lambda p: p.confidence)
                phase_span.set_attributes(
                    {
                        "pattern.name": top.name,
                        "pattern.type": top.kind,
                        "pattern.confidence": top.confidence,
                        "pattern.evidence_count": top.evidence_count,
                    }
                )
                signed = await self._ctx.writer.submit(
                    store_patterns_job(self._ctx.store, self._ctx.receipts, patterns)
                )
                cycle.receipt_ids.extend(canonical.receipt_id(r.body.seq) for r in signed)
                self._ctx.metrics.receipts_appended.labels("pattern_detected").inc(len(signed))
                for p in patterns:
                    self._ctx.metrics.patterns_detected.labels(p.kind).inc()
                    self._ctx.metrics.pattern_confidence.labels(p.kind).set(p.confidence)
        cycle.patterns = patterns
        await self._to_planner.send(cycle)
