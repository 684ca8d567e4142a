"""What the actors and the daemon facade share while the loop runs: the
configuration and the knowledge in force, governance, the shapes gate.

Guarantees:
- ``Settings`` holds the configuration in force and where it came from, so a
  reload reads the same file with the same environment and flags; every
  part reads the configuration through it (per batch, per request), so a
  reload applies without rebuilding anything.
- ``LoopState.set_knowledge`` is the one way the current snapshot changes
  (start, promotion, rollback), on the trio thread; the ring's snapshot
  descriptor follows it, with one writer.
- Everything here is built whole from start-up's results (loop/startup.py).

Must never: commit anything itself (the writer does), or read a stale
configuration captured at construction.
"""

from __future__ import annotations

import time
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from knhkd.config import Config, load
from knhkd.loop import knowledge_state as kn
from knhkd.loop.context import LoopContext
from knhkd.loop.figures import Figures
from knhkd.loop.governance_state import Governance
from knhkd.loop.queries import Queries
from knhkd.loop.shapes_gate import ShapesGate
from knhkd.loop.startup import Opened, Prepared
from knhkd.model import Snapshot, TickBaseline
from knhkd.telemetry.metrics import Metrics
from knhkd.validate.types import ValidationInputs


class Settings:
    """The configuration in force (call it), and how to read a new one."""

    def __init__(
        self,
        cfg: Config,
        *,
        path: Path | None = None,
        env: Mapping[str, str] | None = None,
        overrides: Mapping[tuple[str, str], Any] | None = None,
    ) -> None:
        self.current = cfg
        self.path = path
        self._env = env
        self._overrides = dict(overrides or {})

    def __call__(self) -> Config:
        return self.current

    def read(self) -> Config:
        """The file as it is now, with the same environment and flags as at
        start (``ConfigError`` when invalid); not yet in force."""
        return load(self.path, env=self._env, overrides=self._overrides)


class LoopState:
    def __init__(
        self,
        settings: Settings,
        opened: Opened,
        prepared: Prepared,
        metrics: Metrics,
        figures: Figures,
    ) -> None:
        self.settings = settings
        self.governance: Governance = prepared.governance
        self.shapes_gate: ShapesGate | None = prepared.shapes_gate
        self.figures = figures
        if self.shapes_gate is not None:
            self.shapes_gate.on_refused = figures.record_schema_rejected
        self.queries = Queries(opened.store, opened.receipts)
        self._ring = opened.ring
        self._knowledge = prepared.knowledge
        self.ctx = LoopContext(
            config=settings,
            store=opened.store,
            writer=opened.writer,
            receipts=opened.receipts,
            knowledge=lambda: self._knowledge,
            metrics=metrics,
        )
        self.set_knowledge(prepared.knowledge)

    @property
    def knowledge(self) -> kn.KnowledgeState:
        return self._knowledge

    def set_knowledge(self, state: kn.KnowledgeState, baseline: TickBaseline | None = None) -> None:
        """Make ``state`` current; ``baseline``: Q5's, stored with the change
        (``Figures.take_baseline``), or None to keep the one in force."""
        self._knowledge = state
        if baseline is not None:
            self.figures.adopt(baseline)
        if self._ring is not None:
            meta = state.current
            self._ring.publish_snapshot(meta.snapshot_id, meta.version, meta.promoted_at_ns)

    def observation_shapes_digest(self, sector: str) -> str | None:
        """The digest of the shapes a sector's observations were checked
        against (None when SHACL at ingest is off)."""
        shapes = None if self.shapes_gate is None else self.shapes_gate.gate.shapes
        return None if shapes is None or sector not in shapes else shapes[sector].digest

    def ancestry(self, limit: int = 64) -> tuple[Snapshot, ...]:
        """The current snapshot, then its parent, ... (at most ``limit``)."""
        return self.queries.ancestry(self._knowledge.current.snapshot_id, limit)

    def validation_inputs(self) -> ValidationInputs:
        return self.governance.inputs(self.settings(), self.figures.snapshot(), self.ancestry())

    async def advance_relaxations(self) -> None:
        """Expiries and closed windows become receipted steps (each cycle)."""
        now = time.time_ns()
        await self.governance.step(lambda book: book.advance(now))
