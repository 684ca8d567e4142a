"""Stage 3, doctrines: the sector's doctrines in effect hold.

Only doctrines of the proposal's sector that are in effect at ``now`` apply
(governance/doctrines.py states every rule). One sub-verdict per applicable
doctrine: passed; failed when a mandatory doctrine is violated (the stage
rejects); warning when a warning or advisory doctrine is violated (the stage
warns). The message starts with the doctrine set's digest, so a report can be
matched to the doctrine set that produced it. The signers doctrines judge are
the proposal's signatures by authenticated principals
(``Proposal.signatures``), never its declared ``signers``.
The baselines of Schema doctrines' shapes are computed in ``prepare``.

Must never: judge a doctrine of another sector or one not in effect; mutate
the context's graphs, read a clock, or perform I/O.
"""

from __future__ import annotations

from knhkd.governance.doctrines import DoctrineSubject, judge
from knhkd.governance.signers import signatures_as_signers
from knhkd.model import SchemaConstraint, SubVerdict, SubVerdictKind
from knhkd.validate.types import StageOutcome, ValidationContext, listing


class DoctrineStage:
    number = 3
    name = "doctrines"

    def prepare(self, ctx: ValidationContext) -> None:
        if ctx.result is None:
            return
        ds = ctx.inputs.doctrines
        for d in ds.in_effect(ctx.proposal.sector, ctx.now_ns):
            shapes = ds.schema_shapes.get(d.id)
            if isinstance(d.constraint, SchemaConstraint) and shapes is not None:
                ctx.shacl.baseline(shapes, ctx.parent)

    def run(self, ctx: ValidationContext) -> StageOutcome:
        view = ctx.result
        if view is None:
            return StageOutcome.failed(f"delta does not apply: {ctx.delta_error}")
        ds = ctx.inputs.doctrines
        sector = ctx.proposal.sector
        defined = ds.of_sector(sector)
        applicable = ds.in_effect(sector, ctx.now_ns)
        head = (f"doctrine set {ds.digest[:16]}: {len(applicable)} of {len(defined)} "
                f"{sector} doctrine(s) in effect")
        if not applicable:
            return StageOutcome.passed(head)
        subject = DoctrineSubject(
            proposal=ctx.proposal,
            signers=tuple(signatures_as_signers(ctx.proposal.signatures)),
            view=view,
            now_ns=ctx.now_ns,
            shacl=ctx.shacl,
        )
        subs = []
        for d in applicable:
            finding = judge(d, subject, ds)
            verdict: SubVerdictKind
            if finding.holds:
                verdict = "passed"
            elif d.enforcement == "mandatory":
                verdict = "failed"
            else:
                verdict = "warning"
            subs.append(SubVerdict(d.id, verdict, f"{d.enforcement}: {finding.message}"))
        failed = [f"{s.id} ({s.message})" for s in subs if s.verdict == "failed"]
        warned = [f"{s.id} ({s.message})" for s in subs if s.verdict == "warning"]
        if failed:
            return StageOutcome.failed(f"{head}; violated: {listing(failed + warned)}", subs)
        if warned:
            return StageOutcome.warning(f"{head}; not mandatory, violated: {listing(warned)}",
                                        subs)
        return StageOutcome.passed(f"{head}; all hold", subs)
