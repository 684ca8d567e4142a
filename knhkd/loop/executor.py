"""The executor actor: validates each proposal, promotes those that pass, and
closes the cycle.

Guarantees:
- Every proposal of a cycle gets a ``validation_executed`` receipt carrying the
  verdict and the hashes it depended on (parent snapshot, proposal); the full
  report is stored under the proposal id.
- A passing proposal is promoted atomically (loop/knowledge_state.py): snapshot,
  current pointer and ``snapshot_promoted`` receipt in one transaction. A
  promotion refused at commit time (stale parent, Q1) is receipted as rejected.
- A proposal made stale by an earlier promotion in the same cycle is rebased on
  the new current snapshot as a new, receipted proposal and validated afresh.
- Every cycle ends with a stored ``CycleReport`` and a ``cycle_completed``
  receipt; its waiter is woken whatever happens.

Must never: promote a proposal whose validation did not pass.
"""

from __future__ import annotations

import time
from collections.abc import Awaitable, Callable

import lmdb
import msgspec
import trio

from knhkd.execute.promotion import promote
from knhkd.knowledge.rdf import KnowledgeError, apply_delta
from knhkd.loop.context import LoopContext
from knhkd.loop.cycle import Cycle, each_cycle
from knhkd.loop.knowledge_state import (
    KnowledgeState,
    SnapshotConflict,
    install_job,
    state_of,
)
from knhkd.loop.planner import proposal_draft, store_proposals_job
from knhkd.model import (
    CycleReport,
    Outcome,
    Proposal,
    ProposalIn,
    SignedReceipt,
    Snapshot,
    TickBaseline,
    ValidationReport,
)
from knhkd.plan.proposals import make_proposal
from knhkd.receipts import canonical
from knhkd.receipts.log import Draft, ReceiptLog
from knhkd.store.env import Store
from knhkd.store.writer import Job
from knhkd.telemetry.tracing import AttributeValue, enabled, start_span
from knhkd.validate.pipeline import Pipeline
from knhkd.validate.types import ValidationInputs


def _failure_reason(report: ValidationReport) -> str:
    for stage in report.stages:
        if stage.verdict == "failed":
            return f"stage {stage.stage} {stage.name}: {stage.message}"
    return ""


def validation_job(
    store: Store,
    receipts: ReceiptLog,
    proposal: Proposal,
    report: ValidationReport,
    digests: dict[str, str],
    principal: str = "",
) -> Job[SignedReceipt]:
    def job(txn: lmdb.Transaction) -> SignedReceipt:
        store.tables.validations.put(txn, proposal.id, report)
        outcome = (
            Outcome("approved", "all stages run passed")
            if report.passed
            else Outcome("rejected", _failure_reason(report))
        )
        stages = ",".join(f"{s.stage}:{s.verdict}" for s in report.stages)
        return receipts.append(
            txn,
            Draft(
                kind="validation_executed",
                outcome=outcome,
                subject_ids=[proposal.id],
                sector=proposal.sector,
                inputs={
                    "parent_snapshot_id": proposal.parent_snapshot_id,
                    "proposal_id": proposal.id,
                    "stages": stages,
                    "stages_not_run": ",".join(report.stages_not_run),
                    **digests,
                    # Who asked for the judgement (absent for the loop's own).
                    **({"principal": principal} if principal else {}),
                    # The signatures counted, by principal.
                    **(
                        {"signatures": ",".join(s.principal for s in proposal.signatures)}
                        if proposal.signatures
                        else {}
                    ),
                },
            ),
        )

    return job


def refusal_job(
    receipts: ReceiptLog, proposal: Proposal, reason: str, principal: str = ""
) -> Job[SignedReceipt]:
    def job(txn: lmdb.Transaction) -> SignedReceipt:
        return receipts.append(
            txn,
            Draft(
                kind="snapshot_promoted",
                outcome=Outcome("rejected", reason),
                subject_ids=[proposal.id],
                sector=proposal.sector,
                inputs={
                    "parent_snapshot_id": proposal.parent_snapshot_id,
                    **({"principal": principal} if principal else {}),
                },
            ),
        )

    return job


def cycle_job(
    store: Store, receipts: ReceiptLog, report: CycleReport, principal: str = ""
) -> Job[CycleReport]:
    """Receipt the cycle and store its report, which names that receipt too;
    the receipt names ``principal``, who asked for the cycle, if anyone did."""

    def job(txn: lmdb.Transaction) -> CycleReport:
        signed = receipts.append(
            txn,
            Draft(
                kind="cycle_completed",
                outcome=Outcome(
                    "approved" if report.outcome == "completed" else "error", report.detail
                ),
                subject_ids=[report.id],
                inputs={
                    "patterns_detected": str(report.patterns_detected),
                    "proposals_generated": str(report.proposals_generated),
                    "validations_passed": str(report.validations_passed),
                    "validations_failed": str(report.validations_failed),
                    "snapshots_promoted": str(report.snapshots_promoted),
                    "trigger": report.trigger,
                    **({"principal": principal} if principal else {}),
                },
            ),
        )
        final = msgspec.structs.replace(
            report, receipt_ids=[*report.receipt_ids, canonical.receipt_id(signed.body.seq)]
        )
        store.tables.cycles.add(txn, final)
        return final

    return job


