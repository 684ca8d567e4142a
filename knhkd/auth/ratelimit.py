"""Per-principal token buckets (``[auth.rate_limit]``), so one producer cannot
starve the others.

Guarantees:
- Each principal (by ``Principal.name``) has a bucket of ``burst`` requests
  refilled at ``rate_per_s``; the first ``overrides`` entry naming its subject
  or one of its roles gives its own rate and burst. ``rate_per_s = 0`` (the
  default) is no limit at all.
- ``take`` answers 0 (go ahead, one request taken) or the seconds until one
  request's worth has refilled (refused, nothing taken).
- Memory is bounded: at most ``max_principals`` buckets, least recently used
  dropped first. A bucket idle for ``burst / rate`` seconds is full, so
  dropping it loses nothing; dropping a busier one (only when more principals
  than that are active at once) hands that principal a full burst again.
- With a ``SharedBuckets`` table, every process that opens it (the daemon
  and its HTTP workers) takes from the same buckets, so a principal's limit
  holds across them whichever process serves its connections. The table is
  a file mapped shared: a slot per bucket (the principal's name hashed, its
  tokens, the monotonic time of its last take: ``CLOCK_MONOTONIC`` is the
  machine's, not the process's), found by linear probing over at most
  ``PROBES`` slots; when all of those are taken by others, the least
  recently used of them is dropped (LRU within the probe window). A take
  holds a POSIX record lock on the file (``lockf``: per process, released
  by the kernel if its holder dies) for the few microseconds it reads and
  writes its slot. Nothing is touched while the limit is off.

Must never: read the clock (``now`` is given, monotonic seconds).
"""

from __future__ import annotations

import fcntl
import hashlib
import mmap
import os
import struct
from collections import OrderedDict
from pathlib import Path

from knhkd.config import RateLimitConfig
from knhkd.model import Principal

# The table's name in a daemon's private directory (api/pool.py makes it).
FILE = "rate-buckets"
# key (a principal's name hashed; 0: free), tokens, time of the last take
SLOT = struct.Struct("=Qdd")
# Slots looked at for one principal before the least recently used of them
# is dropped for it.
PROBES = 16


class SharedBuckets:
    """The bucket table every process of one daemon shares (module docstring)."""

    def __init__(self, path: Path) -> None:
        self.path = path
        self._fd = os.open(path, os.O_RDWR | os.O_CLOEXEC)
        size = os.fstat(self._fd).st_size
        self._slots = size // SLOT.size
        if self._slots < PROBES or self._slots & (self._slots - 1):
            os.close(self._fd)
            raise ValueError(f"{path}: not a bucket table ({size} bytes)")
        self._map = mmap.mmap(self._fd, size)

    @staticmethod
    def create(path: Path, max_principals: int) -> Path:
        """The table for ``max_principals`` buckets (twice as many slots, a
        power of two: sparse, all free), made before any process opens it."""
        slots = max(PROBES, 1 << (2 * max_principals - 1).bit_length())
        fd = os.open(path, os.O_RDWR | os.O_CREAT | os.O_EXCL | os.O_CLOEXEC, 0o600)
        try:
            os.ftruncate(fd, slots * SLOT.size)
        finally:
            os.close(fd)
        return path

    def take(self, name: str, now: float, rate: float, burst: float) -> float:
        hashed = int.from_bytes(hashlib.blake2b(name.encode(), digest_size=8).digest(), "little")
        key = hashed | 1  # never 0, which marks a free slot
        mask = self._slots - 1
        start = (hashed >> 1) & mask  # not from the forced bit: every slot can start
        fcntl.lockf(self._fd, fcntl.LOCK_EX)
        try:
            victim, victim_last = -1, 0.0
            for probe in range(PROBES):
                offset = ((start + probe) & mask) * SLOT.size
                found, tokens, last = SLOT.unpack_from(self._map, offset)
                if found == key:
                    break
                if found == 0:
                    tokens, last = burst, now
                    break
                if victim < 0 or last < victim_last:
                    victim, victim_last = offset, last
            else:
                offset, tokens, last = victim, burst, now
            wait = _refill(tokens, last, now, rate, burst)
            SLOT.pack_into(self._map, offset, key, wait[0], now)
        finally:
            fcntl.lockf(self._fd, fcntl.LOCK_UN)
        return wait[1]


def _refill(
    tokens: float, last: float, now: float, rate: float, burst: float
) -> tuple[float, float]:
    """A bucket's tokens after one take at ``now``, and the seconds to wait
    (0: taken; else nothing was taken)."""
    tokens = min(burst, tokens + max(0.0, now - last) * rate)
    if tokens >= 1.0:
        return tokens - 1.0, 0.0
    return tokens, (1.0 - tokens) / rate


class RateLimiter:
    """The limits of one configuration, over this process's buckets or, with
    ``shared``, over the table all the daemon's processes share."""

    def __init__(self, cfg: RateLimitConfig, shared: SharedBuckets | None = None) -> None:
        self.cfg = cfg
        self.shared = shared
        # name -> [tokens, last refill time, rate, burst]
        self._buckets: OrderedDict[str, list[float]] = OrderedDict()

    def __len__(self) -> int:
        return len(self._buckets)

    def _limits(self, principal: Principal) -> tuple[float, float]:
        for o in self.cfg.overrides:
            by_role = bool(o.role) and o.role in principal.roles
            if by_role or (o.subject and o.subject == principal.name):
                return o.rate_per_s, float(o.burst)
        return self.cfg.rate_per_s, float(self.cfg.burst)

    def take(self, principal: Principal, now: float) -> float:
        name = principal.name
        if self.shared is not None:
            rate, burst = self._limits(principal)
            return 0.0 if rate <= 0 else self.shared.take(name, now, rate, burst)
        bucket = self._buckets.get(name)
        if bucket is None:
            rate, burst = self._limits(principal)
            if rate <= 0:
                return 0.0
            bucket = [burst, now, rate, burst]
            self._buckets[name] = bucket
            if len(self._buckets) > self.cfg.max_principals:
                self._buckets.popitem(last=False)
        else:
            self._buckets.move_to_end(name)
        tokens, wait = _refill(bucket[0], bucket[1], now, bucket[2], bucket[3])
        bucket[0], bucket[1] = tokens, now
        return wait
