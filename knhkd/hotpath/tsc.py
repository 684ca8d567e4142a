"""Ticks: what one is, how many there are per second, and how to turn a tick
stamp into wall-clock time.

One tick is one increment of the CPU's time-stamp counter (RDTSC) on x86-64, of
CNTVCT_EL0 on AArch64, and one nanosecond of CLOCK_MONOTONIC elsewhere
(``ring.ticks_source()``). The rate is taken, in this order, from
1. an explicit override (``[ring] tsc_hz``), for machines where measuring lies;
2. the architecture when it states it exactly (AArch64, the monotonic fallback);
3. ``/sys/devices/system/cpu/cpu0/tsc_freq_khz`` where the kernel exposes it;
4. calibration against CLOCK_MONOTONIC: the median of three 20 ms windows.
``/proc/cpuinfo``'s "cpu MHz" is never used: it is the current core clock, not
the TSC rate (on the development machines the kernel's boot estimate and the
measured TSC rate already differ by 6 %).

Guarantees: ``detect`` never returns a rate of 0; it blocks for about 60 ms when
it has to calibrate, so call it off the event loop. ``TickClock`` maps stamps to
Unix nanoseconds from one (ticks, time) pair; refresh it now and then (the TSC
and the NTP-disciplined wall clock drift apart by parts per million).

Must never: be used to order events (ticks of different hosts, or of a host
whose TSC is not invariant, are not comparable); import above layer 2.
"""

from __future__ import annotations

import statistics
import time
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Final

from knhkd.hotpath._ring_cffi import lib

SYSFS_TSC_KHZ: Final = Path("/sys/devices/system/cpu/cpu0/tsc_freq_khz")
CALIBRATION_WINDOW_NS: Final = 20_000_000
FUTURE_SLACK_NS: Final = 3600 * 10**9


@dataclass(frozen=True)
class TickRate:
    hz: int
    # "override", "exact", "sysfs" or "calibrated"
    how: str

    def ns(self, ticks: float) -> float:
        return ticks * 1e9 / self.hz


def detect(override_hz: int = 0, *, sysfs: Path = SYSFS_TSC_KHZ) -> TickRate:
    if override_hz > 0:
        return TickRate(override_hz, "override")
    exact = int(lib.knhk_ticks_hz_exact())
    if exact:
        return TickRate(exact, "exact")
    try:
        khz = int(sysfs.read_text().strip())
    except (OSError, ValueError):
        khz = 0
    if khz > 0:
        return TickRate(khz * 1000, "sysfs")
    samples = [int(lib.knhk_ticks_calibrate(CALIBRATION_WINDOW_NS)) for _ in range(3)]
    hz = int(statistics.median(samples))
    if hz <= 0:
        raise RuntimeError(f"tick calibration failed: {samples}")
    return TickRate(hz, "calibrated")


class TickClock:
    """Tick stamps → Unix time, from one reference (ticks, ns) pair."""

    __slots__ = ("_ref_ns", "_ref_ticks", "_scale", "rate", "taken_monotonic")

    def __init__(self, rate: TickRate) -> None:
        self.rate = rate
        self._scale = 1e9 / rate.hz
        # Bracket the clock read with two tick reads; use their midpoint.
        t0 = int(lib.knhk_ticks_now())
        ns = time.time_ns()
        t1 = int(lib.knhk_ticks_now())
        self._ref_ticks = (t0 + t1) // 2
        self._ref_ns = ns
        self.taken_monotonic = time.monotonic()

    def params(self) -> tuple[int, int, float, int]:
        """(reference ns, reference ticks, ns per tick, latest plausible ns), for
        loops that inline ``to_datetime`` (a method call costs as much)."""
        return self._ref_ns, self._ref_ticks, self._scale, self._ref_ns + FUTURE_SLACK_NS

    def to_ns(self, ticks: int) -> int:
        return self._ref_ns + int((ticks - self._ref_ticks) * self._scale)

    def to_datetime(self, ticks: int) -> datetime | None:
        """UTC time of a stamp (microsecond resolution), or None when the stamp
        is not plausible: before 1970, or more than ``FUTURE_SLACK_NS`` ahead of
        the reference (a stamp taken before a reboot restarted the counter)."""
        ns = self._ref_ns + int((ticks - self._ref_ticks) * self._scale)
        if ns < 0 or ns > self._ref_ns + FUTURE_SLACK_NS:
            return None
        return datetime.fromtimestamp((ns + 500) // 1000 / 1e6, UTC)