def stage_spans(proposal: Proposal, report: ValidationReport, started_ns: int) -> None:
    """A ``knhk.guard.validate`` span per stage the pipeline ran (and a
    ``knhk.guard.enforce`` per invariant and guard it checked), children of the
    current span. The pipeline is pure and runs on a worker thread, so the
    spans are drawn afterwards from the stages' own measured durations."""
    if not enabled():
        return
    at = started_ns
    for stage in report.stages:
        end = at + int(stage.duration_ms * 1e6)
        attrs: dict[str, AttributeValue] = {
            "proposal.id": proposal.id,
            "validation.stage": stage.stage,
            "validation.stage_name": stage.name,
            "validation.passed": stage.passed,
        }
        if proposal.sector:
            attrs["sector"] = proposal.sector
        if not stage.passed:
            attrs["validation.failure_reason"] = stage.message[:256]
        s = start_span("knhk.guard.validate", attrs, start_time=at)
        if stage.name in ("invariants", "guards"):
            for sub in stage.sub_verdicts:
                enforce: dict[str, AttributeValue] = {
                    "proposal.id": proposal.id,
                    "validation.passed": sub.verdict != "failed",
                }
                if stage.name == "invariants" and sub.id in INVARIANT_IDS:
                    enforce["invariant.id"] = sub.id
                if sub.verdict == "failed":
                    enforce["validation.failure_reason"] = sub.message[:256]
                e = start_span("knhk.guard.enforce", enforce, parent=s, start_time=at)
                e.end(end_time=end)
        s.end(end_time=end)
        at = end


INVARIANT_IDS = frozenset({"Q1", "Q2", "Q3", "Q4", "Q5"})


