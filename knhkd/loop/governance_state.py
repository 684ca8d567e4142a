"""The governance the running daemon holds: doctrine and guard sets loaded
from files, guard relaxations rebuilt from LMDB, and the validation inputs
built from them.

Guarantees:
- A relaxation step is applied to a copy of the relaxation book, persisted
  (each record and one ``guard_relaxation_step`` receipt per event, in one
  transaction), and only then does the copy replace the book: memory never
  holds a step the disk does not.
- Whenever the doctrine set's or the guard set's digest differs from the last
  one receipted (first start included), a ``governance_changed`` receipt
  records the new digest.

Must never: relax a guard without a receipt.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from pathlib import Path

import lmdb

from knhkd.config import Config, GovernanceConfig
from knhkd.governance.doctrines import DoctrineSet, load_doctrines
from knhkd.governance.guards import GuardSet, load_guards
from knhkd.governance.relaxation import GuardRelaxations
from knhkd.loop.writer import StoreWriter
from knhkd.model import (
    Outcome,
    RelaxationEvent,
    RuntimeFigures,
    SignedReceipt,
    Snapshot,
)
from knhkd.receipts.log import Draft, ReceiptLog
from knhkd.store.env import Store
from knhkd.store.writer import Job
from knhkd.validate.types import ValidationInputs


def relaxation_job(
    store: Store, receipts: ReceiptLog, events: Sequence[RelaxationEvent]
) -> Job[list[SignedReceipt]]:
    def job(txn: lmdb.Transaction) -> list[SignedReceipt]:
        relaxations = store.tables.relaxations
        for ev in events:
            relaxations.put(txn, ev.record.id, ev.record)
        return receipts.append_many(
            txn,
            [
                Draft(
                    kind="guard_relaxation_step",
                    outcome=Outcome(
                        "pending" if ev.record.state in ("requested", "approved") else "approved",
                        f"{ev.step}: {ev.detail}",
                    ),
                    subject_ids=[ev.relaxation_id, ev.guard_id],
                    inputs={
                        "step": ev.step,
                        "actor": ev.actor,
                        # The authenticated principal who took the step (the
                        # actor's name is its ``Principal.name``); absent for
                        # the steps time takes.
                        **({"principal": ev.actor} if ev.actor else {}),
                        "state": ev.record.state,
                        "approvals": str(len(ev.record.approvals)),
                        "quorum": str(ev.record.quorum),
                    },
                )
                for ev in events
            ],
        )

    return job


def digests_job(
    store: Store, receipts: ReceiptLog, digests: dict[str, str]
) -> Job[list[SignedReceipt]]:
    def job(txn: lmdb.Transaction) -> list[SignedReceipt]:
        out = []
        for name, digest in sorted(digests.items()):
            slot = store.tables.governance_digests[name]
            old = slot.get(txn)
            if old == digest:
                continue
            slot.put(txn, digest)
            inputs = {"set": name, "digest": digest}
            if old is not None:
                inputs["previous_digest"] = old
            out.append(
                receipts.append(
                    txn,
                    Draft(
                        kind="governance_changed",
                        outcome=Outcome("approved", f"{name} set in force"),
                        subject_ids=[f"{name}:{digest}"],
                        inputs=inputs,
                    ),
                )
            )
        return out

    return job


class Governance:
    """The doctrine and guard sets and the relaxation book in force.

    Built loaded (``KnowledgeError`` or ``RelaxationError`` when a file is
    invalid); ``load`` replaces all of it, or none."""

    def __init__(
        self, store: Store, writer: StoreWriter, receipts: ReceiptLog, cfg: Config
    ) -> None:
        self._store = store
        self._writer = writer
        self._receipts = receipts
        self.doctrines, self.guards, self._rules, self.book = self._read(cfg)

    def _read(
        self, cfg: Config
    ) -> tuple[DoctrineSet, GuardSet, GovernanceConfig, GuardRelaxations]:
        gov = cfg.governance
        doctrines = load_doctrines(Path(gov.doctrines_dir), gov.custom_checks)
        guards = load_guards(Path(gov.guards_dir))
        with self._store.reader() as txn:
            records = list(self._store.tables.relaxations.values(txn))
        return doctrines, guards, gov, GuardRelaxations(guards, gov, records)

    def load(self, cfg: Config) -> None:
        """Read the doctrine and guard files and the stored relaxations; all
        or nothing."""
        # All read first: a reload that fails half-way keeps the old sets whole.
        self.doctrines, self.guards, self._rules, self.book = self._read(cfg)

    async def record_digests(self) -> list[SignedReceipt]:
        return await self._writer.submit(
            digests_job(
                self._store,
                self._receipts,
                {"doctrines": self.doctrines.digest, "guards": self.guards.digest},
            )
        )

    async def step(
        self, fn: Callable[[GuardRelaxations], list[RelaxationEvent]]
    ) -> list[RelaxationEvent]:
        """Apply one relaxation step (``fn`` on a copy); persist; then swap."""
        copy = GuardRelaxations(self.guards, self._rules, self.book.records())
        events = fn(copy)
        if events:
            await self._writer.submit(relaxation_job(self._store, self._receipts, events))
        self.book = copy
        return events

    def inputs(
        self, cfg: Config, figures: RuntimeFigures, ancestry: tuple[Snapshot, ...]
    ) -> ValidationInputs:
        return ValidationInputs(
            settings=cfg.validate,
            doctrines=self.doctrines,
            guards=self.guards,
            relaxations=tuple(self.book.records()),
            figures=figures,
            ancestry=ancestry,
        )
