"""The ring drain actor: what producers append to the shared-memory ring
becomes durable observations, each exactly once.

Guarantees:
- Records are drained in batches (``[ring] drain_batch``), validated in C
  (hotpath/codec.py), checked against their sector's SHACL shapes when
  ``[ingest] shacl`` is on (the gate HTTP ingest uses, monitor/shapes.py), and
  committed through the ingest actor, which encodes them in C in its
  transaction: ids, storage, receipts and the analyzer feed are those of HTTP
  ingest.
- The ring position after a batch (``model.RingCursor``) is written in the LMDB
  transaction that commits the batch; the ring's durable cursor is advanced
  only after that commit returns. On every (re)start the drain resumes from the
  stored position. So a crash anywhere neither loses a record (nothing below
  the durable cursor is uncommitted, nothing above it was overwritten) nor
  stores one twice (the stored position moved with the records).
- A record that fails validation is never stored: it is counted
  (``knhk_ingest_rejected{reason="ring_invalid"}``, or ``ring_shacl`` for a
  shape violation, which the gate also counts by sector), logged (at most once
  per ``_LOG_EVERY_S`` with a count), and its position commits with its batch
  so it is not read again. A record has no request to fail with it: each is
  accepted or refused alone. Slots a producer corrupted are skipped by the C
  consumer and counted as ``ring_corrupt``.
- A batch the ingest actor could not store for a reason of its records
  (``Unstorable``: they passed the C checks yet the encoder or the job
  refused them) is quarantined, never retried into a crash loop: its records
  are refused and counted (``knhk_ingest_rejected{reason="ring_quarantined"}``),
  logged once with their lanes and positions, and the batch commits again
  empty, carrying its cursor, so the drain moves past them. A stored cursor
  that cannot be decoded is reported and the drain resumes from the ring's
  durable cursors.
- Reading is one batch ahead of committing: while the ingest actor commits a
  batch, the next is read and checked; commits, the stored positions and the
  durable cursor advance strictly in order.
- A slow store is back-pressure, not loss: the drain waits for the ingest queue
  and the commit; meanwhile lanes fill and producers are refused (counted as
  ``knhk_ring_full_rejections_total``). So is a store that refuses writes
  (storage full, loop/write_gate.py): the batch in hand is offered again every
  ``_REFUSED_RETRY_S`` until it commits, nothing more is drained meanwhile,
  and producers get ``KNHK_EFULL`` once their lane fills.
- The event loop is not blocked: an empty ring is polled with sleeps that
  double while it stays empty (``poll_interval_s`` to ``idle_poll_max_s``),
  validation is C (~10 ns a record), encoding and commits run on the writer
  thread, the tick-rate calibration on a worker thread.

Must never: advance the durable cursor before the commit that holds the
records; use a stored cursor that belongs to another ring file.
"""

from __future__ import annotations

import logging
import math
import time
from collections import deque
from collections.abc import Callable

import msgspec
import trio

from knhkd.config import Config
from knhkd.errors import ReadOnly, StorageFull
from knhkd.hotpath import tsc
from knhkd.hotpath.codec import RingBatch, RingCodec
from knhkd.hotpath.ring import OP_APPEND, OP_SNAPSHOT_READ, Consumer, Drained, ticks_source
from knhkd.loop.figures import Figures
from knhkd.loop.ingest import Closed, Ingest, Unstorable
from knhkd.loop.shapes_gate import ShapesGate
from knhkd.loop.writer import WriterClosed
from knhkd.model import RingCursor
from knhkd.monitor.shapes import ShaclRejected
from knhkd.store.env import Store
from knhkd.telemetry.metrics import Metrics

log = logging.getLogger(__name__)

_STATS_EVERY_S = 1.0
_CLOCK_REFRESH_S = 60.0  # bounds TSC-vs-wall-clock drift in event_time
_LOG_EVERY_S = 10.0
_REFUSED_RETRY_S = 1.0
# A sample of fewer records is dominated by the timer's own resolution (~25 ticks).
_MIN_TIMED_RECORDS = 16


def read_cursor(store: Store) -> RingCursor | None:
    with store.reader() as txn:
        return store.tables.ring_cursor.get(txn)


