"""The planner actor: patterns in, stored ΔΣ proposals out.

Guarantees:
- A change already proposed against the same snapshot (same parent, same
  delta) is not generated again, so a rejected change is not re-proposed every
  cycle while its pattern persists.
- Every new proposal is stored with a ``proposal_generated`` receipt in one
  transaction before the cycle moves on to validation.

Must never: mutate knowledge; that is the executor's.
"""

from __future__ import annotations

import hashlib
import time

import lmdb
import msgspec
import trio

from knhkd.errors import NotFound
from knhkd.loop.context import LoopContext
from knhkd.loop.cycle import Cycle, each_cycle
from knhkd.model import Outcome, Proposal, ProposalSignature, SignedReceipt
from knhkd.plan.planner import plan
from knhkd.plan.proposals import delta_id, make_proposal
from knhkd.receipts import canonical
from knhkd.receipts.log import Draft, ReceiptLog
from knhkd.store.env import Store
from knhkd.store.writer import Job


def proposal_draft(
    p: Proposal, *, rebased_from: str | None = None, principal: str = ""
) -> Draft:
    """The ``proposal_generated`` receipt of ``p``; ``principal`` (signed in
    ``inputs``) is who submitted it, absent for the planner's own."""
    inputs = {"parent_snapshot_id": p.parent_snapshot_id, "proposal_id": p.id}
    if principal:
        inputs["principal"] = principal
    if p.pattern_id:
        inputs["pattern_id"] = p.pattern_id
    if rebased_from:
        inputs["rebased_from"] = rebased_from
    return Draft(
        kind="proposal_generated",
        outcome=Outcome("pending", "validate"),
        subject_ids=[p.id] + ([p.pattern_id] if p.pattern_id else []),
        sector=p.sector,
        inputs=inputs,
    )


def change_key(p: Proposal) -> bytes:
    """What makes two proposals the same change: the snapshot, the delta, and
    who signed for it with what resources (a signed re-submission of a rejected
    change is a new proposal)."""
    governance = hashlib.sha256(
        msgspec.msgpack.encode([p.sector, sorted(p.signers), sorted(p.resources.items())])
    ).hexdigest()[:32]
    return f"{p.parent_snapshot_id}:{delta_id(p.delta)}:{governance}".encode()


def store_proposals_job(
    store: Store, receipts: ReceiptLog, proposals: list[tuple[Proposal, Draft]]
) -> Job[list[tuple[Proposal, SignedReceipt]]]:
    """Store the proposals not stored yet, each with its receipt."""

    def job(txn: lmdb.Transaction) -> list[tuple[Proposal, SignedReceipt]]:
        out = []
        proposals_db, deltas = store.tables.proposals, store.tables.proposal_deltas
        for p, draft in proposals:
            change = change_key(p)
            # The same change against the same snapshot was judged already
            # (pattern ids and confidence differ from cycle to cycle).
            if not deltas.put(txn, change, p.id, overwrite=False):
                continue
            proposals_db.add(txn, p)
            out.append((p, receipts.append(txn, draft)))
        return out

    return job


def sign_job(
    store: Store, receipts: ReceiptLog, proposal_id: str, signature: ProposalSignature
) -> Job[tuple[Proposal, bool]]:
    """Add ``signature`` to the stored proposal with a ``proposal_signed``
    receipt (read, changed and written in the writer's one transaction, so
    concurrent signatures are never lost). A principal's second signature
    changes nothing: (proposal, False)."""

    def job(txn: lmdb.Transaction) -> tuple[Proposal, bool]:
        table = store.tables.proposals
        p = table.get(txn, proposal_id)
        if p is None:
            raise NotFound(f"no proposal {proposal_id[:64]!r}", title="Proposal not found")
        if any(s.principal == signature.principal for s in p.signatures):
            return p, False
        p = msgspec.structs.replace(p, signatures=[*p.signatures, signature])
        table.put(txn, p.id, p)
        receipts.append(
            txn,
            Draft(
                kind="proposal_signed",
                outcome=Outcome("approved", f"{len(p.signatures)} signature(s)"),
                subject_ids=[p.id],
                sector=p.sector,
                inputs={
                    "proposal_id": p.id,
                    "principal": signature.principal,
                    "capacities": ",".join(signature.capacities),
                },
            ),
        )
        return p, True

    return job


class Planner:
    def __init__(
        self,
        ctx: LoopContext,
        inbox: trio.MemoryReceiveChannel[Cycle],
        to_executor: trio.MemorySendChannel[Cycle],
    ) -> None:
        self._ctx = ctx
        self._inbox = inbox
        self._to_executor = to_executor

    async def run(self) -> None:
        await each_cycle(self._inbox, self._plan)

    async def _plan(self, cycle: Cycle) -> None:
        state = self._ctx.knowledge()
        with cycle.phase("plan") as phase_span:
            now = time.time_ns()
            drafts = [
                make_proposal(p, state.current.snapshot_id, now)
                for p in plan(cycle.patterns, state.graph)
            ]
            if drafts:
                stored = await self._ctx.writer.submit(
                    store_proposals_job(
                        self._ctx.store,
                        self._ctx.receipts,
                        [(p, proposal_draft(p)) for p in drafts],
                    )
                )
                cycle.proposals = [p for p, _ in stored]
                cycle.receipt_ids.extend(canonical.receipt_id(r.body.seq) for _, r in stored)
                self._ctx.metrics.proposals_generated.inc(len(stored))
                self._ctx.metrics.receipts_appended.labels("proposal_generated").inc(len(stored))
            if cycle.proposals:
                top = max(cycle.proposals, key=lambda p: p.confidence)
                phase_span.set_attributes(
                    {"proposal.id": top.id, "proposal.confidence": top.confidence}
                )
        await self._to_executor.send(cycle)
