"""Stage 4, guards: no guard is tripped unless it is relaxed.

A guard is tripped when the delta removes one of its protected classes or
properties (any removed triple that mentions it) or the proposal's
``estimated_ticks`` exceed its max run length (governance/guards.py). A
tripped guard rejects the proposal, naming the guard and the protected items,
unless a relaxation keeps it off at ``now`` (governance/relaxation.py,
``is_relaxing``); then the stage warns. An immutable guard is never relaxed,
whatever the records say. One sub-verdict per guard.

Must never: mutate the context's graphs, read a clock, or perform I/O.
"""

from __future__ import annotations

from knhkd.governance.guards import trips
from knhkd.governance.relaxation import relaxed_guards
from knhkd.model import SubVerdict
from knhkd.validate.types import StageOutcome, ValidationContext, listing


class GuardStage:
    number = 4
    name = "guards"

    def run(self, ctx: ValidationContext) -> StageOutcome:
        view = ctx.result
        if view is None:
            return StageOutcome.failed(f"delta does not apply: {ctx.delta_error}")
        guards = ctx.inputs.guards
        relaxed = relaxed_guards(ctx.inputs.relaxations, ctx.now_ns)
        tripped = {t.guard.id: t for t in trips(guards, view.gone, ctx.proposal.estimated_ticks)}
        subs = []
        for g in guards.guards:
            trip = tripped.get(g.id)
            if trip is None:
                subs.append(SubVerdict(g.id, "passed", "not tripped"))
            elif g.id in relaxed and not g.immutable:
                subs.append(SubVerdict(g.id, "warning", f"relaxed; {trip.describe()}"))
            else:
                subs.append(SubVerdict(g.id, "failed", trip.describe()))
        head = f"guard set {guards.digest[:16]}: {len(guards.guards)} guard(s)"
        failed = [f"guard {s.id} ({s.message})" for s in subs if s.verdict == "failed"]
        relaxed_trips = [f"guard {s.id} ({s.message})" for s in subs if s.verdict == "warning"]
        if failed:
            return StageOutcome.failed(f"{head}; tripped: {listing(failed)}", subs)
        if relaxed_trips:
            return StageOutcome.warning(f"{head}; tripped but relaxed: {listing(relaxed_trips)}",
                                        subs)
        return StageOutcome.passed(f"{head}; none tripped", subs)
