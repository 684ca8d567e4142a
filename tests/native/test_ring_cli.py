"""``knhkctl ring``: the ring file read directly, with no daemon running."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

from knhkd.hotpath.records import SECTOR_CODES
from knhkd.hotpath.ring import Consumer, Producer
from tests.native.conftest import VERSION_OFFSET, write_bytes

GENERIC = SECTOR_CODES["generic"]


def knhkctl(data_dir: Path, *args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "knhkd.cli.knhkctl", "--data-dir", str(data_dir), "ring", *args],
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )


def test_ring_status_reports_lanes_cursors_and_the_snapshot(tmp_path: Path) -> None:
    ring = tmp_path / "observations.ring"  # the default place in the data directory
    with Consumer.create_or_open(ring, lanes=2, capacity=64) as c:
        c.begin()
        c.publish_snapshot("ab" * 32, 3, 1_700_000_000_000_000_000)
        with Producer(ring) as p:
            assert p.append_batch([(GENERIC, 1, i) for i in range(70)]).appended == 64
            d = c.consume(40)
            c.mark_durable(d.next_seq)
            c.consume(10)  # read, not yet durable
            res = knhkctl(tmp_path, "--format", "json")
            assert res.returncode == 0, res.stderr
            st = json.loads(res.stdout)
            table = knhkctl(tmp_path)
    assert st["lanes"] == 2 and st["capacity"] == 64 and st["snapshot_version"] == 3
    assert st["snapshot_id"] == "ab" * 32 and st["ring_id"] == f"{c.ring_id:016x}"
    lane = next(s for s in st["lane_status"] if s["claims"])
    assert (lane["head"], lane["consumed"], lane["durable"], lane["backlog"]) == (64, 50, 40, 24)
    assert lane["full_count"] == 6 and lane["owner_pid"] == os.getpid() and lane["owner_alive"]
    assert (st["backlog"], st["full_count"], st["corrupt_count"]) == (24, 6, 0)
    assert table.returncode == 0, table.stderr
    assert "snapshot: v3 abababababababab" in table.stdout
    assert f"{os.getpid()} (live)" in table.stdout
    assert "backlog 24, refused (lane full) 6, corrupt 0" in table.stdout


def test_a_missing_or_unreadable_ring_is_one_line_and_exit_2(tmp_path: Path) -> None:
    res = knhkctl(tmp_path)
    assert res.returncode == 2 and res.stdout == ""
    assert res.stderr.count("\n") == 1 and "no ring at" in res.stderr
    ring = tmp_path / "other.ring"
    Consumer.create_or_open(ring, lanes=1, capacity=64).close()
    write_bytes(ring, VERSION_OFFSET, (99).to_bytes(4, "little"))
    res = knhkctl(tmp_path, "--path", str(ring))
    assert res.returncode == 2 and res.stderr.count("\n") == 1
    assert "version" in res.stderr and "99" in res.stderr


def test_output_cut_short_by_the_reader_is_not_an_error(tmp_path: Path) -> None:
    # `true` exits without reading, long before Python has started: the write
    # meets a closed pipe.
    ring = tmp_path / "observations.ring"
    with Consumer.create_or_open(ring, lanes=4, capacity=64):
        cmd = f"{sys.executable} -m knhkd.cli.knhkctl --data-dir {tmp_path} ring | true"
        res = subprocess.run(
            ["sh", "-c", cmd],
            capture_output=True, text=True, timeout=60, check=False,
        )  # fmt: skip
    assert res.returncode == 0 and res.stderr == ""


def test_append_without_a_drain_is_not_durable_and_says_so(tmp_path: Path) -> None:
    ring = tmp_path / "observations.ring"
    with Consumer.create_or_open(ring, lanes=1, capacity=64) as c:
        c.begin()  # attached, never drains
        res = knhkctl(tmp_path, "append", "--sector", "generic", "--event", "3",
                      "--value", "[1, 2.5]", "--wait", "0.3")  # fmt: skip
        assert res.returncode == 1 and "appended: lane 0 seq 0" in res.stdout
        assert res.stderr.count("\n") == 1 and "not durable after 0.3 s" in res.stderr
        d = c.consume(10)
        assert d.count == 1
    too_long = '"' + "x" * 41 + '"'
    for bad, why in (("[1, true]", "--value"), ("{", "not JSON"), (too_long, "--value")):
        res = knhkctl(tmp_path, "append", "--sector", "generic", "--event", "1", "--value", bad)
        assert res.returncode == 2 and why in res.stderr and res.stderr.count("\n") == 1
    res = knhkctl(tmp_path, "append", "--sector", "generic", "--event", "70000")
    assert res.returncode == 2 and "0..65535" in res.stderr
