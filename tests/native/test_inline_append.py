"""The inline producer path (knhk_append_inline, knhk_ring.h) from C, against
the Python consumer: mixed with knhk_append and knhk_append_batch on one
handle, across wrap-around and a full lane, every record arrives exactly once,
in order, with the right full_count and tick samples.

The C side is tests/native/inline_producer.c, built with the strict flags of
``make -C native check`` and driven one command at a time, so the test knows
the lane's state at every step and predicts each result exactly.
"""

from __future__ import annotations

import random
import struct
import subprocess
from collections.abc import Iterator
from pathlib import Path

import pytest

from knhkd.hotpath.ring import OP_APPEND, Consumer
from tests.native.conftest import NATIVE, cc_strict

HERE = Path(__file__).resolve().parent
CAPACITY = 64
SAMPLE_PERIOD = 1024  # KNHK_SAMPLE_PERIOD
# seq, tsc, sector, event, kind, len, flags, payload as five int64
SLOT = struct.Struct("=QQHHBBH5q")
EVENT = {"a": 1, "i": 2, "b": 3, "z": 4}
STAMP_BASE = 1_000_000


@pytest.fixture(scope="module")
def inline_producer(tmp_path_factory: pytest.TempPathFactory) -> Path:
    out = tmp_path_factory.mktemp("inline") / "inline_producer"
    res = cc_strict(
        str(HERE / "inline_producer.c"), str(NATIVE / "src" / "knhk_ring.c"), "-o", str(out)
    )
    assert res.returncode == 0, res.stderr
    return out


class Driver:
    """The C producer process, one command and one reply at a time."""

    def __init__(self, exe: Path, ring: Path) -> None:
        self.proc = subprocess.Popen(
            [str(exe), str(ring)],
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
        )
        assert self._line() == "ready 0"

    def _line(self) -> str:
        assert self.proc.stdout is not None
        line = self.proc.stdout.readline().strip()
        assert line, f"producer exited with {self.proc.wait(timeout=10)}"
        return line

    def run(self, op: str, k: int) -> tuple[int, int, int]:
        assert self.proc.stdin is not None
        self.proc.stdin.write(f"{op} {k}\n")
        self.proc.stdin.flush()
        appended, refused, head = (int(x) for x in self._line().split())
        return appended, refused, head

    def close(self) -> int:
        if self.proc.poll() is None:
            assert self.proc.stdin is not None
            self.proc.stdin.write("q\n")
            self.proc.stdin.flush()
            try:
                self.proc.wait(timeout=10)
            except subprocess.TimeoutExpired:
                self.proc.kill()
        return self.proc.wait()


@pytest.fixture
def driver(inline_producer: Path, ring_path: Path) -> Iterator[tuple[Consumer, Driver]]:
    c = Consumer.create_or_open(ring_path, lanes=1, capacity=CAPACITY)
    c.begin()
    d = Driver(inline_producer, ring_path)
    try:
        yield c, d
    finally:
        if d.proc.poll() is None:
            d.proc.kill()
        d.proc.wait()
        c.close()


def test_inline_appends_mixed_with_calls_arrive_exactly_once_in_order(
    driver: tuple[Consumer, Driver],
) -> None:
    c, d = driver
    rng = random.Random(20261127)
    head = durable = consumed = 0
    refused_total = 0
    maker: list[str] = []  # the op that appended each value
    got: list[tuple[int, ...]] = []  # every slot drained, in order
    step = 0
    while head < 3 * SAMPLE_PERIOD + 300 or step < 40:  # ~3,400 records: ~53 laps
        step += 1
        # Mostly room, sometimes a full lane (the consumer drains rarely, or
        # reads without making durable: a full lane stays full until durable).
        op = "aizb"[step % 4] if step % 7 else rng.choice("aizb")
        k = rng.choice([1, 3, 17, 63, 64, 80]) if op == "b" else rng.randint(1, 90)
        room = CAPACITY - (head - durable)
        want = min(k, room)
        offset = head % SAMPLE_PERIOD
        sampled = (
            (offset == 0 or offset + k > SAMPLE_PERIOD) and want > 0
            if op == "b"
            else sum(1 for s in range(head, head + want) if s % SAMPLE_PERIOD == 0)
        )
        assert d.run(op, k) == (want, k - want, head + want), (step, op, k)
        maker += [op] * want
        head += want
        refused_total += k - want
        samples = [s for s in c.take_samples() if s.op == OP_APPEND]
        assert len(samples) == sampled, (step, op, samples)
        assert all(s.count == (want if op == "b" else 1) for s in samples)

        what = rng.random()
        if what < 0.5:  # drain everything and make it durable
            dr = c.consume(4 * CAPACITY)
            got += SLOT.iter_unpack(dr.records)
            c.mark_durable(dr.next_seq)
            consumed = durable = head
        elif what < 0.7:  # read some, do not make it durable yet
            m = rng.randint(1, CAPACITY)
            dr = c.consume(m)
            assert dr.count == min(m, head - consumed)
            got += SLOT.iter_unpack(dr.records)
            consumed += dr.count
        # else: leave the lane as it is; it fills
        stats = c.lane_stats()[0]
        assert (stats.head, stats.consumed, stats.durable) == (head, consumed, durable)
        assert stats.full_count == refused_total

    assert d.close() == 0
    dr = c.consume(4 * CAPACITY)
    got += SLOT.iter_unpack(dr.records)
    c.mark_durable(dr.next_seq)
    stats = c.lane_stats()[0]
    assert stats.full_count == refused_total > 0
    assert stats.corrupt_count == 0 and stats.durable == stats.head == head

    # Every value exactly once, in order, each slot's seq its value.
    assert [r[0] for r in got] == list(range(head))
    assert [r[7] for r in got] == list(range(head))
    assert {op for op in maker} == set("aizb")
    for r, op in zip(got, maker, strict=True):
        seq, tsc, sector, event, kind, length, flags = r[:7]
        assert (sector, event, kind, length, flags) == (5, EVENT[op], 1, 1, 0)
        assert r[8:] == (0, 0, 0, 0)
        if op == "z":  # tsc 0: stamped inline with the tick counter
            assert tsc > STAMP_BASE + head
        else:
            assert tsc == STAMP_BASE + seq
