"""Stage 1, static: the delta applies and the resulting graph is well formed
and conforms to the SHACL shapes.

Rules: every removed triple is in the parent; every term of the delta is a
well-formed N-Triples term in a position it may hold (absolute IRIs); no added
literal is ill-typed (``"abc"^^xsd:integer``); the resulting graph conforms to
the shapes. SHACL warnings and infos without violations give the verdict
``warning``. The message names each violation: focus node, path, constraint
component, value, SHACL message.

The SHACL verdict and violation list are exactly those of the plain pySHACL
call on the whole resulting graph, computed incrementally
(knowledge/shacl/incremental.py); the parent's own baseline is computed in
``prepare``, outside the stage's time budget.

Must never: mutate the context's graphs, read a clock, or perform I/O.
"""

from __future__ import annotations

from rdflib import Literal

from knhkd.knowledge.rdf import from_rdflib
from knhkd.validate.types import StageOutcome, ValidationContext, listing


class StaticStage:
    number = 1
    name = "static"

    def prepare(self, ctx: ValidationContext) -> None:
        if ctx.result is not None:
            ctx.shacl.baseline(ctx.shapes, ctx.parent)

    def run(self, ctx: ValidationContext) -> StageOutcome:
        view = ctx.result
        if view is None:
            return StageOutcome.failed(f"delta does not apply: {ctx.delta_error}")
        ill_typed = [
            from_rdflib(s, p, o).o for s, p, o in view.added
            if isinstance(o, Literal) and o.ill_typed
        ]
        if ill_typed:
            return StageOutcome.failed(f"ill-typed literal(s) added: {listing(ill_typed)}")
        checked = ctx.shacl.check(ctx.shapes, view)
        shacl = checked.result
        if not shacl.conforms:
            errors = [v.describe() for v in shacl.violations
                      if v.severity not in ("Warning", "Info")]
            return StageOutcome.failed(
                f"resulting graph violates the shapes ({len(errors)} violation(s)): "
                f"{listing(errors)}"
            )
        if shacl.violations:
            notes = [v.describe() for v in shacl.violations]
            return StageOutcome.warning(f"SHACL reported: {listing(notes)}")
        how = (
            f"{checked.revalidated} focus node(s) re-checked ({checked.mode})"
            if checked.mode != "full" else f"whole graph validated ({checked.reason})"
        )
        return StageOutcome.passed(
            f"{len(ctx.proposal.delta.remove)} removed, {len(ctx.proposal.delta.add)} added; "
            f"{len(view)} triples conform to the shapes; {how}"
        )
