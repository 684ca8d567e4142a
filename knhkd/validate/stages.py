"""The validation stages implemented so far: 1 static and 6 rollback.

Stage 1, static: the delta applies to the parent (every removed triple is
present), every term of the delta is a well-formed N-Triples term in a
position it may hold, no added literal is ill-typed (``"abc"^^xsd:integer``),
and the resulting graph conforms to the SHACL shapes. SHACL warnings and infos
without violations give the verdict ``warning``. The message names each
violation: focus node, path, constraint component, value, SHACL message.

Stage 6, rollback: the delta removes no class or property declaration, so the
promotion can be undone by the inverse delta without losing the vocabulary
other knowledge depends on.

Stages 2–5 and 7 (invariants, doctrines, guards, performance_budget,
compatibility) are not implemented here; the pipeline names them in
``stages_not_run``.

Must never: mutate the context's graphs, read a clock, or perform I/O.
"""

from __future__ import annotations

from rdflib import Literal

from knhkd.knowledge.rdf import to_rdflib
from knhkd.plan.proposals import irreversible_removals
from knhkd.validate.pipeline import StageOutcome, ValidationContext

# A message lists at most this many violations; the count says how many more.
MAX_LISTED = 10


def _listing(items: list[str]) -> str:
    shown = "; ".join(items[:MAX_LISTED])
    more = len(items) - MAX_LISTED
    return shown + (f"; and {more} more" if more > 0 else "")


class StaticStage:
    number = 1
    name = "static"

    def run(self, ctx: ValidationContext) -> StageOutcome:
        if ctx.result is None:
            return StageOutcome.failed(f"delta does not apply: {ctx.delta_error}")
        ill_typed = [
            t.o for t in ctx.proposal.delta.add
            if isinstance(o := to_rdflib(t)[2], Literal) and o.ill_typed
        ]
        if ill_typed:
            return StageOutcome.failed(f"ill-typed literal(s) added: {_listing(ill_typed)}")
        shacl = ctx.shapes.validate(ctx.result)
        if not shacl.conforms:
            errors = [v.describe() for v in shacl.violations if v.severity == "Violation"]
            return StageOutcome.failed(
                f"resulting graph violates the shapes ({len(errors)} violation(s)): "
                f"{_listing(errors)}"
            )
        if shacl.violations:
            notes = [v.describe() for v in shacl.violations]
            return StageOutcome.warning(f"SHACL reported: {_listing(notes)}")
        return StageOutcome.passed(
            f"{len(ctx.proposal.delta.remove)} removed, {len(ctx.proposal.delta.add)} added; "
            f"{len(ctx.result)} triples conform to the shapes"
        )


class RollbackStage:
    number = 6
    name = "rollback"

    def run(self, ctx: ValidationContext) -> StageOutcome:
        removed = irreversible_removals(ctx.proposal.delta)
        if removed:
            listed = [f"{t.s} {t.p} {t.o}" for t in removed]
            return StageOutcome.failed(
                f"not reversible: the delta removes {len(removed)} class or property "
                f"declaration(s): {_listing(listed)}"
            )
        return StageOutcome.passed("reversible: no class or property declaration is removed")


DEFAULT_STAGES = (StaticStage(), RollbackStage())
