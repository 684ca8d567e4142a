"""The validation pipeline: ordered stage plug-ins, one report.

The seven stages, by number: 1 static, 2 invariants, 3 doctrines, 4 guards,
5 performance_budget, 6 rollback, 7 compatibility (one module each in
``stages/``, which assembles the default; what a stage is and reads is
``types.py``). A stage is any object with
``number``, ``name`` and ``run(ctx) -> StageOutcome``, and optionally
``prepare(ctx)``; a new stage slots in by being passed to ``Pipeline``.
Everything a stage may read is in ``ValidationContext``; what the runtime
supplies beyond the proposal and the graphs (doctrines, guards, relaxations,
the remaining performance budget, measured runtime figures, the snapshot
ancestry, thresholds) is ``ValidationInputs``, every field with a safe default.

Guarantees:
- Stages run in number order. A stage that fails and is numbered 1–5 rejects
  the proposal and stops the pipeline (fail fast). A failing stage 6 or 7 is
  recorded with the verdict ``warning`` and the pipeline goes on, unless
  ``strict``, when it rejects and stops like the others.
- Each stage is timed with the injected ``perf_counter`` (two calls per
  stage). A stage that takes longer than its time budget
  (``settings.time_budget_ms.<name>``) rejects the proposal at that stage,
  whatever its number and ``strict``, with a message saying so and what the
  stage itself concluded.
- ``prepare`` hooks run before any stage is timed: they compute what depends
  only on the parent snapshot (its SHACL baseline, memoised per parent graph),
  so a stage's time is the proposal's own cost. A ``KnowledgeError`` raised by
  a hook is left for the stage's ``run`` to meet and report.
- A stage may itself return ``warning`` (an advisory finding); it never
  rejects.
- ``StageResult.passed`` means "did not reject": it is false exactly when the
  verdict is ``failed``. ``ValidationReport.passed`` is true exactly when no
  stage failed.
- Stages this pipeline does not have are listed in ``stages_not_run`` by name,
  never reported as passed. Stages after a rejection are simply absent from
  ``stages``.
- The result is read through one ``DeltaView`` (the parent is never copied);
  a delta that does not apply leaves it ``None`` and records why in
  ``delta_error``, for stage 1 to report.
- A stage raising ``KnowledgeError`` fails with the error as its message; any
  other exception propagates (it is a bug, not a verdict).

Must never: read a clock (``now_ns`` and ``perf_counter`` are given), mutate
the parent graph, or report a stage as passed that did not run.
"""

from __future__ import annotations

import contextlib
from collections.abc import Callable, Iterable

from rdflib import Graph

from knhkd.knowledge.rdf import KnowledgeError
from knhkd.knowledge.shacl import ShaclChecker, Shapes
from knhkd.model import Proposal, StageResult, ValidationReport
from knhkd.validate.stages import DEFAULT_STAGES
from knhkd.validate.types import (
    LAST_FAIL_FAST_STAGE,
    STAGE_NAMES,
    PipelineError,
    Stage,
    StageOutcome,
    ValidationContext,
    ValidationInputs,
)


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
        # Shared by every run: the memo of shapes analyses and parent baselines.
        self.shacl = ShaclChecker()

    def context(
        self, proposal: Proposal, parent_graph: Graph, shapes: Shapes, *, strict: bool,
        now_ns: int, inputs: ValidationInputs | None = None,
    ) -> ValidationContext:
        return ValidationContext.build(
            proposal, parent_graph, shapes, strict=strict, now_ns=now_ns, inputs=inputs,
            shacl=self.shacl,
        )

    def warm(self, parent_graph: Graph, shapes: Shapes,
             inputs: ValidationInputs | None = None) -> None:
        """Compute a new parent snapshot's SHACL baselines (the stage-1 shapes
        and every Schema doctrine's) ahead of its first validation: ~0.15 s per
        1 k triples, once per snapshot graph. Optional: ``run`` does it when
        needed; call this right after installing a snapshot to keep it off the
        first proposal's path."""
        self.shacl.baseline(shapes, parent_graph)
        for schema in (inputs or ValidationInputs()).doctrines.schema_shapes.values():
            self.shacl.baseline(schema, parent_graph)

    def prepare(self, ctx: ValidationContext) -> None:
        """Run every stage's ``prepare`` hook (untimed; see the module docstring)."""
        for stage in self.stages:
            # getattr, not isinstance(stage, Preparing): a runtime-checkable
            # Protocol check costs ~15 µs per stage and call.
            prepare = getattr(stage, "prepare", None)
            if callable(prepare):
                # A failure here is met again, and reported, by the stage's run.
                with contextlib.suppress(KnowledgeError):
                    prepare(ctx)

    def run(
        self,
        proposal: Proposal,
        parent_graph: Graph,
        shapes: Shapes,
        *,
        strict: bool,
        now_ns: int,
        perf_counter: Callable[[], float],
        inputs: ValidationInputs | None = None,
    ) -> ValidationReport:
        ctx = self.context(proposal, parent_graph, shapes, strict=strict, now_ns=now_ns,
                           inputs=inputs)
        self.prepare(ctx)
        budgets = ctx.inputs.settings.time_budget_ms
        results: list[StageResult] = []
        rejected = False
        for stage in self.stages:
            started = perf_counter()
            try:
                outcome = stage.run(ctx)
            except KnowledgeError as exc:
                outcome = StageOutcome.failed(f"{type(exc).__name__}: {exc}")
            duration_ms = (perf_counter() - started) * 1e3
            budget_ms: float = getattr(budgets, stage.name)
            verdict = outcome.verdict
            message = outcome.message
            if duration_ms > budget_ms:
                verdict = "failed"
                message = (
                    f"over its time budget: took {duration_ms:.3f} ms, budget {budget_ms:g} ms "
                    f"(the stage itself concluded {outcome.verdict}: {outcome.message})"
                )
            elif verdict == "failed" and stage.number > LAST_FAIL_FAST_STAGE and not strict:
                verdict = "warning"
            results.append(
                StageResult(
                    stage=stage.number,
                    name=stage.name,
                    passed=verdict != "failed",
                    verdict=verdict,
                    message=message,
                    duration_ms=duration_ms,
                    sub_verdicts=list(outcome.sub_verdicts),
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
    """All seven stages (see ``stages.py``)."""
    return Pipeline(DEFAULT_STAGES)
