"""Overwriting LMDB's free pages, so that deleted or rewritten content does not
linger in the data file (erasure: loop/erasure.py).

LMDB is copy-on-write: a transaction that rewrites a record writes a new copy
of its page and puts the old page, content intact, on the free list, where it
stays until a later write reuses it. ``fill_job``s take (about) every page on
the free list by writing zero-filled one-page values into the ``scrub``
database, at most ``FILL_PAGES`` a transaction; their commits write those
zeros over the old content. ``clear_job`` deletes them again (their pages go
back to the free list holding zeros).

A round's fills are as many transactions as the free list needs, each
bounded, so the writer takes other work between them: after retention has
deleted a great many records the free list is large (1 M observations
deleted: ~60,000 pages), and one transaction filling it all held ingest
for 0.6 s and grew the daemon's memory by its dirty pages (250 MB); a day
at 1,000 observations/s is ~80 times that.

Pages freed by a transaction are reusable only from the second transaction
after it (LMDB keeps the previous meta page's tree intact), and never while a
reader still sees them. So each round is: two ``tick_job`` commits (the
erasure's freed pages, or the last round's, become reusable), then the
fills, then the clear, each job in its own transaction (loop/erasure.py
``scrub_free_pages`` runs them). Without the ticks
a fill cannot reuse the pages the transaction before it freed and takes new
ones at the end of the file instead: measured, the free list (and the file)
then doubled with every round.

Guarantees: ``scrub`` is empty after ``clear_job``; nothing else is changed;
a fill writes at most ``FILL_PAGES`` pages.
Must never: open or commit a transaction (the writer runs these jobs); be
run in one transaction with the change it cleans up after.
"""

from __future__ import annotations

from collections.abc import Callable

import lmdb

from knhkd.store.env import Store

ROUNDS = 2
# Zero pages written per fill transaction (4 MiB of 4 KiB pages): measured,
# ingest p99 10.6 ms during a scrub of 60,000 pages at 1,024 a transaction,
# 146 ms at 4,096, 591 ms all in one.
FILL_PAGES = 1024
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


def fill_job(
    store: Store, first: int, most: int = FILL_PAGES
) -> Callable[[lmdb.Transaction], tuple[int, int]]:
    """Zero-filled pages over the free list, at most ``most`` of them, keyed
    from ``first`` on (a round's fills add up in ``scrub``); returns how many
    were written, and how many pages were free before."""
    scrub = store.tables.scrub

    def job(txn: lmdb.Transaction) -> tuple[int, int]:
        free = free_pages(store, txn)
        n = min(free, most)
        psize = int(store.env.stat()["psize"])
        zeros = bytes(psize - _PAGE_HEADER)
        for i in range(first, first + n):
            scrub.put_raw(txn, i, zeros)
        return n, free

    return job


def clear_job(store: Store) -> Callable[[lmdb.Transaction], int]:
    """Empty ``scrub``; returns how many records it held."""
    scrub = store.tables.scrub

    def job(txn: lmdb.Transaction) -> int:
        return scrub.clear(txn)

    return job
