"""Stage 6, rollback: the promotion can be undone.

Rule: the delta removes no class or property declaration (``rdf:type`` of
``rdfs:Class``, ``owl:Class``, ``rdf:Property``, ``owl:ObjectProperty``,
``owl:DatatypeProperty``, ``owl:AnnotationProperty``), so the inverse delta
restores the parent without losing the vocabulary other knowledge depends on.
A failure is a warning unless the pipeline is strict.

Must never: mutate the context's graphs, read a clock, or perform I/O.
"""

from __future__ import annotations

from knhkd.knowledge.vocabulary import irreversible_removals
from knhkd.validate.types import StageOutcome, ValidationContext, listing


class RollbackStage:
    number = 6
    name = "rollback"

    def run(self, ctx: ValidationContext) -> StageOutcome:
        removed = irreversible_removals(ctx.proposal.delta)
        if removed:
            listed = [f"{t.s} {t.p} {t.o}" for t in removed]
            return StageOutcome.failed(
                f"not reversible: the delta removes {len(removed)} class or property "
                f"declaration(s): {listing(listed)}"
            )
        return StageOutcome.passed("reversible: no class or property declaration is removed")
