"""The one writer thread, with group commit.

Guarantees:
- Every LMDB write transaction of the process begins and commits on this one
  thread, inside one call (PLATFORM_NOTES, LMDB: one writer at a time; a
  transaction belongs to the thread that began it).
- Jobs queued while a commit is in flight are taken together into the next
  transaction: many submitters share one fsync (group commit).
- Each job runs in its own child transaction: a job that raises is rolled back
  alone and its submitter gets the exception; the others still commit.
- ``submit`` returns only after the transaction holding the job is durably
  committed (``sync=True``); only then may a caller acknowledge anything.
- On ``MapFullError`` the whole transaction is aborted, the map is grown with
  no transaction open, and every job of the batch is run again from scratch.

Must never: run a job twice after it committed; acknowledge a job whose
transaction failed to commit.
"""

from __future__ import annotations

import logging
import queue
import threading
from collections.abc import Callable
from typing import Any, Generic, TypeVar

import lmdb
import trio

from knhkd.store.env import Store, StoreError

log = logging.getLogger(__name__)

T = TypeVar("T")
Job = Callable[[lmdb.Transaction], T]


class WriterStopped(Exception):
    """The writer thread is not running; nothing was written."""


class _Pending(Generic[T]):
    __slots__ = ("done", "error", "fn", "result")

    def __init__(self, fn: Job[T]) -> None:
        self.fn = fn
        self.done = trio.Event()
        self.result: T | None = None
        self.error: BaseException | None = None


_STOP = object()


class Writer:
    """Owns the writer thread. Start with ``start`` inside a trio run."""

    def __init__(self, store: Store, *, max_jobs_per_txn: int = 4096) -> None:
        self._store = store
        self._queue: queue.SimpleQueue[Any] = queue.SimpleQueue()
        self._thread: threading.Thread | None = None
        self._token: trio.lowlevel.TrioToken | None = None
        self._max_jobs = max_jobs_per_txn
        self._stopped = False
        self.commits = 0
        self.jobs = 0
        self.map_grows = 0
        self.last_error: str | None = None

    # -- trio side ---------------------------------------------------------- #

    def start(self) -> None:
        self._token = trio.lowlevel.current_trio_token()
        self._thread = threading.Thread(target=self._run, name="knhkd-writer", daemon=True)
        self._thread.start()

    async def submit(self, fn: Job[T]) -> T:
        """Run ``fn(txn)`` in the next transaction; return after its durable commit.

        If the caller is cancelled while waiting, the job may still commit.
        """
        if self._stopped:
            raise WriterStopped("the writer is stopped")
        pending: _Pending[T] = _Pending(fn)
        self._queue.put(pending)
        await pending.done.wait()
        if pending.error is not None:
            raise pending.error
        return pending.result  # type: ignore[return-value]

    async def stop(self) -> None:
        """Commit what is queued, then stop the thread."""
        if self._thread is None or self._stopped:
            return
        self._stopped = True
        self._queue.put(_STOP)
        await trio.to_thread.run_sync(self._thread.join)

    @property
    def alive(self) -> bool:
        return self._thread is not None and self._thread.is_alive()

    # -- writer thread ------------------------------------------------------ #

    def _run(self) -> None:
        while True:
            first = self._queue.get()
            if first is _STOP:
                return
            batch: list[_Pending[Any]] = [first]
            stop_after = False
            while len(batch) < self._max_jobs:
                try:
                    nxt = self._queue.get_nowait()
                except queue.Empty:
                    break
                if nxt is _STOP:
                    stop_after = True
                    break
                batch.append(nxt)
            self._commit(batch)
            if stop_after:
                return

    def _commit(self, batch: list[_Pending[Any]]) -> None:
        env = self._store.env
        while True:
            results: list[tuple[Any, BaseException | None]] = []
            try:
                with env.begin(write=True) as txn:
                    for pending in batch:
                        try:
                            with env.begin(write=True, parent=txn) as child:
                                value = pending.fn(child)
                            results.append((value, None))
                        except lmdb.MapFullError:
                            raise
                        except Exception as exc:
                            results.append((None, exc))
                # Leaving the ``with`` committed and fsynced the transaction.
            except lmdb.MapFullError:
                try:
                    new = self._store.grow()
                except StoreError as exc:
                    self._fail(batch, exc)
                    return
                self.map_grows += 1
                log.warning("LMDB map grown to %d MiB", new // (1024 * 1024))
                continue
            except Exception as exc:
                log.exception("write transaction failed to commit")
                self._fail(batch, exc)
                return
            self.commits += 1
            self.jobs += len(batch)
            self._resolve(batch, results)
            return

    def _fail(self, batch: list[_Pending[Any]], exc: BaseException) -> None:
        self.last_error = f"{type(exc).__name__}: {exc}"
        self._resolve(batch, [(None, exc)] * len(batch))

    def _resolve(
        self, batch: list[_Pending[Any]], results: list[tuple[Any, BaseException | None]]
    ) -> None:
        def wake() -> None:
            for pending, (value, error) in zip(batch, results, strict=True):
                pending.result = value
                pending.error = error
                pending.done.set()

        assert self._token is not None
        try:
            self._token.run_sync_soon(wake)
        except trio.RunFinishedError:
            pass