def _span(before: list[int], after: list[int]) -> str:
    """Which positions of which lanes a batch covers, for a log line."""
    return ", ".join(
        f"lane {lane} seq {a}..{b - 1}"
        for lane, (a, b) in enumerate(zip(before, after, strict=False))
        if b > a
    )


class RingDrain:
    def __init__(
        self,
        config: Callable[[], Config],
        consumer: Consumer,
        store: Store,
        ingest: Ingest,
        metrics: Metrics,
        shacl_gate: Callable[[], ShapesGate | None] = lambda: None,
        figures: Figures | None = None,
    ) -> None:
        self._figures = figures
        self._config = config
        self._shacl_gate = shacl_gate
        self._consumer = consumer
        self._store = store
        self._ingest = ingest
        self._metrics = metrics
        self.rate: tsc.TickRate | None = None
        # Counters in the ring are cumulative; these are what was exported.
        self._full_exported = 0
        self._corrupt_exported = 0
        self._rejected_unlogged = 0
        self._last_log = -math.inf
        self._stale_logged = False
        self.committed_records = 0
        # Ticks per record of recent batch-append samples timed over at least
        # _MIN_TIMED_RECORDS records: above the counter's resolution, unlike a
        # single append's (see append_ticks_p99).
        self.recent_append_ticks: deque[float] = deque(maxlen=1024)

    # ------------------------------------------------------------------ #
    # Where to resume
    # ------------------------------------------------------------------ #

    def resume_positions(self) -> list[int]:
        """Per lane, where draining resumes: the stored cursor, reconciled with the ring."""
        c = self._consumer
        stats = c.lane_stats()
        durable = [s.durable for s in stats]
        try:
            stored = read_cursor(self._store)
        except (msgspec.DecodeError, msgspec.ValidationError) as exc:
            # Damaged, not ours to guess: the ring's durable cursors are what
            # producers were told is safe.
            self._metrics.records_unreadable.labels("ring_cursor").inc()
            log.error(
                "ring %s: the stored resume cursor cannot be decoded (%s); resuming at the "
                "ring's durable cursors",
                c.path,
                exc,
            )
            return durable
        if stored is None:
            log.info("ring %s: first drain, from each lane's durable cursor", c.path)
            return durable
        if stored.ring_id != c.ring_id:
            log.warning(
                "ring %s (id %016x) is not the ring drained before (id %016x): it was "
                "created anew (tmpfs is cleared at boot); records of the old ring that were "
                "not yet durable went with it. Draining the new ring from its durable cursors",
                c.path,
                c.ring_id,
                stored.ring_id,
            )
            return durable
        if len(stored.next_seq) != len(stats):
            log.error(
                "ring %s: stored cursor has %d lanes, the ring %d; resuming at the ring's "
                "durable cursors",
                c.path,
                len(stored.next_seq),
                len(stats),
            )
            return durable
        out: list[int] = []
        for s, stored_next in zip(stats, stored.next_seq, strict=True):
            want = stored_next
            if want < s.durable:
                # Producers may have reused those slots: they cannot be read again.
                log.error(
                    "ring %s lane %d: the store resumes at %d but the ring is durable up to %d "
                    "(store restored from an older copy?); records %d..%d are not re-ingested",
                    c.path, s.lane, want, s.durable, want, s.durable - 1,
                )  # fmt: skip
                want = s.durable
            elif want > s.head:
                log.error(
                    "ring %s lane %d: the store resumes at %d, past the ring's head %d "
                    "(ring file replaced by an older copy?); resuming at the head",
                    c.path, s.lane, want, s.head,
                )  # fmt: skip
                want = s.head
            out.append(want)
        return out

    # ------------------------------------------------------------------ #
    # The actor
    # ------------------------------------------------------------------ #

    async def run(self) -> None:
        if self.rate is None:
            override = self._config().ring.tsc_hz
            self.rate = await trio.to_thread.run_sync(tsc.detect, override)
            self._consumer.set_tsc_hz(self.rate.hz)
            log.info(
                "ring %s: %d lanes x %d records; ticks: %s at %.3f MHz (%s)",
                self._consumer.path,
                self._consumer.lanes,
                self._consumer.capacity,
                ticks_source(),
                self.rate.hz / 1e6,
                self.rate.how,
            )
        committed = self.resume_positions()
        # Read cursor and durable cursor both restart here (an earlier run of
        # this actor may have read past what it committed).
        self._consumer.begin(committed)
        # One batch commits (on the writer thread) while the next is read and
        # checked here: the commit's C encoding, page writes and fsync release
        # the GIL. Commits stay in order (one ingest actor, one queue).
        send, recv = trio.open_memory_channel[tuple[RingBatch, list[int], list[int]]](0)
        async with trio.open_nursery() as nursery:
            nursery.start_soon(self._commit_in_order, recv, nursery.cancel_scope)
            async with send:
                await self._read(send, committed)

    async def _read(
        self,
        send: trio.MemorySendChannel[tuple[RingBatch, list[int], list[int]]],
        position: list[int],
    ) -> None:
        assert self.rate is not None
        clock = tsc.TickClock(self.rate)
        codec: RingCodec | None = None
        next_stats = -math.inf
        active = False  # records drained since the statistics were last exported
        idle_sleep = 0.0  # grows while the ring stays empty: an idle daemon stays idle
        while True:
            cfg = self._config().ring
            if codec is None or codec.event_codes != cfg.event_codes:
                codec = RingCodec(cfg.event_codes)
            if trio.current_time() >= next_stats:
                self._export_stats()
                next_stats = trio.current_time() + _STATS_EVERY_S
            self._export_samples()
            drained = self._consumer.consume(cfg.drain_batch)
            # Positions move without records when the C consumer skipped a corrupt
            # slot: those positions still commit, so the slot is not read again.
            if drained.count == 0 and drained.next_seq == position:
                if active:  # caught up: let the backlog gauge say so now
                    self._export_stats()
                    active = False
                idle_sleep = min(
                    max(idle_sleep * 2, cfg.poll_interval_s),
                    max(cfg.idle_poll_max_s, cfg.poll_interval_s),
                )
                await trio.sleep(idle_sleep)
                continue
            active = True
            idle_sleep = 0.0
            before, position = position, drained.next_seq
            if time.monotonic() - clock.taken_monotonic > _CLOCK_REFRESH_S:
                clock = tsc.TickClock(self.rate)
            batch = codec.batch(drained.records, drained.count, clock)
            invalid = len(batch.rejected)
            await self._check_shapes(batch)
            if batch.rejected:
                # Now: the lanes of this batch's records are not kept past the next read.
                self._report(batch, invalid, drained)
            await send.send((batch, before, drained.next_seq))

    async def _commit_in_order(
        self,
        recv: trio.MemoryReceiveChannel[tuple[RingBatch, list[int], list[int]]],
        scope: trio.CancelScope,
    ) -> None:
        async for batch, before, next_seq in recv:
            cursor = RingCursor(ring_id=self._consumer.ring_id, next_seq=next_seq)
            meta = dict([self._store.tables.ring_cursor.entry(cursor)])
            try:
                try:
                    await self._submit(batch, meta)
                except Unstorable as exc:
                    self._quarantine(batch, before, next_seq, exc)
                    await self._submit(batch, meta)
            except (Closed, WriterClosed):
                scope.cancel()  # stopping: what was not committed is read again at start
                return
            # Committed (with the cursor): only now may producers reuse the slots.
            self._consumer.mark_durable(next_seq)
            self.committed_records += len(batch)

    async def _submit(self, batch: RingBatch, meta: dict[bytes, bytes]) -> None:
        refused = False
        while True:
            try:
                await self._ingest.submit(
                    batch,
                    # The ring holds the records meanwhile: wait rather than refuse.
                    enqueue_timeout=math.inf,
                    commit_timeout=math.inf,
                    extra_meta=meta,
                )
            except (StorageFull, ReadOnly) as exc:
                if not refused:
                    log.warning(
                        "ring %s: draining paused, the store refuses writes: %s",
                        self._consumer.path,
                        exc.detail,
                    )
                    refused = True
                await trio.sleep(_REFUSED_RETRY_S)
                continue
            if refused:
                log.warning("ring %s: draining resumed", self._consumer.path)
            return

    def _quarantine(
        self, batch: RingBatch, before: list[int], after: list[int], exc: Unstorable
    ) -> None:
        """Refuse every record of ``batch`` (the commit cannot say which one
        is at fault); its cursor then commits alone."""
        n = len(batch)
        batch.refuse(range(n), "quarantined", {})
        self._metrics.ingest_rejected.labels("ring_quarantined").inc(n)
        log.error(
            "ring %s: %d record(s) quarantined (not stored, drained past): %s; %s",
            self._consumer.path,
            n,
            _span(before, after),
            exc.detail,
        )

    async def _check_shapes(self, batch: RingBatch) -> None:
        """Refuse (and record) the records that violate their sector's shapes."""
        gate = self._shacl_gate()
        if gate is None or not len(batch):
            return
        try:
            await gate.check(batch.inputs())
        except ShaclRejected as exc:
            first: dict[int, str] = {}
            for e in exc.errors:
                first.setdefault(0 if e.index is None else e.index, f"{e.field}: {e.message}")
            batch.refuse(first, "shacl", first)

    # ------------------------------------------------------------------ #
    # Telemetry
    # ------------------------------------------------------------------ #

    def _report(self, batch: RingBatch, invalid: int, drained: Drained) -> None:
        """Count and (rate-limited) log the refused records: ``batch.rejected``
        lists the ``invalid`` ones first, then those the shapes refused."""
        shacl = len(batch.rejected) - invalid
        if invalid:
            self._metrics.ingest_rejected.labels("ring_invalid").inc(invalid)
        if shacl:
            self._metrics.ingest_rejected.labels("ring_shacl").inc(shacl)
        self._rejected_unlogged += len(batch.rejected)
        now = time.monotonic()
        if now - self._last_log >= _LOG_EVERY_S:
            first = batch.rejected[0]
            log.warning(
                "ring %s: %d record(s) refused since the last report; e.g. lane %d seq %d: %s (%s)",
                self._consumer.path,
                self._rejected_unlogged,
                drained.lane_of(first.index),
                first.seq,
                first.message,
                first.reason,
            )
            self._rejected_unlogged = 0
            self._last_log = now

    def append_ticks_p99(self) -> float | None:
        """p99 ticks per appended record over recent block-timed samples, or None
        when producers have sent none (a figure for invariants Q4/Q5)."""
        if not self.recent_append_ticks:
            return None
        ordered = sorted(self.recent_append_ticks)
        return ordered[min(len(ordered) - 1, int(len(ordered) * 0.99))]

    def _export_samples(self) -> None:
        for s in self._consumer.take_samples():
            if s.count == 0:
                continue
            per_record = s.ticks / s.count
            if s.op == OP_APPEND:
                self._metrics.append_ticks_append.observe(per_record)
                if s.count >= _MIN_TIMED_RECORDS:
                    self.recent_append_ticks.append(per_record)
                    if self._figures is not None:
                        self._figures.record_append_ticks(per_record)
            elif s.op == OP_SNAPSHOT_READ:
                self._metrics.append_ticks_snapshot_read.observe(per_record)

    def _export_stats(self) -> None:
        if not self._stale_logged and self._consumer.stale():
            # Producers open the path: they cannot reach this ring any more.
            log.error(
                "ring %s was removed or replaced while knhkd drains it: producers opening "
                "that path do not reach this ring; restart knhkd to recreate it",
                self._consumer.path,
            )
            self._stale_logged = True
        stats = self._consumer.lane_stats()
        full = sum(s.full_count for s in stats)
        corrupt = sum(s.corrupt_count for s in stats)
        if full > self._full_exported:
            self._metrics.ring_full_rejections.inc(full - self._full_exported)
            self._full_exported = full
        if corrupt > self._corrupt_exported:
            self._metrics.ingest_rejected.labels("ring_corrupt").inc(
                corrupt - self._corrupt_exported
            )
            self._corrupt_exported = corrupt
        self._metrics.ring_backlog.set(sum(s.backlog for s in stats))
