"""What the daemon measures about itself for invariants Q2, Q4 and Q5.

Guarantees:
- Every figure is either measured here or None ("not measured"); nothing is
  guessed. CPU is judged only over at least ``CPU_MIN_WINDOW_S`` of samples
  (a short window would judge start-up, not the steady state).
- Recording a sample is O(1); windows are bounded.

Must never: block, or report a figure from a window with no samples.
"""

from __future__ import annotations

import os
import resource
import time
from collections import deque

from knhkd.model import RuntimeFigures

CPU_WINDOW_S = 60.0
CPU_MIN_WINDOW_S = 10.0
_PAGE = os.sysconf("SC_PAGE_SIZE")


def _p99(values: deque[float]) -> float | None:
    if not values:
        return None
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(len(ordered) * 0.99))]


class Figures:
    def __init__(self, window: int = 2048) -> None:
        self.request_ms: deque[float] = deque(maxlen=window)
        self.commit_ms: deque[float] = deque(maxlen=window)
        self.accepted = 0
        self.schema_rejected = 0
        self._cpu: deque[tuple[float, float]] = deque()
        self.hot_path_ticks_p99: float | None = None
        self.tick_baseline_p99: float | None = None

    def start(self) -> None:
        """Begin the CPU window (call when the daemon is ready)."""
        self._cpu.clear()
        self._sample_cpu()

    def _sample_cpu(self) -> None:
        t = os.times()
        now = time.monotonic()
        self._cpu.append((now, t.user + t.system))
        while len(self._cpu) > 2 and self._cpu[1][0] <= now - CPU_WINDOW_S:
            self._cpu.popleft()

    def cpu_percent(self) -> float | None:
        self._sample_cpu()
        (t0, c0), (t1, c1) = self._cpu[0], self._cpu[-1]
        if t1 - t0 < CPU_MIN_WINDOW_S:
            return None
        return 100.0 * (c1 - c0) / (t1 - t0)

    @staticmethod
    def rss_mb() -> float | None:
        try:
            with open("/proc/self/statm", "rb") as fh:
                return int(fh.read().split()[1]) * _PAGE / 1048576
        except (OSError, IndexError, ValueError):
            # Peak RSS is the honest fallback where /proc is hidden.
            return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024

    def snapshot(self) -> RuntimeFigures:
        seen = self.accepted + self.schema_rejected
        return RuntimeFigures(
            rss_mb=self.rss_mb(),
            cpu_percent=self.cpu_percent(),
            p99_ms=_p99(self.request_ms),
            hot_path_ticks_p99=self.hot_path_ticks_p99,
            tick_baseline_p99=self.tick_baseline_p99,
            warm_path_ms=_p99(self.commit_ms),
            schema_violation_rate=(self.schema_rejected / seen) if seen else None,
        )
