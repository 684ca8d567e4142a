"""The single writer in-process, on a real LMDB store in a temporary directory:
group commit, acknowledgement after commit, per-job errors, whole-transaction
failure, close, and commit_now's switch between the event loop's thread and a
worker thread. Its intake, ``receive_batch``, is tested on MockClock."""

from __future__ import annotations

import threading
from collections.abc import Awaitable, Callable, Iterator
from pathlib import Path
from typing import Any

import lmdb
import pytest
import trio
import trio.testing

from knhkd.errors import StorageFull
from knhkd.loop.batching import receive_batch
from knhkd.loop.writer import PROBE_EVERY, CommitFailed, StoreWriter, WriterClosed
from knhkd.store.env import MB, Store, open_store
from knhkd.store.writer import Job
from knhkd.telemetry.metrics import Metrics

pytestmark = pytest.mark.timeout(30)


@pytest.fixture
def store(tmp_path: Path) -> Iterator[Store]:
    store = open_store(tmp_path, map_size=MB, max_map_size=MB)
    try:
        yield store
    finally:
        store.close()


def put(store: Store, key: bytes, value: bytes = b"v") -> Job[bytes]:
    def job(txn: lmdb.Transaction) -> bytes:
        txn.put(key, value, db=store.db("meta"))
        return key

    return job


def stored(store: Store, key: bytes) -> bytes | None:
    with store.reader() as txn:
        value = txn.get(key, db=store.db("meta"))
        return None if value is None else bytes(value)


def commits_metric(metrics: Metrics) -> float | None:
    return metrics.registry.get_sample_value("knhk_store_commits_total")


class Outcomes:
    """What each submitter got back, and whether its job was durable by then."""

    def __init__(self, store: Store) -> None:
        self.store = store
        self.got: dict[bytes, Any] = {}
        self.durable_on_return: dict[bytes, bool] = {}

    async def submit(self, writer: StoreWriter, key: bytes, job: Job[Any]) -> None:
        try:
            self.got[key] = await writer.submit(job)
        except Exception as exc:
            self.got[key] = exc
        self.durable_on_return[key] = stored(self.store, key) is not None

    async def queue(
        self, nursery: trio.Nursery, writer: StoreWriter, jobs: dict[bytes, Any]
    ) -> None:
        """Submits ``jobs`` in order, each from a task of its own; returns once
        every one of them waits (in the intake, or for its commit)."""
        for key, job in jobs.items():
            nursery.start_soon(self.submit, writer, key, job)
            # One at a time: trio does not promise to run new tasks in order.
            await trio.testing.wait_all_tasks_blocked()


def test_jobs_that_queue_during_a_commit_share_the_next_transaction(store: Store) -> None:
    metrics = Metrics()
    writer = StoreWriter(store, metrics)
    out = Outcomes(store)
    release = threading.Event()
    seen_in_d: list[object] = []
    acknowledged_early: dict[bytes, Any] = {}

    async def main() -> None:
        in_flight = trio.Event()

        def slow(txn: lmdb.Transaction) -> bytes:
            trio.from_thread.run_sync(in_flight.set)
            release.wait(timeout=5)  # bounded, so a broken writer fails, not hangs
            return put(store, b"a")(txn)

        def d(txn: lmdb.Transaction) -> bytes:
            # b and c are not committed yet, but this transaction holds them.
            seen_in_d.extend(txn.get(k, db=store.db("meta")) for k in (b"b", b"c"))
            return put(store, b"d")(txn)

        async with trio.open_nursery() as actor:
            actor.start_soon(writer.run)
            async with trio.open_nursery() as submitters:
                submitters.start_soon(out.submit, writer, b"a", slow)
                await in_flight.wait()
                await out.queue(
                    submitters, writer, {b"b": put(store, b"b"), b"c": put(store, b"c"), b"d": d}
                )
                # Nobody is acknowledged while the first commit is in flight.
                acknowledged_early.update(out.got)
                release.set()
            writer.close()

    trio.run(main)
    assert acknowledged_early == {}
    assert out.got == {k: k for k in (b"a", b"b", b"c", b"d")}
    assert out.durable_on_return == dict.fromkeys(out.got, True)
    assert seen_in_d == [b"v", b"v"]
    # Four jobs, two transactions: the one in flight, then b, c, d together.
    assert writer.commits == 2
    assert commits_metric(metrics) == 2
    assert writer.inline_commits == 0


