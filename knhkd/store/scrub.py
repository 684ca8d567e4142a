"""Overwriting LMDB's free pages, so that deleted or rewritten content does not
linger in the data file (erasure: loop/erasure.py).

LMDB is copy-on-write: a transaction that rewrites a record writes a new copy
of its page and puts the old page, content intact, on the free list, where it
stays until a later write reuses it. ``fill_job`` takes (about) every page on
the free list by writing zero-filled one-page values into the ``scrub``
database; its commit writes those zeros over the old content. ``clear_job``
deletes them again (their pages go back to the free list holding zeros).

Pages freed by a transaction are reusable only from the second transaction
after it (LMDB keeps the previous meta page's tree intact), and never while a
reader still sees them. So each round is: two ``tick_job`` commits (the
erasure's freed pages, or the last round's, become reusable), then the fill,
then the clear, each job in its own transaction (``jobs``). Without the ticks
a fill cannot reuse the pages the transaction before it freed and takes new
ones at the end of the file instead: measured, the free list (and the file)
then doubled with every round.

Guarantees: ``scrub`` is empty after ``clear_job``; nothing else is changed.
Must never: open or commit a transaction (the writer runs these jobs); be
run in one transaction with the change it cleans up after.
"""

from __future__ import annotations

from collections.abc import Callable

import lmdb

from knhkd.store.env import Store

ROUNDS = 2
# An overflow value of this many bytes less than a page fills exactly one page
# (LMDB's page header is 16 bytes).
_PAGE_HEADER = 16


def free_pages(store: Store, txn: lmdb.Transaction) -> int:
    """Pages of the file not in use by any database now (the free list,
    give or take the free list's own few pages)."""
    env = store.env
    used = 2  # the two meta pages
    for stat in (env.stat(), *(txn.stat(store.db(t.name)) for t in store.tables.all)):
        used += stat["branch_pages"] + stat["leaf_pages"] + stat["overflow_pages"]
    return max(int(env.info()["last_pgno"]) + 1 - used, 0)


def tick_job(store: Store) -> Callable[[lmdb.Transaction], int]:
    """A commit that changes nothing lasting (LMDB writes no new meta page
    for a transaction without a write): moves the transaction id on."""
    scrub = store.tables.scrub

    def job(txn: lmdb.Transaction) -> int:
        scrub.put_raw(txn, 0, b"")
        return scrub.clear(txn)

    return job


def jobs(store: Store) -> list[tuple[str, Callable[[lmdb.Transaction], int]]]:
    """``ROUNDS`` rounds of (tick, tick, fill, clear), in order, each job to
    be committed alone; ``"fill"`` jobs return the pages they overwrote."""
    one = [
        ("tick", tick_job(store)),
        ("tick", tick_job(store)),
        ("fill", fill_job(store)),
        ("clear", clear_job(store)),
    ]
    return one * ROUNDS


def fill_job(store: Store) -> Callable[[lmdb.Transaction], int]:
    """Zero-filled pages over the free list; returns how many were written."""
    scrub = store.tables.scrub

    def job(txn: lmdb.Transaction) -> int:
        n = free_pages(store, txn)
        psize = int(store.env.stat()["psize"])
        zeros = bytes(psize - _PAGE_HEADER)
        for i in range(n):
            scrub.put_raw(txn, i, zeros)
        return n

    return job


def clear_job(store: Store) -> Callable[[lmdb.Transaction], int]:
    """Empty ``scrub``; returns how many records it held."""
    scrub = store.tables.scrub

    def job(txn: lmdb.Transaction) -> int:
        return scrub.clear(txn)

    return job
