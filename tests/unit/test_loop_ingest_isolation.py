"""loop/ingest.py in-process on a real LMDB store: a request whose items the
commit job cannot store fails alone, the requests that shared its group commit
are committed without it, and the ingest actor does not crash.

The poison item bypasses decoding (which refuses it at the HTTP edge since
monitor/decode.py bounds integers): what is tested here is the net under it,
for whatever item-specific fault decoding does not foresee."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest
import trio
import trio.testing

from knhkd.crypto.keys import load_or_create
from knhkd.loop.ingest import Ingest, Unstorable
from knhkd.loop.writer import StoreWriter
from knhkd.model import ObservationIn
from knhkd.receipts.log import ReceiptLog
from knhkd.store.env import Store
from knhkd.telemetry.metrics import Metrics

pytestmark = pytest.mark.timeout(30)


def obs(value: Any) -> list[ObservationIn]:
    return [ObservationIn(event_type="a.b", sector="generic", value=value)]


def test_a_poison_request_fails_alone_and_its_group_commits(store: Store, tmp_path: Path) -> None:
    metrics = Metrics()
    writer = StoreWriter(store, metrics)
    receipts = ReceiptLog(store, load_or_create(tmp_path / "key", 1), lambda: 1)
    to_analyzer, _from_ingest = trio.open_memory_channel[Any](64)
    ingest = Ingest(store, writer, receipts, metrics, to_analyzer, capacity=64)
    # Five requests in one group; two of them cannot be encoded (past int64).
    requests = [obs(1), obs(2**70), obs(3), obs(4), obs([-(2**70)])]
    got: dict[int, Any] = {}

    async def submit(i: int) -> None:
        try:
            got[i] = await ingest.submit(requests[i], enqueue_timeout=5, commit_timeout=5)
        except Exception as exc:
            got[i] = exc

    async def main() -> None:
        async with trio.open_nursery() as actor:
            async with trio.open_nursery() as submitters:
                for i in range(len(requests)):
                    submitters.start_soon(submit, i)
                    await trio.testing.wait_all_tasks_blocked()
                # All queued before the actor runs: one group.
                actor.start_soon(ingest.run)
            # The actor is still up, and takes the next request.
            got["after"] = await ingest.submit(obs(5), enqueue_timeout=5, commit_timeout=5)
            ingest.close()

    trio.run(main)
    for bad in (1, 4):
        assert isinstance(got[bad], Unstorable), got[bad]
        assert got[bad].status == 422 and "OverflowError" in got[bad].detail
    ids = [got[i][0] for i in (0, 2, 3)] + [got["after"][0]]
    assert all(isinstance(i, str) for i in ids)
    with store.reader() as txn:
        stored = [o for _, o in store.tables.observations.items(txn)]
    assert sorted(o.id for o in stored) == sorted(ids)
    assert sorted(o.value for o in stored) == [1, 3, 4, 5]
    assert (
        metrics.registry.get_sample_value("knhk_ingest_rejected_total", {"reason": "unstorable"})
        == 2
    )


def _ingest(store: Store, tmp_path: Path, capacity: int) -> tuple[Ingest, Metrics]:
    metrics = Metrics()
    writer = StoreWriter(store, metrics)
    receipts = ReceiptLog(store, load_or_create(tmp_path / "key", 1), lambda: 1)
    to_analyzer, _from_ingest = trio.open_memory_channel[Any](64)
    return Ingest(store, writer, receipts, metrics, to_analyzer, capacity=capacity), metrics


def test_a_batch_is_answered_request_by_request(store: Store, tmp_path: Path) -> None:
    """``submit_many`` (a worker's lane batch): each request stored or refused
    on its own, as if submitted alone, in one task."""
    ingest, _ = _ingest(store, tmp_path, 64)
    requests = [obs(1), obs(2**70), obs(3), obs(4), obs([-(2**70)])]

    async def main() -> list[Any]:
        async with trio.open_nursery() as actor:
            actor.start_soon(ingest.run)
            got = await ingest.submit_many(requests, enqueue_timeout=5, commit_timeout=5)
            ingest.close()
        return got

    got = trio.run(main)
    assert [type(g).__name__ for g in got] == ["list", "Unstorable", "list", "list", "Unstorable"]
    with store.reader() as txn:
        stored = {o.id: o.value for _, o in store.tables.observations.items(txn)}
    assert stored == {got[0][0]: 1, got[2][0]: 3, got[3][0]: 4}


def test_a_batch_past_a_full_intake_is_refused_for_what_did_not_fit(
    store: Store, tmp_path: Path
) -> None:
    """Room for two: the three that never got in are ``Overloaded`` (queue
    full); the two queued time out waiting for a commit that comes later
    ("it may still commit"), and then does."""
    ingest, metrics = _ingest(store, tmp_path, 2)
    batch = [obs(n) for n in range(5)]

    async def main() -> list[Any]:
        got = await ingest.submit_many(batch, enqueue_timeout=0.05, commit_timeout=0.05)
        async with trio.open_nursery() as actor:
            actor.start_soon(ingest.run)
            ingest.close()
        return got

    got = trio.run(main)
    assert [str(g) for g in got] == [
        "the commit did not complete in time; it may still commit",
        "the commit did not complete in time; it may still commit",
        "the ingest queue is full",
        "the ingest queue is full",
        "the ingest queue is full",
    ]
    sample = metrics.registry.get_sample_value
    assert sample("knhk_ingest_rejected_total", {"reason": "overloaded"}) == 3
    assert sample("knhk_ingest_rejected_total", {"reason": "commit_timeout"}) == 2
    with store.reader() as txn:
        assert sorted(o.value for _, o in store.tables.observations.items(txn)) == [0, 1]
