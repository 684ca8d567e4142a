"""The validation pipeline: ordered stage plug-ins, one report.

The seven stages, by number: 1 static, 2 invariants, 3 doctrines, 4 guards,
5 performance_budget, 6 rollback, 7 compatibility. A stage is any object with
``number``, ``name`` and ``run(ctx) -> StageOutcome``; a new stage slots in by
being passed to ``Pipeline`` (and, for the default, to ``default_pipeline`` in
``stages.py``). Inputs a future stage needs (doctrines, guards, budgets) join
``ValidationContext`` as fields with defaults, so existing stages and callers
keep working.

Guarantees:
- Stages run in number order. A stage that fails and is numbered 1–5 rejects
  the proposal and stops the pipeline (fail fast). A failing stage 6 or 7 is
  recorded with the verdict ``warning`` and the pipeline goes on, unless
  ``strict``, when it rejects and stops like the others.
- A stage may itself return ``warning`` (an advisory finding); it never
  rejects.
- ``StageResult.passed`` means "did not reject": it is false exactly when the
  verdict is ``failed``. ``ValidationReport.passed`` is true exactly when no
  stage failed.
- Stages this pipeline does not have are listed in ``stages_not_run`` by name,
  never reported as passed. Stages after a rejection are simply absent from
  ``stages``.
- The resulting graph is built once (``apply_delta``) and shared by all
  stages; a delta that does not apply leaves it ``None`` and records why in
  ``delta_error``, for stage 1 to report.
- A stage raising ``KnowledgeError`` fails with the error as its message; any
  other exception propagates (it is a bug, not a verdict).

Must never: read a clock (``now_ns`` and ``perf_counter`` are given), mutate
the parent graph, or report a stage as passed that did not run.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable
from dataclasses import dataclass
from typing import Protocol

from rdflib import Graph

from knhkd.knowledge.rdf import KnowledgeError, apply_delta
from knhkd.knowledge.shacl import Shapes
from knhkd.model import Proposal, StageResult, StageVerdict, ValidationReport

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


class PipelineError(KnowledgeError):
    """A pipeline assembled from stages that do not fit the seven-stage order."""


@dataclass(frozen=True, slots=True)
class StageOutcome:
    verdict: StageVerdict
    message: str

    @classmethod
    def passed(cls, message: str = "ok") -> StageOutcome:
        return cls("passed", message)

    @classmethod
    def failed(cls, message: str) -> StageOutcome:
        return cls("failed", message)

    @classmethod
    def warning(cls, message: str) -> StageOutcome:
        return cls("warning", message)


@dataclass(frozen=True, slots=True)
class ValidationContext:
    """Everything a stage may read. Built once per validation."""

    proposal: Proposal
    parent: Graph
    # The parent with the delta applied; None when the delta does not apply.
    result: Graph | None
    # Why the delta does not apply (a removed triple is absent, a term is
    # malformed); None when it does.
    delta_error: str | None
    shapes: Shapes
    strict: bool
    now_ns: int

    @classmethod
    def build(
        cls, proposal: Proposal, parent: Graph, shapes: Shapes, *, strict: bool, now_ns: int
    ) -> ValidationContext:
        try:
            result: Graph | None = apply_delta(parent, proposal.delta)
            error = None
        except KnowledgeError as exc:
            result, error = None, str(exc)
        return cls(proposal, parent, result, error, shapes, strict, now_ns)


class Stage(Protocol):
    @property
    def number(self) -> int: ...

    @property
    def name(self) -> str: ...

    def run(self, ctx: ValidationContext) -> StageOutcome: ...


class Pipeline:
    def __init__(self, stages: Iterable[Stage]) -> None:
        ordered = sorted(stages, key=lambda s: s.number)
        numbers = [s.number for s in ordered]
        if len(set(numbers)) != len(numbers):
            raise PipelineError(f"two stages share a number: {numbers}")
        for s in ordered:
            if STAGE_NAMES.get(s.number) != s.name:
                raise PipelineError(
                    f"stage {s.number} is {STAGE_NAMES.get(s.number, 'not a stage')!r}, "
                    f"not {s.name!r}"
                )
        self.stages: tuple[Stage, ...] = tuple(ordered)
        self.stages_not_run: list[str] = [
            name for number, name in sorted(STAGE_NAMES.items()) if number not in set(numbers)
        ]

    def run(
        self,
        proposal: Proposal,
        parent_graph: Graph,
        shapes: Shapes,
        *,
        strict: bool,
        now_ns: int,
        perf_counter: Callable[[], float],
    ) -> ValidationReport:
        ctx = ValidationContext.build(
            proposal, parent_graph, shapes, strict=strict, now_ns=now_ns
        )
        results: list[StageResult] = []
        rejected = False
        for stage in self.stages:
            started = perf_counter()
            try:
                outcome = stage.run(ctx)
            except KnowledgeError as exc:
                outcome = StageOutcome.failed(f"{type(exc).__name__}: {exc}")
            duration_ms = (perf_counter() - started) * 1e3
            verdict = outcome.verdict
            if verdict == "failed" and stage.number > LAST_FAIL_FAST_STAGE and not strict:
                verdict = "warning"
            results.append(
                StageResult(
                    stage=stage.number,
                    name=stage.name,
                    passed=verdict != "failed",
                    verdict=verdict,
                    message=outcome.message,
                    duration_ms=duration_ms,
                )
            )
            if verdict == "failed":
                rejected = True
                break
        return ValidationReport(
            proposal_id=proposal.id,
            passed=not rejected,
            stages=results,
            timestamp_ns=now_ns,
            stages_not_run=list(self.stages_not_run),
        )


def default_pipeline() -> Pipeline:
    """The stages implemented so far (see ``stages.py``)."""
    # Imported here: stages build on this module's types.
    from knhkd.validate.stages import DEFAULT_STAGES

    return Pipeline(DEFAULT_STAGES)
