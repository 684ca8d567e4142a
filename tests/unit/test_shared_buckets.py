"""auth/ratelimit.py ``SharedBuckets``: one table of token buckets for the
daemon and its HTTP workers, over a real file mapped by real processes."""

from __future__ import annotations

import multiprocessing
import os
from pathlib import Path

import pytest

from knhkd.auth.ratelimit import PROBES, SLOT, SharedBuckets


def _table(tmp_path: Path, max_principals: int = 8) -> Path:
    return SharedBuckets.create(tmp_path / "rate-buckets", max_principals)


def test_two_openers_take_from_one_bucket(tmp_path: Path) -> None:
    path = _table(tmp_path)
    a, b = SharedBuckets(path), SharedBuckets(path)
    taken = [t.take("p", 100.0, rate=1.0, burst=3.0) for t in (a, b, a)]
    assert taken == [0.0, 0.0, 0.0]
    assert b.take("p", 100.0, rate=1.0, burst=3.0) == pytest.approx(1.0)
    # Refilled at rate_per_s, seen by both.
    assert a.take("p", 101.5, rate=1.0, burst=3.0) == 0.0
    assert b.take("p", 101.5, rate=1.0, burst=3.0) == pytest.approx(0.5)
    # Another principal has a bucket of its own.
    assert b.take("q", 101.5, rate=1.0, burst=1.0) == 0.0


def test_the_least_recently_used_slot_of_a_full_window_is_dropped(tmp_path: Path) -> None:
    path = _table(tmp_path, max_principals=8)  # 16 slots: one probe window
    t = SharedBuckets(path)
    for i in range(PROBES):
        assert t.take(f"p{i}", float(i), rate=0.001, burst=1.0) == 0.0
    # Every slot is taken; p0's (the oldest take) goes to the newcomer.
    assert t.take("new", 100.0, rate=0.001, burst=1.0) == 0.0
    assert t.take("p0", 101.0, rate=0.001, burst=1.0) == 0.0  # a full burst again
    assert t.take("p5", 102.0, rate=0.001, burst=1.0) > 0  # still empty


def test_the_table_is_sized_for_max_principals_and_checked_on_open(tmp_path: Path) -> None:
    path = _table(tmp_path, max_principals=10_000)
    assert path.stat().st_size == 32768 * SLOT.size
    with pytest.raises(FileExistsError):
        SharedBuckets.create(path, 10)
    odd = tmp_path / "odd"
    odd.write_bytes(b"\0" * (SLOT.size * 20))
    with pytest.raises(ValueError, match="not a bucket table"):
        SharedBuckets(odd)


def _hammer(path: str, out: multiprocessing.Queue[int]) -> None:
    t = SharedBuckets(Path(path))
    out.put(sum(t.take("p", 50.0, rate=1e-9, burst=500.0) == 0.0 for _ in range(2000)))


def test_processes_taking_at_once_never_take_more_than_the_burst(tmp_path: Path) -> None:
    # Four processes, 8,000 takes at the same instant of a 500-request burst:
    # without the record lock, interleaved read-modify-writes hand out more.
    path = _table(tmp_path)
    ctx = multiprocessing.get_context("fork")
    out: multiprocessing.Queue[int] = ctx.Queue()
    procs = [ctx.Process(target=_hammer, args=(str(path), out)) for _ in range(4)]
    for p in procs:
        p.start()
    total = sum(out.get(timeout=60) for _ in procs)
    for p in procs:
        p.join(timeout=60)
        assert p.exitcode == 0
    assert total == 500
    assert os.stat(path).st_size == 16 * SLOT.size


def test_max_principals_buckets_are_kept(tmp_path: Path) -> None:
    # Twice as many slots as principals: none is dropped while that many are
    # active, so none gets its burst back early.
    t = SharedBuckets(_table(tmp_path, max_principals=1000))
    names = [f"https://idp.example#user-{i}" for i in range(1000)]
    assert all(t.take(n, 10.0, rate=0.001, burst=1.0) == 0.0 for n in names)
    assert all(t.take(n, 11.0, rate=0.001, burst=1.0) > 0 for n in names)
