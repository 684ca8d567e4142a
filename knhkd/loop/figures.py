"""What the daemon measures about itself for invariants Q2, Q4 and Q5.

Fed from the real paths: every HTTP answer (latency by route template,
api/http.py), every ingest request and commit (loop/ingest.py, HTTP and ring
alike), every observation the SHACL gate refuses (loop/shapes_gate.py), the
ring's timed batch appends (loop/ring_drain.py), and once at start-up this
machine's hot-path floor (a bare 64-byte store, hotpath/ring.py
``floor_ticks``, measured on a worker thread).

Windows: each figure keeps its last ``window`` samples no older than
``WINDOW_S``. Samples are kept raw (a bounded deque), not bucketed, and p99 is
exact over them: 2,048 floats sort in ~0.2 ms, which only /health,
/metrics and a validation pay, while recording stays an append; raw samples
also merge exactly (``merge`` takes a ``FigureSamples`` batch, e.g. from a
worker process), which fixed buckets would round and an HDR histogram would
need a new dependency for.

Guarantees:
- Every figure is either measured here or None ("not measured"); nothing is
  guessed. CPU is judged only over at least ``CPU_MIN_WINDOW_S`` of samples
  (a short window would judge start-up, not the steady state); a p99 needs at
  least ``MIN_SAMPLES`` samples.
- Recording a sample is O(1); windows are bounded in count and age.
- The tick baseline (Q5's regression) is the hot-path p99 when the current
  snapshot was made current (``take_baseline``, stored with the snapshot
  change and ``restore``d at start-up, so that a restart or an upgrade is
  judged against it, not against itself). With none stored, or one taken on
  a machine whose hot-path floor differs by more than the floor tolerance,
  it is the first hot-path p99 measured since start-up; ``tick_baseline_source``
  says which.

Must never: block, or report a figure from a window with no samples.
"""

from __future__ import annotations

import os
import resource
import time
from collections import deque
from collections.abc import Iterable

from knhkd.model import FigureSamples, RuntimeFigures, TickBaseline

CPU_WINDOW_S = 60.0
CPU_MIN_WINDOW_S = 10.0
# Samples older than this no longer judge the daemon (a burst an hour ago
# says nothing of now).
WINDOW_S = 300.0
# Fewer samples than this make no p99 (the 99th of 10 is their maximum).
MIN_SAMPLES = 20
# Blocks of 64 bare stores timed at start-up (well under 10 ms).
FLOOR_BLOCKS = 4096
# Routes kept apart; more (a client inventing paths 404s as "-") share "-".
MAX_ROUTES = 64
_PAGE = os.sysconf("SC_PAGE_SIZE")


def p99(values: Iterable[float]) -> float | None:
    ordered = sorted(values)
    if not ordered:
        return None
    return ordered[min(len(ordered) - 1, int(len(ordered) * 0.99))]


class Window:
    """The last ``size`` samples, none older than ``max_age_s``."""

    __slots__ = ("_max_age", "_samples")

    def __init__(self, size: int, max_age_s: float = WINDOW_S) -> None:
        self._samples: deque[tuple[float, float]] = deque(maxlen=size)
        self._max_age = max_age_s

    def add(self, value: float, now: float | None = None) -> None:
        self._samples.append((time.monotonic() if now is None else now, value))

    def extend(self, values: Iterable[float]) -> None:
        now = time.monotonic()
        self._samples.extend((now, v) for v in values)

    def _expire(self) -> None:
        cutoff = time.monotonic() - self._max_age
        while self._samples and self._samples[0][0] < cutoff:
            self._samples.popleft()

    def values(self) -> list[float]:
        self._expire()
        return [v for _t, v in self._samples]

    def p99(self) -> float | None:
        return self.judged()[0]

    def judged(self) -> tuple[float | None, int]:
        """The p99 (None below ``MIN_SAMPLES``) and how many samples it is of."""
        values = self.values()
        return (p99(values) if len(values) >= MIN_SAMPLES else None), len(values)


class Counts:
    """Observations accepted and SHACL-refused over the last ``max_age_s``,
    in per-second buckets (at most ``max_age_s`` + 1 of them)."""

    __slots__ = ("_buckets", "_max_age")

    def __init__(self, max_age_s: float = WINDOW_S) -> None:
        self._buckets: deque[list[int]] = deque()  # [second, accepted, rejected]
        self._max_age = max_age_s

    def add(self, accepted: int, rejected: int) -> None:
        sec = int(time.monotonic())
        if not self._buckets or self._buckets[-1][0] != sec:
            self._buckets.append([sec, 0, 0])
            self._expire(sec)
        self._buckets[-1][1] += accepted
        self._buckets[-1][2] += rejected

    def _expire(self, sec: int) -> None:
        while self._buckets and self._buckets[0][0] < sec - self._max_age:
            self._buckets.popleft()

    def totals(self) -> tuple[int, int]:
        self._expire(int(time.monotonic()))
        return sum(b[1] for b in self._buckets), sum(b[2] for b in self._buckets)


