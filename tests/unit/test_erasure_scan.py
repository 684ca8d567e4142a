"""loop/erasure.py's two steps on a real LMDB store, through the one writer:
the matches found in a read transaction, then the observations stored after
that snapshot, are erased together; a match erased meanwhile is not erased
twice; a subject's identifier in a value, not a subject field, is no match."""

from __future__ import annotations

import time
from pathlib import Path
from typing import Any

import pytest
import trio

from knhkd.crypto.keys import load_or_create
from knhkd.loop.erasure import erase_job, matching, scrub_free_pages
from knhkd.loop.ingest import commit_job
from knhkd.loop.writer import StoreWriter
from knhkd.model import ObservationIn
from knhkd.receipts.log import ReceiptLog
from knhkd.store import scrub
from knhkd.store.env import MB, Store, open_store
from knhkd.telemetry.metrics import Metrics

pytestmark = pytest.mark.timeout(30)

SUBJECT = "user-0815"
FIELDS = ("patient_id", "user_id")


def obs(user: str | None, value: Any = 1) -> ObservationIn:
    meta = {} if user is None else {"user_id": user}
    return ObservationIn(event_type="login", sector="generic", value=value, metadata=meta)


def test_matches_found_before_and_stored_after_the_scan_are_erased(
    store: Store, tmp_path: Path
) -> None:
    writer = StoreWriter(store, Metrics())
    receipts = ReceiptLog(store, load_or_create(tmp_path / "key", 1), lambda: 1)

    def stored(items: list[ObservationIn]) -> Any:
        return commit_job(store, receipts, [items], time.time_ns)

    def erase(candidates: list[int], scanned_to: int) -> Any:
        return erase_job(
            store, receipts, subject=SUBJECT, fields=FIELDS, principal="t",
            candidates=candidates, scanned_to=scanned_to,
        )  # fmt: skip

    async def main() -> tuple[Any, Any, list[int]]:
        async with trio.open_nursery() as n:
            n.start_soon(writer.run)
            # 0..5: three of the subject's, one naming it only in its value.
            await writer.submit(stored([obs(SUBJECT), obs("other"), obs(SUBJECT),
                                        obs(None, SUBJECT), obs(SUBJECT), obs("x")]))  # fmt: skip
            with store.reader() as txn:
                candidates, scanned_to = matching(store, txn, SUBJECT, FIELDS)
            # 6..8: stored after the scan, two of them the subject's.
            await writer.submit(stored([obs(SUBJECT), obs("y"), obs(SUBJECT)]))
            first = await writer.submit(erase(candidates, scanned_to))
            # The same stale look again: everything it names is erased already.
            again = await writer.submit(erase(candidates, scanned_to))
            writer.close()
        return first, again, candidates

    first, again, candidates = trio.run(main)
    assert candidates == [0, 2, 4]
    assert first.erased == 5 and again.erased == 0
    with store.reader() as txn:
        records = {seq: o for seq, o in store.tables.observations.items(txn)}
    erased = sorted(seq for seq, o in records.items() if "knhk.erased" in o.metadata)
    assert erased == [0, 2, 4, 6, 8]
    assert records[3].value == SUBJECT and records[1].metadata == {"user_id": "other"}


def test_a_large_free_list_is_overwritten_a_bounded_fill_at_a_time(tmp_path: Path) -> None:
    """More free pages than one fill may write: each round takes several
    fills (transactions), together as many pages as were free, and leaves
    ``scrub`` empty."""
    store = open_store(tmp_path, map_size=64 * MB, max_map_size=64 * MB)
    writer = StoreWriter(store, Metrics())

    def churn(txn: Any) -> None:
        # ~3 fills' worth of pages written, then freed (clear_job).
        big = b"x" * 3000
        for i in range(3 * scrub.FILL_PAGES):
            store.tables.scrub.put_raw(txn, i, big)

    async def main() -> tuple[int, list[int], int]:
        async with trio.open_nursery() as n:
            n.start_soon(writer.run)
            await writer.submit(churn)
            await writer.submit(scrub.clear_job(store))
            for _ in range(2):
                await writer.submit(scrub.tick_job(store))
            with store.reader() as txn:
                free = scrub.free_pages(store, txn)
            before = store.env.info()["last_txnid"]
            rounds = await scrub_free_pages(writer, store)
            commits = store.env.info()["last_txnid"] - before
            writer.close()
        return free, rounds, commits

    try:
        free, rounds, commits = trio.run(main)
        with store.reader() as txn:
            assert store.tables.scrub.count(txn) == 0
    finally:
        store.close()
    assert free > 2 * scrub.FILL_PAGES
    assert len(rounds) == scrub.ROUNDS and all(r >= free for r in rounds), (free, rounds)
    # Per round: two ticks, at least three bounded fills, one clear.
    assert commits >= scrub.ROUNDS * (2 + 3 + 1), commits
