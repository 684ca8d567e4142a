"""The auditor actor: the audit trail's intake and group commit.

Every audited decision (api/authn.py ``on_decision``, the admin socket, a
configuration reload, a read of healthcare observations) reaches the trail
through ``Daemon.audit`` → ``Auditor.audit``; this actor turns the queued
records into receipts of kind ``audit`` (model.py ``AuditRecord``) and
commits them through the store writer, so they are signed, chained and
Merkle-logged like every receipt, and checkpoints, inclusion proofs,
``verify-chain``, ``knhkctl verify`` and ``fsck`` cover them unchanged.

Guarantees:
- No fsync per request: ``audit`` only enqueues; the actor takes what is
  queued, waits at most ``audit.flush_interval_ms`` for more (or until
  ``audit.max_batch``), and commits the lot in one writer job, which the
  writer may group with other jobs.
- Identical records (same event, principal, route, decision, reason, peer,
  sector, detail) within one flush become one receipt with ``count`` and the
  first and last time, so a stream of ingest requests costs one receipt per
  flush, not one per request. Nothing is merged across flushes.
- Back-pressure, not silent loss: when ``audit.queue_capacity`` records
  wait, ``audit`` waits up to ``audit.enqueue_wait_s`` for room. A record that
  cannot be stored (queue full past that wait, storage full, read-only
  store, the daemon stopping) is counted in ``knhk_audit_dropped_total{reason}``
  and logged (without its fields' secrets: there are none to log).
- ``close`` lets the actor commit what is queued, then return (the nursery
  tree closes it after the HTTP and admin servers stop).

Must never: put a token, key or request body in a record; make a request
wait for an fsync; drop a record without counting it.
"""

from __future__ import annotations

import logging
import re
import time
from collections.abc import Callable

import lmdb
import msgspec
import trio

from knhkd.config import Config
from knhkd.errors import KnhkdError
from knhkd.loop.batching import receive_batch
from knhkd.loop.writer import StoreWriter
from knhkd.model import AuditRecord, Outcome, SignedReceipt
from knhkd.receipts.log import Draft, ReceiptLog
from knhkd.store.env import Store
from knhkd.store.writer import Job
from knhkd.telemetry.metrics import Metrics

log = logging.getLogger("knhkd.audit")

# (record, time it was decided in ns)
Queued = tuple[AuditRecord, int]


def drafts_of(batch: list[Queued]) -> list[Draft]:
    """One draft per distinct record, in order of first appearance."""
    merged: dict[tuple[object, ...], tuple[AuditRecord, list[int]]] = {}
    for record, at in batch:
        key = (*msgspec.structs.astuple(record)[:-1], tuple(sorted(record.detail.items())))
        seen = merged.get(key)
        if seen is None:
            merged[key] = (record, [1, at, at])
        else:
            seen[1][0] += 1
            seen[1][2] = at
    out = []
    for record, (count, first, last) in merged.values():
        inputs = {
            "event": record.event,
            "principal": record.principal,
            "route": record.route,
            "decision": record.decision,
            "reason": record.reason,
            "peer": record.peer,
            "count": str(count),
            "first_ns": str(first),
            "last_ns": str(last),
        }
        for name, value in record.detail.items():
            inputs[f"detail.{name}"] = value
        out.append(
            Draft(
                kind="audit",
                outcome=Outcome(
                    status="approved" if record.decision == "allow" else "rejected",
                    detail=record.reason,
                ),
                sector=record.sector,
                inputs=inputs,
            )
        )
    return out


def audit_job(store: Store, receipts: ReceiptLog, drafts: list[Draft]) -> Job[list[SignedReceipt]]:
    def job(txn: lmdb.Transaction) -> list[SignedReceipt]:
        return receipts.append_many(txn, drafts)

    return job


class Auditor:
    def __init__(
        self,
        config: Callable[[], Config],
        store: Store,
        writer: StoreWriter,
        receipts: ReceiptLog,
        metrics: Metrics,
    ) -> None:
        self._config = config
        self._store = store
        self._writer = writer
        self._receipts = receipts
        self._metrics = metrics
        capacity = config().audit.queue_capacity
        self._send, self._recv = trio.open_memory_channel[Queued](capacity)
        self.committed = 0

    async def audit(self, record: AuditRecord) -> bool:
        """Queue ``record``; True once queued (not yet durable: within one
        flush interval). Waits for room up to ``audit.enqueue_wait_s``."""
        item = (record, time.time_ns())
        try:
            self._send.send_nowait(item)
            return True
        except trio.WouldBlock:
            with trio.move_on_after(self._config().audit.enqueue_wait_s):
                try:
                    await self._send.send(item)
                    return True
                except (trio.ClosedResourceError, trio.BrokenResourceError):
                    pass
            self._dropped([item], "queue_full", "the audit queue stayed full")
        except (trio.ClosedResourceError, trio.BrokenResourceError):
            self._dropped([item], "stopping", "the auditor is closed (stopping)")
        return False

    def audit_nowait(self, record: AuditRecord) -> bool:
        """Queue ``record`` without waiting (for a caller that cannot wait);
        False, counted and logged as dropped, when the queue is full or
        closed: the caller decides whether to go on without it."""
        item = (record, time.time_ns())
        try:
            self._send.send_nowait(item)
            return True
        except trio.WouldBlock:
            self._dropped([item], "queue_full", "the audit queue is full")
        except (trio.ClosedResourceError, trio.BrokenResourceError):
            self._dropped([item], "stopping", "the auditor is closed (stopping)")
        return False

    def close(self) -> None:
        self._send.close()

    def _dropped(self, items: list[Queued], reason: str, why: str) -> None:
        self._metrics.audit_dropped.labels(reason).inc(len(items))
        first = items[0][0]
        log.error(
            "%d audit record(s) NOT stored (%s), first: %s %s %s by %s from %s: %s",
            len(items),
            why,
            first.event,
            first.decision,
            first.route,
            first.principal,
            first.peer or "-",
            first.reason,
        )

    async def run(self) -> None:
        """Actor body: commit batches until closed and drained."""
        while True:
            cfg = self._config().audit
            got = await receive_batch(self._recv, cfg.max_batch)
            if got is None:
                return
            batch = got[0]
            # Wait a little for company: one commit for every record of the interval.
            with trio.move_on_after(cfg.flush_interval_ms / 1000):
                while len(batch) < cfg.max_batch:
                    try:
                        batch.append(await self._recv.receive())
                    except trio.EndOfChannel:
                        break
            await self._commit(batch)

    async def _commit(self, batch: list[Queued]) -> None:
        try:
            drafts = drafts_of(batch)
            await self._writer.submit(audit_job(self._store, self._receipts, drafts))
        except Exception as exc:
            if not isinstance(exc, KnhkdError):
                # A fault no record explains: counted, then for the supervisor.
                self._dropped(batch, "error", f"{type(exc).__name__}: {exc}")
                raise
            # Storage full, read-only, stopping, a failed commit: a state the
            # writer reports; the records are counted and logged, the actor goes on.
            reason = re.sub(r"(?<!^)(?=[A-Z])", "_", type(exc).__name__).lower()
            self._dropped(batch, reason, exc.detail or str(exc))
            return
        self.committed += len(drafts)
        self._metrics.receipts_appended.labels("audit").inc(len(drafts))
        for draft in drafts:
            self._metrics.audit_records.labels(
                draft.inputs["event"], draft.inputs["decision"]
            ).inc()
