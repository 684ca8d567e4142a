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

Must never: resolve a waiter before the commit that holds its job.
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from typing import Any, Generic, TypeVar

import trio

from knhkd.errors import Unavailable
from knhkd.loop.batching import receive_batch
from knhkd.store.env import Store
from knhkd.store.writer import Job, JobResult, run_transaction
from knhkd.telemetry.metrics import Metrics

log = logging.getLogger(__name__)

T = TypeVar("T")

PROBE_EVERY = 256


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
    __slots__ = ("done", "error", "job", "result")

    def __init__(self, job: Job[T]) -> None:
        self.job = job
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
    ) -> None:
        self._inline_max_s = inline_max_s
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
        pending: _Pending[T] = _Pending(job)
        try:
            await self._send.send(pending)
        except (trio.ClosedResourceError, trio.BrokenResourceError):
            raise WriterClosed("the store is closing") from None
        await pending.done.wait()
        if pending.error is not None:
            raise pending.error
        return pending.result  # type: ignore[no-any-return]

    async def commit_now(self, job: Job[T]) -> T:
        """Run ``job`` in a transaction of its own from the calling task, under
        the same one-writer token as the actor, without the actor's hop: the
        ingest hot path, which batches for itself. Raises ``CommitFailed`` when
        the transaction as a whole did not commit."""
        if self._closed:
            raise WriterClosed("the store is closing")
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

    async def run(self) -> None:
        """Actor body: commit batches until the intake is closed and empty."""
        while (got := await receive_batch(self._recv, self._max_jobs)) is not None:
            await self._commit(got[0])

    async def _commit(self, batch: list[_Pending[Any]]) -> None:
        jobs = [p.job for p in batch]
        try:
            results: list[JobResult] = await trio.to_thread.run_sync(
                run_transaction, self._store, jobs, limiter=self._limiter
            )
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