def test_max_jobs_bounds_a_transaction(store: Store) -> None:
    writer = StoreWriter(store, Metrics(), max_jobs=2)
    out = Outcomes(store)
    keys = [b"k%d" % i for i in range(5)]

    async def main() -> None:
        async with trio.open_nursery() as nursery:
            await out.queue(nursery, writer, {key: put(store, key) for key in keys})
            writer.close()
            await writer.run()

    trio.run(main)
    assert out.got == {k: k for k in keys}
    assert writer.commits == 3  # 2 + 2 + 1


def test_a_failing_job_fails_only_its_own_submitter(store: Store) -> None:
    writer = StoreWriter(store, Metrics())
    out = Outcomes(store)
    boom = ValueError("bad record")

    def bad(txn: lmdb.Transaction) -> bytes:
        put(store, b"bad")(txn)  # rolled back with the job
        raise boom

    async def main() -> None:
        async with trio.open_nursery() as actor:
            async with trio.open_nursery() as submitters:
                jobs = {b"one": put(store, b"one"), b"bad": bad, b"three": put(store, b"three")}
                await out.queue(submitters, writer, jobs)
                # Queued before the actor starts: one batch.
                actor.start_soon(writer.run)
            # The actor is still up after the job's failure.
            await out.submit(writer, b"four", put(store, b"four"))
            writer.close()

    trio.run(main)
    assert out.got[b"bad"] is boom
    assert out.got[b"one"] == b"one" and out.got[b"three"] == b"three"
    assert out.got[b"four"] == b"four"
    assert out.durable_on_return == {b"one": True, b"bad": False, b"three": True, b"four": True}
    assert stored(store, b"bad") is None
    assert writer.commits == 2
    assert writer.last_error is None


def test_a_failing_transaction_fails_every_job_in_it(tmp_path: Path) -> None:
    # A store that refuses write transactions (opened read-only): a fault no
    # job explains fails the whole transaction, and the actor raises it.
    open_store(tmp_path).close()
    store = open_store(tmp_path, readonly=True, exclusive=False)
    metrics = Metrics()
    writer = StoreWriter(store, metrics)
    out = Outcomes(store)
    try:

        async def main() -> None:
            async with trio.open_nursery() as nursery:
                jobs = {b"one": put(store, b"one"), b"two": put(store, b"two")}
                await out.queue(nursery, writer, jobs)
                # The actor raises, for the supervisor to see the store is unhealthy.
                try:
                    await writer.run()
                except* lmdb.Error:
                    raised.append(True)

        raised: list[bool] = []
        trio.run(main)
        assert raised == [True]
        failures = list(out.got.values())
        assert len(failures) == 2
        assert all(isinstance(f, CommitFailed) for f in failures)
        assert out.durable_on_return == {b"one": False, b"two": False}
        assert writer.commits == 0
        assert not commits_metric(metrics)
        assert writer.last_error is not None and "Error" in writer.last_error
        assert writer.gate.open  # a fault is not storage full
    finally:
        store.close()


def test_a_map_at_its_ceiling_refuses_the_batch_as_storage_full_and_goes_on(
    tmp_path: Path,
) -> None:
    # The map cannot grow: the overflowing transaction fails whole with 507,
    # the gate closes under "storage", and the actor keeps running.
    store = open_store(tmp_path, map_size=MB, max_map_size=MB)
    metrics = Metrics()
    writer = StoreWriter(store, metrics)
    out = Outcomes(store)
    try:

        async def main() -> None:
            async with trio.open_nursery() as nursery:
                nursery.start_soon(writer.run)
                jobs = {b"small": put(store, b"small"), b"huge": put(store, b"huge", b"x" * 2 * MB)}
                await out.queue(nursery, writer, jobs)
                with trio.fail_after(10):
                    while len(out.got) < 2:  # the commit runs on a worker thread
                        await trio.sleep(0.01)
                assert set(writer.gate.closed_causes()) == {"storage"}
                with pytest.raises(StorageFull):
                    await writer.submit(put(store, b"later"))
                writer.close()

        trio.run(main)
        # The running actor committed "small" before "huge" queued.
        assert out.got[b"small"] == b"small"
        assert isinstance(out.got[b"huge"], StorageFull)
        assert "ceiling" in out.got[b"huge"].detail
        assert out.durable_on_return == {b"small": True, b"huge": False}
        assert stored(store, b"later") is None
    finally:
        store.close()


