"""One write transaction for a group of jobs: the body of the single writer.

Guarantees:
- ``run_transaction`` begins and commits its transaction inside one call, on the
  calling thread (PLATFORM_NOTES, LMDB: a transaction belongs to the thread that
  began it). The caller (loop/writer.py) makes sure only one such
  call runs at a time, so the process has exactly one writer.
- Each job runs in its own child transaction: a job that raises is rolled back
  alone and reported with its exception; the others still commit.
- When it returns, the transaction is durably committed (``sync=True``): only
  then may anything be acknowledged.
- A frozen store (``Store.frozen``, set by the start-up integrity check)
  takes no write transaction: every job is refused with ``ReadOnly`` and
  nothing is begun, so damage found at start is never extended.
- On ``MapFullError`` the whole transaction is aborted, the map is grown with
  no write transaction open, and every job is run again from scratch (jobs must
  therefore read what they depend on from the transaction, not from memory).
  A map at its ceiling, or a disk with no space left, raises ``StoreFull``
  naming the cause; nothing of the transaction is on disk and the store stays
  usable (``probe`` tells when it takes writes again).

Must never: report a job as committed when its transaction did not commit.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Sequence
from typing import Any, TypeVar

import lmdb

from knhkd.errors import ReadOnly
from knhkd.store.env import MB, Store, disk_full
from knhkd.store.schema import SCHEMA_VERSION

log = logging.getLogger(__name__)

T = TypeVar("T")
Job = Callable[[lmdb.Transaction], T]
JobResult = tuple[Any, Exception | None]


def run_transaction(store: Store, jobs: Sequence[Job[Any]]) -> list[JobResult]:
    """Run ``jobs`` in one durable write transaction; one result per job.

    Raises only when the transaction as a whole could not commit (disk full,
    map at its ceiling, I/O error); then nothing of it is on disk.
    """
    if store.frozen is not None:
        # Damage found at start (loop/integrity.py): every job is refused and
        # nothing is appended, whichever path submitted it.
        refused = ReadOnly(f"the store takes no writes: {store.frozen}")
        return [(None, refused) for _ in jobs]
    try:
        return _run(store, jobs)
    except lmdb.Error as exc:
        full = disk_full(store.path, exc)
        if full is None:
            raise
        raise full from exc


def _run(store: Store, jobs: Sequence[Job[Any]]) -> list[JobResult]:
    env = store.env
    while True:
        results: list[JobResult] = []
        try:
            with env.begin(write=True) as txn:
                for job in jobs:
                    try:
                        with env.begin(write=True, parent=txn) as child:
                            value = job(child)
                    except lmdb.MapFullError:
                        raise
                    except Exception as exc:
                        results.append((None, exc))
                    else:
                        results.append((value, None))
            # Leaving the ``with`` block committed and fsynced the transaction.
            return results
        except lmdb.MapFullError:
            new = store.grow()
            log.warning("LMDB map full: grown to %d MiB, retrying the transaction", new // MB)


def probe(store: Store) -> None:
    """One small durable write (the schema version, rewritten as it is): returns
    when the store took it, raises ``StoreFull`` (or the failure) when not."""
    slot = store.tables.schema_version
    [(_, error)] = run_transaction(store, [lambda txn: slot.put(txn, SCHEMA_VERSION)])
    if error is not None:
        raise error
