"""The cycle scheduler in-process, on trio's MockClock: interval cycles, on-demand
cycles and a full analyzer channel. The analyzer side is the real ``each_cycle``
with a phase that records when each cycle ran. Every time asserted is virtual."""

from __future__ import annotations

import logging
from collections.abc import Awaitable, Callable

import pytest
import trio
import trio.testing

from knhkd.loop.cycle import AnalyzerMessage, Cycle, CycleScheduler, Trigger, each_cycle
from knhkd.loop.writer import CommitFailed


def run(main: Callable[[], Awaitable[None]]) -> None:
    trio.run(main, clock=trio.testing.MockClock(autojump_threshold=0))


class Analyzer:
    """The consumer end of the analyzer channel: runs each cycle that arrives
    for ``takes_s`` seconds, then finishes it (or fails it, when told to)."""

    def __init__(self, takes_s: float = 0.0, fail_first: int = 0) -> None:
        self.takes_s = takes_s
        self.fail_first = fail_first
        self.ran: list[tuple[float, Trigger]] = []

    async def phase(self, cycle: Cycle) -> None:
        self.ran.append((trio.current_time(), cycle.trigger))
        await trio.sleep(self.takes_s)
        if len(self.ran) <= self.fail_first:
            # A writer failure ends the cycle, not the actor (Cycle.run_phase).
            raise CommitFailed("disk gone")
        cycle.finish(cycle.build_report(outcome="completed", detail=""))

    def times(self, trigger: Trigger = "interval") -> list[float]:
        return [t for t, tr in self.ran if tr == trigger]


async def cycles(
    inbox: trio.MemoryReceiveChannel[AnalyzerMessage], phase: Callable[[Cycle], Awaitable[None]]
) -> None:
    """Narrows the analyzer's inbox to cycles, which is all the scheduler sends."""
    send, recv = trio.open_memory_channel[Cycle](0)
    async with trio.open_nursery() as nursery:
        nursery.start_soon(each_cycle, recv, phase)
        async for message in inbox:
            assert isinstance(message, Cycle)
            await send.send(message)


def schedule(
    analyzer: Analyzer,
    interval_s: Callable[[], float],
    script: Callable[[CycleScheduler], Awaitable[None]],
) -> None:
    """Runs the scheduler and the analyzer while ``script`` runs, on MockClock."""

    async def main() -> None:
        send, recv = trio.open_memory_channel[AnalyzerMessage](16)
        scheduler = CycleScheduler(send, interval_s)
        async with trio.open_nursery() as nursery:
            nursery.start_soon(cycles, recv, analyzer.phase)
            nursery.start_soon(scheduler.run)
            await script(scheduler)
            nursery.cancel_scope.cancel()

    run(main)


def test_interval_cycles_every_interval_s() -> None:
    analyzer = Analyzer()

    async def script(scheduler: CycleScheduler) -> None:
        await trio.sleep(26.0)

    schedule(analyzer, lambda: 5.0, script)
    assert analyzer.ran == [(5.0, "interval"), (10.0, "interval"), (15.0, "interval"),
                            (20.0, "interval"), (25.0, "interval")]  # fmt: skip


def test_the_next_interval_starts_when_the_cycle_has_finished() -> None:
    analyzer = Analyzer(takes_s=2.0)

    async def script(scheduler: CycleScheduler) -> None:
        await trio.sleep(27.0)

    schedule(analyzer, lambda: 5.0, script)
    # Never overlapping: 5 s after each cycle's end, not every 5 s.
    assert analyzer.times() == [5.0, 12.0, 19.0, 26.0]


def test_an_interval_change_applies_at_the_next_wait() -> None:
    analyzer = Analyzer()
    interval = [5.0]
    asked_at: list[float] = []

    def interval_s() -> float:
        asked_at.append(trio.current_time())
        return interval[0]

    async def script(scheduler: CycleScheduler) -> None:
        await trio.sleep(7.0)
        interval[0] = 1.0  # mid-wait: the wait under way keeps its 5 s
        await trio.sleep(6.5)

    schedule(analyzer, interval_s, script)
    assert analyzer.times() == [5.0, 10.0, 11.0, 12.0, 13.0]
    # Read once per wait, when the wait begins.
    assert asked_at == [0.0, 5.0, 10.0, 11.0, 12.0, 13.0]


