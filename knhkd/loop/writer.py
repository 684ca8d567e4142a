"""The store writer (the design's "receipt writer" actor): the single writer of
the store, for every job: observations, receipts, snapshots, governance.

Guarantees:
- Every state change of the daemon, and the receipts that record it, reach
  LMDB through ``StoreWriter.submit``; the actor runs them one transaction at
  a time on a worker thread (store/writer.py), so there is one writer.
- Jobs that queue while a commit is in flight share the next transaction
  (group commit across ingest, analyzer, planner and executor alike).
- ``submit`` returns after the job's transaction is durably committed, or
  raises the job's own exception, or ``CommitFailed`` when the transaction as a
  whole failed (then nothing of it is on disk).
- The intake is a bounded channel: when the disk falls behind, submitters wait.
- ``commit_now`` is the same single writer without the actor's hop, for a
  caller that batches by itself (ingest): one ``CapacityLimiter(1)`` orders
  every write transaction of the process. It commits on the event loop's
  thread while such commits take at most ``storage.inline_commit_max_ms``
  (smoothed)
  (fast disks: no GIL hand-off per LMDB call), and on a worker thread after
  one takes longer (slow fsync must not stall the loop), probing again every
  ``PROBE_EVERY`` commits.
- ``close`` lets the actor commit what is queued, then return.
- Storage full is a state, not a crash: when a transaction fails for lack of
  room (store/env.py ``StoreFull``: the map at its ceiling, no space left on
  the device) its jobs fail with ``StorageFull`` (507, naming the cause), the
  write gate (loop/write_gate.py) closes under ``"storage"``, and the actor
  goes on. While the gate is closed every job is refused at once with the
  gate's error. The actor probes every ``PROBE_FULL_S`` (at once after
  ``storage_changed``): once the cause is gone (free space on the device, or a
  map ceiling raised by SIGHUP) and a small write transaction commits, it
  lifts the gate. Other transaction failures (``CommitFailed``) still raise
  out of the actor, for the supervisor: no single input explains them.

Must never: resolve a waiter before the commit that holds its job.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Sequence
from typing import Any, Generic, TypeVar

import trio
from opentelemetry.trace import SpanContext

from knhkd.errors import StorageFull, Unavailable
from knhkd.loop.batching import receive_batch
from knhkd.loop.write_gate import WriteGate
from knhkd.store.env import DISK_FULL_BELOW, Store, StoreFull, free_bytes
from knhkd.store.writer import Job, JobResult, probe, run_transaction
from knhkd.telemetry import tracing
from knhkd.telemetry.metrics import Metrics

log = logging.getLogger(__name__)

T = TypeVar("T")

PROBE_EVERY = 256
# While storage is full: how often the actor checks whether it takes writes again.
PROBE_FULL_S = 1.0
GATE_KEY = "storage"


class CommitFailed(Unavailable):
    """The transaction holding the job did not commit: nothing of it was stored."""

    problem = "storage-unavailable"
    title = "Storage unavailable"
    retry_after = 5

    def __init__(self, message: str) -> None:
        super().__init__(message)
        self.detail = f"nothing was stored: {message}"


class WriterClosed(Unavailable):
    """The writer no longer accepts jobs (the daemon is stopping)."""

    problem = "draining"
    title = "Shutting down"
    retry_after = 5


class _Pending(Generic[T]):
    __slots__ = ("done", "error", "job", "link", "result")

    def __init__(self, job: Job[T]) -> None:
        # The job runs in its submitter's trace (its receipt spans are the
        # submitter's children); the commit span links back to the submitter.
        self.job = tracing.bind_current(job)
        self.link = tracing.current_context()
        self.done = trio.Event()
        self.result: Any = None
        self.error: Exception | None = None


class StoreWriter:
    def __init__(
        self,
        store: Store,
        metrics: Metrics,
        *,
        capacity: int = 1024,
        max_jobs: int = 4096,
        inline_max_s: Callable[[], float] = lambda: 0.0,
        gate: WriteGate | None = None,
    ) -> None:
        self._inline_max_s = inline_max_s
        self.gate = WriteGate() if gate is None else gate
        # Why storage is full ("map" or "disk"), while the writer holds the gate.
        self._full: StoreFull | None = None
        self._recheck = trio.Event()
        # Inline commits are on while they stay fast; a slow one moves the
        # next PROBE_EVERY commits to the thread, then one probes again.
        self._inline_ok = True
        self._probe_in = 0
        self._inline_s: float | None = None
        self._store = store
        self._metrics = metrics
        self._send, self._recv = trio.open_memory_channel[_Pending[Any]](capacity)
        self._max_jobs = max_jobs
        # One transaction at a time, whatever thread the pool hands us.
        self._limiter = trio.CapacityLimiter(1)
        self.commits = 0
        self.inline_commits = 0
        self.last_error: str | None = None
        self._closed = False

    async def submit(self, job: Job[T]) -> T:
        self.gate.check()
        pending: _Pending[T] = _Pending(job)
        try:
            await self._send.send(pending)
        except (trio.ClosedResourceError, trio.BrokenResourceError):
            raise WriterClosed("the store is closing") from None
        await pending.done.wait()
        if pending.error is not None:
            raise pending.error
        return pending.result  # type: ignore[no-any-return]

    async def commit_now(
        self, job: Job[T], *, records: int = 1, links: Sequence[SpanContext] = ()
    ) -> T:
        """Run ``job`` in a transaction of its own from the calling task, under
        the same one-writer token as the actor, without the actor's hop: the
        ingest hot path, which batches for itself. Raises ``CommitFailed`` when
        the transaction as a whole did not commit."""
        if self._closed:
            raise WriterClosed("the store is closing")
        self.gate.check()
        with tracing.linked_span("knhk.store.commit", {"knhk.store.records": records}, links):
            return await self._commit_now(tracing.bind_current(job))

    async def _commit_now(self, job: Job[T]) -> T:
        limit = self._inline_max_s()
        try:
            if limit > 0 and (self._inline_ok or self._probe_in <= 0):
                # On the event loop's own thread: no GIL hand-off per LMDB call
                # (py-lmdb releases the GIL around each), at the price of
                # blocking the loop for one commit, which is kept short.
                async with self._limiter:
                    # trio's clock (perf_counter in production) so that a test's
                    # MockClock can stand in for a slow disk.
                    started = trio.current_time()
                    [(value, error)] = run_transaction(self._store, [job])
                    took = trio.current_time() - started
                # Smoothed, so one garbage-collection pause inside a commit
                # does not send the next PROBE_EVERY commits to the thread.
                self._inline_s = (
                    took if self._inline_s is None else 0.8 * self._inline_s + 0.2 * took
                )
                self._inline_ok = self._inline_s <= limit
                self._probe_in = 0 if self._inline_ok else PROBE_EVERY
                self.inline_commits += 1
            else:
                self._probe_in -= 1
                [(value, error)] = await trio.to_thread.run_sync(
                    run_transaction, self._store, [job], limiter=self._limiter
                )
        except StoreFull as exc:
            raise self._storage_full(exc) from exc
        except Exception as exc:
            self.last_error = f"{type(exc).__name__}: {exc}"
            raise CommitFailed(f"write transaction failed: {exc}") from exc
        self.commits += 1
        self._metrics.store_commits.inc()
        if error is not None:
            raise error
        return value  # type: ignore[no-any-return]

    def close(self) -> None:
        self._closed = True
        self._send.close()

    def storage_changed(self) -> None:
        """The room the store may take changed (a reload raised the map's
        ceiling): probe now rather than at the next tick."""
        self._recheck.set()

    async def run(self) -> None:
        """Actor body: commit batches until the intake is closed and empty;
        meanwhile, probe a full store until it takes writes again."""
        async with trio.open_nursery() as nursery:
            nursery.start_soon(self._probe_while_full)
            while (got := await receive_batch(self._recv, self._max_jobs)) is not None:
                await self._commit(got[0])
            nursery.cancel_scope.cancel()

    def _storage_full(self, exc: StoreFull) -> StorageFull:
        """Close the gate on ``exc``'s cause; the error every refused job gets."""
        error = StorageFull(f"nothing was stored: {exc}")
        self.last_error = f"StorageFull: {exc}"
        self._full = exc
        self.gate.close(GATE_KEY, error)
        self._recheck.set()
        return error

    def _room_again(self, full: StoreFull) -> bool:
        """Whether the cause of ``full`` is gone, so a probe is worth its write.
        A small write may fit in a full store's free pages: the cause, not the
        probe alone, decides."""
        if full.kind == "map":
            return self._store.can_grow()
        return free_bytes(self._store.path) >= DISK_FULL_BELOW

    async def _probe_while_full(self) -> None:
        while True:
            await self._recheck.wait()
            self._recheck = trio.Event()
            full = self._full
            if full is None:
                continue
            if self._room_again(full):
                try:
                    await trio.to_thread.run_sync(probe, self._store, limiter=self._limiter)
                except StoreFull as exc:
                    self._storage_full(exc)
                except Exception as exc:  # a probe is not a job: report, retry
                    log.warning("storage probe failed: %s: %s", type(exc).__name__, exc)
                else:
                    self._full = None
                    self.gate.lift(GATE_KEY)
                    continue
            with trio.move_on_after(PROBE_FULL_S):
                await self._recheck.wait()
            self._recheck.set()

    async def _commit(self, batch: list[_Pending[Any]]) -> None:
        links = [p.link for p in batch if p.link is not None]
        with tracing.linked_span("knhk.store.commit", {"knhk.store.records": len(batch)}, links):
            await self._commit_batch(batch)

    async def _commit_batch(self, batch: list[_Pending[Any]]) -> None:
        jobs = [p.job for p in batch]
        try:
            results: list[JobResult] = await trio.to_thread.run_sync(
                run_transaction, self._store, jobs, limiter=self._limiter
            )
        except StoreFull as exc:
            # A state, not a crash: these jobs are refused, the actor goes on.
            full = self._storage_full(exc)
            for pending in batch:
                pending.error = full
                pending.done.set()
            return
        except Exception as exc:
            self.last_error = f"{type(exc).__name__}: {exc}"
            failure = CommitFailed(f"write transaction failed: {exc}")
            for pending in batch:
                pending.error = failure
                pending.done.set()
            # Let the supervisor see it: a store that cannot commit is not healthy.
            raise
        self.commits += 1
        self._metrics.store_commits.inc()
        for pending, (value, error) in zip(batch, results, strict=True):
            pending.result = value
            pending.error = error
            pending.done.set()