def test_close_commits_what_is_queued_then_refuses(store: Store) -> None:
    writer = StoreWriter(store, Metrics(), capacity=2)
    out = Outcomes(store)
    keys = [b"q1", b"q2", b"blocked"]
    late: list[BaseException] = []

    async def main() -> None:
        async with trio.open_nursery() as nursery:
            await out.queue(nursery, writer, {key: put(store, key) for key in keys})
            # q1, q2 fill the intake; the third waits for room.
            writer.close()
            await writer.run()  # returns once what was queued is committed
        for call in (writer.submit, writer.commit_now):
            try:
                await call(put(store, b"late"))
            except WriterClosed as exc:
                late.append(exc)

    trio.run(main)
    assert out.got[b"q1"] == b"q1" and out.got[b"q2"] == b"q2"
    # A submitter still waiting for room when the writer closes is refused.
    assert isinstance(out.got[b"blocked"], WriterClosed)
    assert out.durable_on_return == {b"q1": True, b"q2": True, b"blocked": False}
    assert writer.commits == 1
    assert len(late) == 2
    assert stored(store, b"late") is None


def _on_thread(store: Store, key: bytes, threads: list[bool]) -> Job[bytes]:
    def job(txn: lmdb.Transaction) -> bytes:
        threads.append(threading.current_thread() is threading.main_thread())
        return put(store, key)(txn)

    return job


def test_commit_now_uses_a_worker_thread_when_inline_is_off(store: Store) -> None:
    metrics = Metrics()
    writer = StoreWriter(store, metrics)  # inline_max_s = 0: never inline
    on_loop: list[bool] = []

    async def main() -> None:
        for i in range(3):
            assert await writer.commit_now(_on_thread(store, b"k%d" % i, on_loop)) == b"k%d" % i

    trio.run(main)
    assert on_loop == [False] * 3
    assert (writer.commits, writer.inline_commits) == (3, 0)
    assert commits_metric(metrics) == 3


class SlowDisk:
    """Jobs whose inline commit "takes" a given time: MockClock stands in for the
    disk, jumped inside the transaction when it runs on the event loop's thread."""

    def __init__(self, store: Store) -> None:
        self.store = store
        self.clock = trio.testing.MockClock()
        self.on_loop: list[bool] = []

    def job(self, seconds: float, key: bytes) -> Job[bytes]:
        def body(txn: lmdb.Transaction) -> bytes:
            if threading.current_thread() is threading.main_thread():
                self.clock.jump(seconds)
            return _on_thread(self.store, key, self.on_loop)(txn)

        return body


def test_commit_now_stays_inline_while_commits_are_fast(store: Store) -> None:
    writer = StoreWriter(store, Metrics(), inline_max_s=lambda: 0.010)
    disk = SlowDisk(store)

    async def main() -> None:
        await writer.commit_now(disk.job(0.0, b"a"))
        # 40 ms once: smoothed to 8 ms, still under the 10 ms limit.
        await writer.commit_now(disk.job(0.040, b"b"))
        await writer.commit_now(disk.job(0.0, b"c"))

    trio.run(main, clock=disk.clock)
    assert disk.on_loop == [True] * 3
    assert (writer.commits, writer.inline_commits) == (3, 3)


def test_a_slow_inline_commit_moves_commits_to_the_thread_until_a_probe(store: Store) -> None:
    writer = StoreWriter(store, Metrics(), inline_max_s=lambda: 0.010)
    disk = SlowDisk(store)

    async def main() -> None:
        await writer.commit_now(disk.job(0.011, b"slow"))  # over the limit
        for i in range(PROBE_EVERY):
            await writer.commit_now(disk.job(0.0, b"t%d" % i))
        # The probe: fast again (smoothed 8.8 ms), so inline resumes.
        await writer.commit_now(disk.job(0.0, b"probe"))
        await writer.commit_now(disk.job(0.0, b"after"))

    trio.run(main, clock=disk.clock)
    assert disk.on_loop == [True] + [False] * PROBE_EVERY + [True, True]
    assert writer.commits == PROBE_EVERY + 3
    assert writer.inline_commits == 3


