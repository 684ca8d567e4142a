"""Fixtures for the ring tests: real ring files under tmp_path, real processes.

The byte offsets below restate the layout documented in
native/include/knhk_ring.h; tests use them to damage or inspect a ring file the
way a crash or a foreign build would.
"""

from __future__ import annotations

import os
import shutil
import struct
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.integration.conftest import REPO, make_daemon  # noqa: F401  (fixture)

NATIVE = REPO / "native"

VERSION_OFFSET = 8
SNAPSHOT_OFFSET = 64
LANES_OFFSET = 256
LANE_SIZE = 256
LANE_HEAD = 0
LANE_CONSUMED = 128
LANE_DURABLE = 136
PAGE = 4096


def header_size(lanes: int) -> int:
    end = LANES_OFFSET + lanes * LANE_SIZE
    return (end + PAGE - 1) // PAGE * PAGE


def slot_offset(lanes: int, capacity: int, lane: int, seq: int) -> int:
    return header_size(lanes) + (lane * capacity + (seq & (capacity - 1))) * 64


def read_u64(path: Path, offset: int) -> int:
    with path.open("rb") as fh:
        fh.seek(offset)
        return int(struct.unpack("=Q", fh.read(8))[0])


def write_bytes(path: Path, offset: int, data: bytes) -> None:
    # pwrite through the same page cache the mappings use: visible at once.
    fd = os.open(path, os.O_RDWR)
    try:
        os.pwrite(fd, data, offset)
    finally:
        os.close(fd)


def lane_field(lane: int, field: int) -> int:
    return LANES_OFFSET + lane * LANE_SIZE + field


@pytest.fixture
def ring_path(tmp_path: Path) -> Path:
    return tmp_path / "test.ring"


def spawn_producer(
    ring: Path,
    tag: int,
    *,
    count: int = 1000,
    batch: int = 32,
    forever: bool = False,
    pace_ms: float = 0.0,
) -> subprocess.Popen[str]:
    args = [sys.executable, "-m", "tests.native.producer_proc", str(ring), "--tag", str(tag)]
    args += ["--count", str(count), "--batch", str(batch), "--pace-ms", str(pace_ms)]
    if forever:
        args.append("--forever")
    return subprocess.Popen(
        args, cwd=str(REPO), stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True
    )


@pytest.fixture
def procs() -> Iterator[list[subprocess.Popen[str]]]:
    """Processes a test starts; killed at the end whatever happened."""
    started: list[subprocess.Popen[str]] = []
    yield started
    for p in started:
        if p.poll() is None:
            p.kill()
        p.wait()


# The flags a C producer may build the public header and library with.
STRICT_CFLAGS = [
    "-std=c11", "-O2", "-Wall", "-Wextra", "-Werror", "-Wpedantic", "-Wconversion", "-Wshadow",
]  # fmt: skip


def cc_strict(*args: str) -> subprocess.CompletedProcess[str]:
    """Run the C compiler with STRICT_CFLAGS and the public include directory
    (skips the test when there is no compiler)."""
    cc = shutil.which("cc") or shutil.which("gcc")
    if cc is None:
        pytest.skip("no C compiler")
    return subprocess.run(
        [cc, *STRICT_CFLAGS, f"-I{NATIVE / 'include'}", *args],
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )


@pytest.fixture(scope="session")
def c_producer(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """native/examples/producer.c built with the strict portable flags."""
    out = tmp_path_factory.mktemp("cbuild") / "producer"
    res = cc_strict(
        str(NATIVE / "examples" / "producer.c"), str(NATIVE / "src" / "knhk_ring.c"), "-o", str(out)
    )
    assert res.returncode == 0, res.stderr
    return out
