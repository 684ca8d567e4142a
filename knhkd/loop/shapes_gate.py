"""The SHACL gate as the running daemon uses it: where a check runs, and counts.

Guarantees:
- Verdicts are exactly ``monitor.shapes.ObservationGate``'s; this module only
  decides where they are computed. Requests that ``needs_thread`` are checked
  on a worker thread, one at a time (a ``CapacityLimiter`` of 1), so the event
  loop is never blocked for more than a few milliseconds and two large
  requests cannot take both cores from the writer.
- ``knhk_ingest_shacl_failures_total{sector}`` counts rejected observations
  (not requests) by sector, once per refusal.
- The inline limit is read per call, so a configuration reload applies.

Must never: store or acknowledge anything (the ingest actor does).
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from typing import Any

import trio

from knhkd.model import ObservationIn, Sector
from knhkd.monitor.shapes import ObservationGate, rejection


class ShapesGate:
    def __init__(
        self,
        gate: ObservationGate,
        failures: Mapping[Sector, Any],
        *,
        inline_max_items: Callable[[], int],
    ) -> None:
        self.gate = gate
        # Bound prometheus children (telemetry/metrics.py), one per sector.
        self._failures = failures
        self._inline_max = inline_max_items
        self._limiter = trio.CapacityLimiter(1)
        # Told how many observations each refusal refused (loop/figures.py, Q2).
        self.on_refused: Callable[[int], None] = lambda n: None

    async def check(self, items: Sequence[ObservationIn], *, single: bool = False) -> None:
        """Raise ``ShaclRejected`` when any item violates its sector's shapes."""
        if self.gate.needs_thread(items, self._inline_max()):
            errors = await trio.to_thread.run_sync(
                self.gate.validate_batch, items, single, limiter=self._limiter
            )
        else:
            errors = self.gate.validate_batch(items, single)
        refused = rejection(items, errors)
        if refused is None:
            return
        for sector, n in refused.by_sector.items():
            self._failures[sector].inc(n)
        self.on_refused(sum(refused.by_sector.values()))
        raise refused
