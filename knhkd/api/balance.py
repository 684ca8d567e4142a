"""Connections spread evenly over the HTTP worker processes (api/workers.py).

Every worker accepts on the one listening socket they share, and the kernel
hands a new connection to whichever accepting process it wakes first: one
worker often took 15 or all 16 of a client's keep-alive connections
(measured with ``ss``), and then served them on one core while the other
idled; closed-loop ingest swung between ~830 and ~1,600 req/s from one run
to the next on the same build. So each worker publishes how many
connections it has open, in a slot of a small file the daemon makes in the
front's private directory (mapped shared, one 8-byte aligned slot per
worker: a slot is written by its worker alone, and a read of a stale value
only costs balance), and a worker that already has more than the least
loaded one lets that one accept first.

Guarantees: a worker defers an accept by at most ``MAX_DEFER_S`` in all
(a hung or dead peer never stops it from accepting); the slot of a worker
that exited reads ``GONE``, which no live worker defers to; nothing here is
on a request's path, only on a connection's accept.

Must never: refuse or drop a connection (deferring leaves it in the kernel's
backlog, where the other worker takes it), or block the event loop.
"""

from __future__ import annotations

import mmap
import os
import struct
from pathlib import Path

import trio

FILE = "connections"
SLOT = struct.Struct("=q")
# What a slot holds while its worker is not running: more than any live
# worker ever has open, so nobody defers to it.
GONE = 1 << 62
# How long, in all, a worker lets the least loaded one go first; and how often
# it looks again meanwhile.
MAX_DEFER_S = 0.05
STEP_S = 0.001


def create(runtime: Path, count: int) -> Path:
    """The daemon's part: the file, every slot ``GONE`` until its worker starts."""
    path = runtime / FILE
    path.write_bytes(SLOT.pack(GONE) * count)
    return path


def mark_gone(path: Path, index: int) -> None:
    """The daemon's part when worker ``index`` exited (a write of its slot)."""
    with path.open("r+b") as fh:
        fh.seek(index * SLOT.size)
        fh.write(SLOT.pack(GONE))


class Shares:
    """One worker's view of the slots: its own count, and its turn to accept."""

    def __init__(self, path: Path, index: int) -> None:
        fd = os.open(path, os.O_RDWR)
        try:
            self._map = mmap.mmap(fd, 0)
        finally:
            os.close(fd)
        self._count = len(self._map) // SLOT.size
        if not 0 <= index < self._count:
            raise ValueError(f"worker {index} has no slot of {self._count}")
        self._index = index
        self._open = 0
        self._publish()

    def _publish(self) -> None:
        SLOT.pack_into(self._map, self._index * SLOT.size, self._open)

    def _fewest_elsewhere(self) -> int:
        return min(
            (SLOT.unpack_from(self._map, i * SLOT.size)[0] for i in range(self._count)
             if i != self._index),
            default=GONE,
        )  # fmt: skip

    async def turn(self) -> None:
        """Return when this worker should accept the next connection."""
        waited = 0.0
        while self._open > self._fewest_elsewhere() and waited < MAX_DEFER_S:
            await trio.sleep(STEP_S)
            waited += STEP_S

    def opened(self) -> None:
        self._open += 1
        self._publish()

    def closed(self) -> None:
        self._open -= 1
        self._publish()
