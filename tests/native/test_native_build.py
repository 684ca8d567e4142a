"""The C side on its own: warning-free under strict flags, and the example
producer (native/examples/producer.c) interoperating with the Python consumer."""

from __future__ import annotations

import subprocess
import time
from pathlib import Path

import pytest

from knhkd.hotpath.codec import RingCodec
from knhkd.hotpath.ring import Consumer, ticks_source
from knhkd.hotpath.tsc import TickClock, detect
from tests.native.conftest import NATIVE, cc_strict


@pytest.mark.parametrize("source", ["src/knhk_ring.c", "examples/producer.c"])
def test_c_sources_are_warning_free_under_strict_flags(source: str) -> None:
    res = cc_strict("-fsyntax-only", str(NATIVE / source))
    assert res.returncode == 0, res.stderr


def test_the_c_example_producer_hands_records_to_a_python_consumer(
    ring_path: Path, c_producer: Path
) -> None:
    c = Consumer.create_or_open(ring_path, lanes=2, capacity=64)
    c.begin()
    c.publish_snapshot("ab" * 32, 7, 123)
    proc = subprocess.Popen(
        [str(c_producer), str(ring_path), "500", "4", "42"],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    clock = TickClock(detect())
    codec = RingCodec({"42": "dock.scan"})
    items = []
    deadline = time.monotonic() + 30
    try:
        while proc.poll() is None or c.lane_stats()[0].head > c.lane_stats()[0].durable:
            assert time.monotonic() < deadline
            d = c.consume(100)  # smaller than the producer's output: back-pressure
            out = codec.batch(d.records, d.count, clock)
            assert not out.rejected
            items += out.inputs()
            c.mark_durable(d.next_seq)
            time.sleep(0.001)
        stdout, stderr = proc.communicate(timeout=30)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
    assert proc.returncode == 0, stderr
    assert "snapshot v7 id abababab" in stdout and "durable through seq 500" in stdout
    assert len(items) == 500
    assert {o.event_type for o in items} == {"dock.scan"}
    assert {o.sector for o in items} == {"logistics"}
    assert [o.value for o in items[:3]] == [20.0, 20.1, 20.2]
    assert all(o.event_time is not None for o in items)
    assert ticks_source() in ("rdtsc", "cntvct", "clock_monotonic")
    c.close()


def test_the_c_example_producer_stops_waiting_on_a_removed_ring(
    ring_path: Path, c_producer: Path
) -> None:
    with Consumer.create_or_open(ring_path, lanes=1, capacity=64) as c:
        c.begin()  # never drains: the producer waits for durability
        proc = subprocess.Popen(
            [str(c_producer), str(ring_path), "10"],
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
        )
        try:
            deadline = time.monotonic() + 30
            while c.lane_stats()[0].head < 10:
                assert time.monotonic() < deadline and proc.poll() is None
                time.sleep(0.01)
            ring_path.unlink()
            _, stderr = proc.communicate(timeout=30)
        finally:
            if proc.poll() is None:
                proc.kill()
                proc.wait()
    assert proc.returncode == 1
    assert "was removed or replaced; reopen it" in stderr