def test_an_inline_commit_waits_for_the_actors_transaction(store: Store) -> None:
    """The one-writer token: commit_now on the loop's thread does not begin its
    transaction while the actor's is open on a worker thread, and waits for it
    without blocking the event loop."""
    writer = StoreWriter(store, Metrics(), inline_max_s=lambda: 3600.0)
    release = threading.Event()
    order: list[str] = []

    async def main() -> None:
        in_flight = trio.Event()

        def slow(txn: lmdb.Transaction) -> bytes:
            trio.from_thread.run_sync(in_flight.set)
            release.wait(timeout=5)  # bounded, so a broken writer fails, not hangs
            order.append("actor's job")
            return put(store, b"a")(txn)

        def now(txn: lmdb.Transaction) -> bytes:
            order.append("inline job")
            return put(store, b"n")(txn)

        async def inline() -> None:
            await writer.commit_now(now)
            order.append("inline returned")

        async with trio.open_nursery() as actor:
            actor.start_soon(writer.run)
            async with trio.open_nursery() as callers:
                callers.start_soon(writer.submit, slow)
                await in_flight.wait()
                callers.start_soon(inline)
                await trio.testing.wait_all_tasks_blocked()
                order.append("loop still runs")
                release.set()
            writer.close()

    trio.run(main)
    assert order == ["loop still runs", "actor's job", "inline job", "inline returned"]
    assert (writer.commits, writer.inline_commits) == (2, 1)


def test_commit_now_reports_job_and_transaction_failures_apart(tmp_path: Path) -> None:
    store = open_store(tmp_path, map_size=MB, max_map_size=MB)
    writer = StoreWriter(store, Metrics(), inline_max_s=lambda: 3600.0)
    boom = KeyError("mine")

    def bad(txn: lmdb.Transaction) -> None:
        raise boom

    async def main() -> None:
        with pytest.raises(KeyError) as own:
            await writer.commit_now(bad)
        assert own.value is boom
        with pytest.raises(StorageFull):
            await writer.commit_now(put(store, b"huge", b"x" * 2 * MB))

    try:
        trio.run(main)
        # The job's own failure still committed its (empty) transaction.
        assert (writer.commits, writer.inline_commits) == (1, 1)
        assert writer.last_error is not None and writer.last_error.startswith("StorageFull:")
        assert stored(store, b"huge") is None
    finally:
        store.close()


# --- receive_batch: the intake of each batching actor -----------------------


def run_mock(main: Callable[[], Awaitable[None]]) -> None:
    trio.run(main, clock=trio.testing.MockClock(autojump_threshold=0))


def test_receive_batch_waits_for_the_first_item_only() -> None:
    got: list[tuple[float, tuple[list[int], int] | None]] = []

    async def main() -> None:
        send, recv = trio.open_memory_channel[int](16)

        async def producer() -> None:
            await trio.sleep(2.0)
            send.send_nowait(1)
            send.send_nowait(2)
            await trio.sleep(1.0)
            send.send_nowait(3)  # too late for the first batch
            await trio.sleep(1.0)
            send.close()

        async with trio.open_nursery() as nursery:
            nursery.start_soon(producer)
            while (batch := await receive_batch(recv, 10)) is not None:
                got.append((trio.current_time(), batch))
            got.append((trio.current_time(), None))

    run_mock(main)
    assert got == [(2.0, ([1, 2], 2)), (3.0, ([3], 1)), (4.0, None)]


def test_receive_batch_stops_at_the_weight_limit_in_order() -> None:
    batches: list[tuple[list[int], int]] = []

    async def main() -> None:
        send, recv = trio.open_memory_channel[int](16)
        for item in (100, 3, 3, 3, 3, 1):
            send.send_nowait(item)
        send.close()
        while (batch := await receive_batch(recv, 7, weight=lambda n: n)) is not None:
            batches.append(batch)

    run_mock(main)
    # The first item is taken whatever its weight; a batch closes once it has
    # reached the limit, so the item that crosses it is still in.
    assert batches == [([100], 100), ([3, 3, 3], 9), ([3, 1], 4)]
