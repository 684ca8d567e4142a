"""What a validation stage is and what it may read: the pipeline's types.

The stage modules (``stages/``) and the pipeline (``pipeline.py``) both build
on this module, and it on neither: a stage never depends on the pipeline that
runs it. A stage is any object with ``number``, ``name`` and
``run(ctx) -> StageOutcome``, and optionally ``prepare(ctx)``. Everything a
stage may read is in ``ValidationContext``; what the runtime supplies beyond
the proposal and the graphs (doctrines, guards, relaxations, the remaining
performance budget, measured runtime figures, the snapshot ancestry,
thresholds) is ``ValidationInputs``, every field with a safe default.

Must never: perform I/O, read a clock, or import a stage or the pipeline.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from typing import Protocol

from rdflib import Graph

from knhkd.config import ValidateConfig
from knhkd.governance.doctrines import DoctrineSet
from knhkd.governance.guards import GuardSet
from knhkd.knowledge.rdf import DeltaView, KnowledgeError
from knhkd.knowledge.shacl import ShaclChecker, Shapes
from knhkd.model import (
    Proposal,
    Relaxation,
    RuntimeFigures,
    Snapshot,
    StageVerdict,
    SubVerdict,
)

STAGE_NAMES: dict[int, str] = {
    1: "static",
    2: "invariants",
    3: "doctrines",
    4: "guards",
    5: "performance_budget",
    6: "rollback",
    7: "compatibility",
}
# Stages up to this number reject on failure; later ones warn unless strict.
LAST_FAIL_FAST_STAGE = 5
# A message lists at most this many items; the count says how many more.
MAX_LISTED = 10


def listing(items: Sequence[str], limit: int = MAX_LISTED) -> str:
    shown = "; ".join(items[:limit])
    more = len(items) - limit
    return shown + (f"; and {more} more" if more > 0 else "")


class PipelineError(KnowledgeError):
    """A pipeline assembled from stages that do not fit the seven-stage order."""


@dataclass(frozen=True, slots=True)
class StageOutcome:
    verdict: StageVerdict
    message: str
    sub_verdicts: tuple[SubVerdict, ...] = ()

    @classmethod
    def passed(cls, message: str = "ok", subs: Iterable[SubVerdict] = ()) -> StageOutcome:
        return cls("passed", message, tuple(subs))

    @classmethod
    def failed(cls, message: str, subs: Iterable[SubVerdict] = ()) -> StageOutcome:
        return cls("failed", message, tuple(subs))

    @classmethod
    def warning(cls, message: str, subs: Iterable[SubVerdict] = ()) -> StageOutcome:
        return cls("warning", message, tuple(subs))


@dataclass(frozen=True, slots=True)
class ValidationInputs:
    """What the runtime supplies for stages 2–7. Every default is safe: no
    doctrines, no guards, nothing consumed of the budget, nothing measured
    (reported as "not measured", never as passed), no ancestry known."""

    settings: ValidateConfig = field(default_factory=ValidateConfig)
    doctrines: DoctrineSet = field(default_factory=DoctrineSet)
    guards: GuardSet = field(default_factory=GuardSet)
    # Every relaxation record; stage 4 decides which relax a guard at now_ns.
    relaxations: tuple[Relaxation, ...] = ()
    # Ticks left of the performance budget; None: all of settings.budget.total_ticks.
    budget_remaining_ticks: float | None = None
    figures: RuntimeFigures = field(default_factory=RuntimeFigures)
    # The parent snapshot first, then its parent, ... (may stop short of genesis).
    ancestry: tuple[Snapshot, ...] = ()


@dataclass(frozen=True, slots=True)
class ValidationContext:
    """Everything a stage may read. Built once per validation."""

    proposal: Proposal
    parent: Graph
    # The parent with the delta applied; None when the delta does not apply.
    result: DeltaView | None
    # Why the delta does not apply (a removed triple is absent, a term is
    # malformed); None when it does.
    delta_error: str | None
    shapes: Shapes
    strict: bool
    now_ns: int
    inputs: ValidationInputs = field(default_factory=ValidationInputs)
    shacl: ShaclChecker = field(default_factory=ShaclChecker)

    @classmethod
    def build(
        cls, proposal: Proposal, parent: Graph, shapes: Shapes, *, strict: bool, now_ns: int,
        inputs: ValidationInputs | None = None, shacl: ShaclChecker | None = None,
    ) -> ValidationContext:
        try:
            result: DeltaView | None = DeltaView(parent, proposal.delta)
            error = None
        except KnowledgeError as exc:
            result, error = None, str(exc)
        return cls(
            proposal, parent, result, error, shapes, strict, now_ns,
            inputs or ValidationInputs(), shacl or ShaclChecker(),
        )


class Stage(Protocol):
    @property
    def number(self) -> int: ...

    @property
    def name(self) -> str: ...

    def run(self, ctx: ValidationContext) -> StageOutcome: ...


class Preparing(Protocol):
    """A stage with a hook for work that depends only on the parent (untimed)."""

    def prepare(self, ctx: ValidationContext) -> None: ...
