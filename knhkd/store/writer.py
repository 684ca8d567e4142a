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

Must never: report a job as committed when its transaction did not commit.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Sequence
from typing import Any, TypeVar

import lmdb

from knhkd.errors import ReadOnly
from knhkd.store.env import MB, Store

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
        refused = ReadOnly(f"the store takes no writes: {store.frozen}")
        return [(None, refused) for _ in jobs]
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