class Executor:
    def __init__(
        self,
        ctx: LoopContext,
        set_knowledge: Callable[[KnowledgeState, TickBaseline | None], None],
        pipeline: Pipeline,
        inbox: trio.MemoryReceiveChannel[Cycle],
        *,
        inputs: Callable[[], ValidationInputs] = ValidationInputs,
        before_cycle: Callable[[], Awaitable[None]] | None = None,
        take_baseline: Callable[[str], TickBaseline | None] = lambda snapshot_id: None,
    ) -> None:
        self._ctx = ctx
        self._take_baseline = take_baseline
        self._inputs = inputs
        self._before_cycle = before_cycle
        self._set_knowledge = set_knowledge
        self._pipeline = pipeline
        self._inbox = inbox
        # The snapshot the latest promotion installed (for the execute span).
        self.last_promoted: Snapshot | None = None

    async def run(self) -> None:
        await each_cycle(self._inbox, self._execute)

    async def validate(self, proposal: Proposal) -> ValidationReport:
        """The report alone (a dry run)."""
        return (await self._validate(proposal))[0]

    async def _validate(self, proposal: Proposal) -> tuple[ValidationReport, dict[str, str]]:
        """Run the pipeline off the event loop (pySHACL holds the CPU for ms).
        Returns the report and the digests of what the verdict depended on."""
        state = self._ctx.knowledge()
        cfg = self._ctx.config()
        inputs = self._inputs()
        started = time.perf_counter()
        started_ns = time.time_ns()
        report = await trio.to_thread.run_sync(
            lambda: self._pipeline.run(
                proposal,
                state.graph,
                state.shapes,
                strict=cfg.validate.strict,
                now_ns=time.time_ns(),
                perf_counter=time.perf_counter,
                inputs=inputs,
            )
        )
        # What the verdict depended on, so a past validation can be replayed.
        digests = {
            "doctrines_digest": inputs.doctrines.digest,
            "guards_digest": inputs.guards.digest,
            "shapes_digest": state.shapes.digest,
            "config_digest": cfg.digest(),
        }
        stage_spans(proposal, report, started_ns)
        self._ctx.metrics.validation_duration_seconds.observe(time.perf_counter() - started)
        self._ctx.metrics.proposals_validated.labels("passed" if report.passed else "failed").inc()
        return report, digests

    async def _rebase(self, proposal: Proposal, cycle: Cycle) -> Proposal | None:
        """The same change against the now-current snapshot, as a new receipted
        proposal; None when that change was proposed against it already."""
        current = self._ctx.knowledge().current.snapshot_id
        fresh = make_proposal(
            ProposalIn(
                sector=proposal.sector,
                description=proposal.description,
                delta=proposal.delta,
                reasoning=proposal.reasoning,
                confidence=proposal.confidence,
                estimated_ticks=proposal.estimated_ticks,
                signers=proposal.signers,
                resources=proposal.resources,
                pattern_id=proposal.pattern_id,
            ),
            current,
            time.time_ns(),
        )
        stored = await self._ctx.writer.submit(
            store_proposals_job(
                self._ctx.store,
                self._ctx.receipts,
                [(fresh, proposal_draft(fresh, rebased_from=proposal.id))],
            )
        )
        cycle.receipt_ids.extend(canonical.receipt_id(r.body.seq) for _, r in stored)
        return fresh if stored else None

    async def judge(
        self, proposal: Proposal, cycle: Cycle | None = None, *, principal: str = ""
    ) -> tuple[ValidationReport, bool]:
        """Validate and, when it passes, promote. Returns (report, promoted).
        Both receipts name ``principal`` (who asked) when given."""
        report, digests = await self._validate(proposal)
        signed = await self._ctx.writer.submit(
            validation_job(
                self._ctx.store, self._ctx.receipts, proposal, report, digests, principal
            )
        )
        ids = [canonical.receipt_id(signed.body.seq)]
        promoted = False
        if report.passed:
            promoted, rid = await self.promote(proposal, principal=principal)
            ids.append(rid)
        if cycle is not None:
            cycle.receipt_ids.extend(ids)
            if report.passed:
                cycle.validations_passed += 1
            else:
                cycle.validations_failed += 1
            cycle.snapshots_promoted += promoted
        return report, promoted

    async def promote(self, proposal: Proposal, *, principal: str = "") -> tuple[bool, str]:
        state = self._ctx.knowledge()
        try:
            # Canonicalising a graph can take long (blank nodes): off the loop.
            record = await trio.to_thread.run_sync(
                lambda: promote(
                    state.current,
                    proposal,
                    apply_delta(state.graph, proposal.delta),
                    time.time_ns(),
                )
            )
            # Q5's baseline is the hot path as it is when the snapshot changes.
            baseline = self._take_baseline(record.meta.snapshot_id)
            signed = await self._ctx.writer.submit(
                install_job(
                    self._ctx.store,
                    self._ctx.receipts,
                    record,
                    expect_current=state.current.snapshot_id,
                    principal=principal,
                    baseline=baseline,
                )
            )
        except (KnowledgeError, SnapshotConflict) as exc:
            refused = await self._ctx.writer.submit(
                refusal_job(self._ctx.receipts, proposal, str(exc), principal)
            )
            return False, canonical.receipt_id(refused.body.seq)
        self.last_promoted = record.meta
        fresh = state_of(record, state.shapes)
        self._set_knowledge(fresh, baseline)
        # The new snapshot's SHACL baselines, off the next proposal's path.
        await trio.to_thread.run_sync(
            lambda: self._pipeline.warm(fresh.graph, fresh.shapes, self._inputs())
        )
        self._ctx.metrics.snapshots_promoted.inc()
        self._ctx.metrics.snapshot_version.set(record.meta.version)
        self._ctx.metrics.receipts_appended.labels("snapshot_promoted").inc()
        return True, canonical.receipt_id(signed.body.seq)

    async def _execute(self, cycle: Cycle) -> None:
        if self._before_cycle is not None:
            await self._before_cycle()
        budget = self._ctx.config().loop.max_promotions_per_cycle
        with cycle.phase("execute") as phase_span:
            for planned in cycle.proposals:
                if cycle.snapshots_promoted >= budget:
                    break
                proposal: Proposal | None = planned
                if planned.parent_snapshot_id != self._ctx.knowledge().current.snapshot_id:
                    proposal = await self._rebase(planned, cycle)
                if proposal is not None:
                    verdict, promoted = await self.judge(proposal, cycle)
                    # The last proposal executed, and the snapshot it made.
                    phase_span.set_attributes(
                        {"proposal.id": proposal.id, "validation.passed": verdict.passed}
                    )
                    if promoted and self.last_promoted is not None:
                        meta = self.last_promoted
                        made: dict[str, AttributeValue] = {
                            "snapshot.id": meta.snapshot_id,
                            "snapshot.version": meta.version,
                        }
                        if meta.parent_id:
                            made["snapshot.parent_id"] = meta.parent_id
                        phase_span.set_attributes(made)
        current = self._ctx.knowledge().current
        with cycle.phase(
            "knowledge", {"snapshot.id": current.snapshot_id, "snapshot.version": current.version}
        ):
            report = await self._ctx.writer.submit(
                cycle_job(
                    self._ctx.store,
                    self._ctx.receipts,
                    cycle.build_report(outcome="completed", detail=""),
                    cycle.principal,
                )
            )
        self._ctx.metrics.cycles.labels("completed").inc()
        self._ctx.metrics.cycle_duration_seconds.observe(report.duration_ms / 1000.0)
        self._ctx.metrics.receipts_appended.labels("cycle_completed").inc()
        cycle.finish(report)