def test_on_demand_cycles_run_at_once_and_leave_the_interval_alone() -> None:
    analyzer = Analyzer()
    reports: list[tuple[float, str | None]] = []

    async def script(scheduler: CycleScheduler) -> None:
        await trio.sleep(2.5)
        report = await (await scheduler.request()).wait()
        reports.append((trio.current_time(), report.trigger))
        await trio.sleep(8.0)

    schedule(analyzer, lambda: 5.0, script)
    assert reports == [(2.5, "on_demand")]
    assert analyzer.times("on_demand") == [2.5]
    assert analyzer.times("interval") == [5.0, 10.0]


def test_an_on_demand_cycle_queues_behind_the_running_interval_cycle() -> None:
    analyzer = Analyzer(takes_s=2.0)
    done_at: list[float] = []

    async def script(scheduler: CycleScheduler) -> None:
        await trio.sleep(6.0)  # the interval cycle runs 5..7
        await (await scheduler.request("on_demand")).wait()
        done_at.append(trio.current_time())
        await trio.sleep(5.0)

    schedule(analyzer, lambda: 5.0, script)
    assert analyzer.ran == [(5.0, "interval"), (7.0, "on_demand"), (12.0, "interval")]
    assert done_at == [9.0]


def test_a_failed_cycle_does_not_stop_the_schedule(caplog: pytest.LogCaptureFixture) -> None:
    analyzer = Analyzer(fail_first=1)

    async def script(scheduler: CycleScheduler) -> None:
        await trio.sleep(11.0)

    with caplog.at_level(logging.WARNING, logger="knhkd.loop.cycle"):
        schedule(analyzer, lambda: 5.0, script)
    assert analyzer.times() == [5.0, 10.0]
    assert any("disk gone" in r.getMessage() for r in caplog.records)


def test_a_full_analyzer_channel_holds_the_scheduler_back_without_piling_up() -> None:
    analyzer = Analyzer()
    interval_asked = 0
    received: list[tuple[float, str]] = []

    def interval_s() -> float:
        nonlocal interval_asked
        interval_asked += 1
        return 5.0

    async def main() -> None:
        send, recv = trio.open_memory_channel[AnalyzerMessage](1)
        scheduler = CycleScheduler(send, interval_s)
        send.send_nowait([])  # committed observations the analyzer has not taken yet
        on_demand: list[Cycle] = []

        async def ask() -> None:
            on_demand.append(await scheduler.request())

        async with trio.open_nursery() as nursery:
            nursery.start_soon(scheduler.run)
            await trio.sleep(100.0)
            # One interval cycle waits to be sent; no interval wait began since.
            assert interval_asked == 1
            nursery.start_soon(ask)
            await trio.sleep(100.0)
            stats = send.statistics()
            assert (stats.current_buffer_used, stats.tasks_waiting_send) == (1, 2)
            assert on_demand == []  # an on-demand request waits for room too

            # The analyzer catches up at t=200: the observations, then exactly the
            # two waiting cycles, in the order they asked.
            async def drain() -> None:
                async for message in recv:
                    if isinstance(message, Cycle):
                        received.append((trio.current_time(), message.trigger))
                        await analyzer.phase(message)
                    else:
                        received.append((trio.current_time(), "observations"))

            nursery.start_soon(drain)
            await trio.sleep(7.0)
            nursery.cancel_scope.cancel()
        assert len(on_demand) == 1

    run(main)
    assert received == [
        (200.0, "observations"),
        (200.0, "interval"),
        (200.0, "on_demand"),
        (205.0, "interval"),
    ]
    assert interval_asked == 3