class Figures:
    def __init__(self, window: int = 2048) -> None:
        self._window = window
        self.requests = Window(window)
        self._by_route: dict[str, Window] = {}
        self.ingest = Window(window)
        self.commits = Window(window)
        self.append_ticks = Window(window)
        self.counts = Counts()
        self._cpu: deque[tuple[float, float]] = deque()
        self.floor_ticks_p99: float | None = None
        self.tick_baseline_p99: float | None = None
        self.tick_baseline_source = ""
        self.tick_baseline: TickBaseline | None = None

    def start(self) -> None:
        """Begin the CPU window (call when the daemon is ready)."""
        self._cpu.clear()
        self._sample_cpu()

    # ------------------------------------------------------------------ #
    # Recording (O(1) each)
    # ------------------------------------------------------------------ #

    def record_request(self, route: str, seconds: float) -> None:
        self.requests.add(seconds)
        self._route(route).add(seconds)

    def _route(self, route: str) -> Window:
        w = self._by_route.get(route)
        if w is None:
            if len(self._by_route) >= MAX_ROUTES:
                route = "-"
                w = self._by_route.get(route)
            if w is None:
                w = self._by_route[route] = Window(self._window)
        return w

    def record_ingest(self, seconds: float) -> None:
        self.ingest.add(seconds)

    def record_commit(self, seconds: float, accepted: int) -> None:
        self.commits.add(seconds)
        self.counts.add(accepted, 0)

    def record_schema_rejected(self, n: int) -> None:
        self.counts.add(0, n)

    def record_append_ticks(self, per_record: float) -> None:
        self.append_ticks.add(per_record)
        if self.tick_baseline_p99 is None:
            first = self.append_ticks.p99()
            if first is not None:
                self.tick_baseline_p99, self.tick_baseline_source = first, "start"

    def merge(self, batch: FigureSamples) -> None:
        """Merge raw samples measured elsewhere (another process)."""
        for route, values in batch.request_seconds.items():
            self.requests.extend(values)
            self._route(route).extend(values)
        self.ingest.extend(batch.ingest_seconds)
        self.commits.extend(batch.commit_seconds)
        if batch.accepted or batch.schema_rejected:
            self.counts.add(batch.accepted, batch.schema_rejected)
        for ticks in batch.append_ticks:
            self.record_append_ticks(ticks)

    def set_floor(self, samples: list[float]) -> None:
        self.floor_ticks_p99 = p99(samples)

    def take_baseline(self, snapshot_id: str) -> TickBaseline | None:
        """Q5's baseline for ``snapshot_id`` becoming current now: the hot
        path's p99 now (None when it is not measured: the baseline in force
        stays). Taken before the change is committed, stored with it, then
        ``adopt``ed."""
        now = self.append_ticks.p99()
        if now is None or not now > 0:
            return None  # nothing a regression could be judged against
        floor = self.floor_ticks_p99
        return TickBaseline(
            now, floor if floor is not None and floor > 0 else None, snapshot_id, time.time_ns()
        )

    def adopt(self, baseline: TickBaseline) -> None:
        self.tick_baseline = baseline
        self.tick_baseline_p99, self.tick_baseline_source = baseline.p99_ticks, "promotion"

    def restore(self, stored: TickBaseline | None, floor_tolerance: float) -> str:
        """Adopt the baseline stored with the current snapshot, if it is
        comparable here (call after ``set_floor``, before any ticks are
        recorded). Returns what was done, for the log."""
        if stored is None:
            return "none stored: the first hot-path p99 measured will be the baseline"
        was, here = stored.floor_p99_ticks, self.floor_ticks_p99
        if was is not None and here is not None and was > 0 and here > 0:
            ratio = max(was, here) / min(was, here)
            if ratio > floor_tolerance:
                return (
                    f"the stored one ({stored.p99_ticks:g} ticks, snapshot "
                    f"{stored.snapshot_id[:16]}) was taken where the hot-path floor p99 was "
                    f"{was:g} ticks; here it is {here:g} (x{ratio:.2f} > "
                    f"{floor_tolerance:g}): not used; the first hot-path p99 measured "
                    "will be the baseline"
                )
        self.adopt(stored)
        return (
            f"{stored.p99_ticks:g} ticks, stored when snapshot {stored.snapshot_id[:16]} "
            "became current"
        )

    # ------------------------------------------------------------------ #
    # Reading
    # ------------------------------------------------------------------ #

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
        accepted, rejected = self.counts.totals()
        seen = accepted + rejected
        by_route: dict[str, float] = {}
        for route, w in sorted(self._by_route.items()):
            value = w.p99()
            if value is not None:
                by_route[route] = round(value * 1000.0, 3)
        api, api_n = self.requests.judged()
        ingest, ingest_n = self.ingest.judged()
        hot, hot_n = self.append_ticks.judged()
        return RuntimeFigures(
            rss_mb=self.rss_mb(),
            cpu_percent=self.cpu_percent(),
            p99_ms=_ms(api),
            hot_path_ticks_p99=hot,
            tick_baseline_p99=self.tick_baseline_p99,
            warm_path_ms=_ms(ingest),
            schema_violation_rate=(rejected / seen) if seen else None,
            hot_path_floor_ticks_p99=self.floor_ticks_p99,
            request_p99_ms=by_route,
            commit_p99_ms=_ms(self.commits.p99()),
            accepted=accepted,
            schema_rejected=rejected,
            request_samples=api_n,
            ingest_samples=ingest_n,
            hot_path_samples=hot_n,
            tick_baseline_source=self.tick_baseline_source,
            tick_baseline=self.tick_baseline,
        )


def _ms(seconds: float | None) -> float | None:
    return None if seconds is None else round(seconds * 1000.0, 3)
