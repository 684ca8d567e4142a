"""loop/write_gate.py: causes close and lift the gate independently."""

from __future__ import annotations

import pytest
import trio
import trio.testing

from knhkd.errors import ReadOnly, StorageFull
from knhkd.loop.write_gate import WriteGate


def test_open_until_a_cause_closes_it_and_until_every_cause_lifts() -> None:
    async def main() -> None:
        gate = WriteGate()
        gate.check()
        assert gate.open and gate.reopened.is_set()
        gate.close("storage", StorageFull("no space left on device"))
        gate.close("integrity", ReadOnly("the store is behind its anchor"))
        assert not gate.open and not gate.reopened.is_set()
        with pytest.raises(StorageFull):
            gate.check()  # the first cause answers first
        assert gate.closed_causes() == {
            "storage": "no space left on device",
            "integrity": "the store is behind its anchor",
        }
        gate.lift("storage")
        with pytest.raises(ReadOnly):
            gate.check()
        assert not gate.reopened.is_set()
        gate.lift("integrity")
        gate.lift("integrity")  # lifting what is not held is nothing
        gate.check()
        assert gate.reopened.is_set() and gate.closed_causes() == {}

    trio.run(main)


def test_a_waiter_wakes_when_the_last_cause_lifts() -> None:
    async def main() -> None:
        gate = WriteGate()
        gate.close("storage", StorageFull("map at its ceiling"))
        woke: list[bool] = []

        async def waiter() -> None:
            await gate.reopened.wait()
            woke.append(gate.open)

        async with trio.open_nursery() as n:
            n.start_soon(waiter)
            await trio.testing.wait_all_tasks_blocked()
            assert woke == []
            gate.close("storage", StorageFull("map at its ceiling, still"))
            await trio.testing.wait_all_tasks_blocked()
            assert woke == []
            gate.lift("storage")
        assert woke == [True]

    trio.run(main)
