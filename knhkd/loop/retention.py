"""Retention (seed §6.1): observations past ``retention.observations_days``
are archived and then deleted; non-current snapshots past
``retention.snapshots_days`` are soft-deleted. On the ``[retention]``
schedule and on request (``knhkctl retention run``, the admin socket).

A run:
1. signs a checkpoint of everything committed (the archive's proofs reach it);
2. in a worker thread, in one read transaction, selects the observations to
   go (receipts/archive.py: a prefix of the stored ones, whole batches only)
   and writes the archive, fsynced, under ``retention.archive_dir``;
3. deletes them and their leaves through the one writer, at most
   ``retention.delete_batch`` a transaction, each moving
   ``observations.retained_from`` on; the last one also appends the
   ``observations_archived`` receipt (the archive's name and SHA-256, the
   range, the checkpoint);
4. soft-deletes old non-current snapshots in one transaction with a
   ``snapshots_retired`` receipt.

Guarantees: nothing is deleted before its archive is durable; receipts, the
Merkle tree, checkpoints and audit records are never deleted; one run at a
time. A run interrupted between deletions leaves ``retained_from`` where the
last committed deletion left it: its archive holds those observations, and
the next run archives from there on.

Must never: hold a read transaction on the event loop, or delete in one
write transaction more than ``delete_batch`` observations.
"""

from __future__ import annotations

import logging
import time
from pathlib import Path

import lmdb
import trio

from knhkd.errors import KnhkdError
from knhkd.loop.checkpointer import Checkpointer
from knhkd.loop.context import LoopContext
from knhkd.model import Outcome, RetentionRun, SnapshotRecord
from knhkd.receipts import archive, canonical
from knhkd.receipts.log import Draft, ReceiptLog
from knhkd.store.env import Store
from knhkd.store.writer import Job

log = logging.getLogger("knhkd.retention")
DAY_NS = 86_400 * 1_000_000_000


class RetentionFailed(KnhkdError):
    problem = "retention-failed"
    title = "Retention failed"


def _delete_job(
    store: Store,
    receipts: ReceiptLog,
    start: int,
    end: int,
    final: Draft | None,
    receipts_from: int,
) -> Job[str | None]:
    t = store.tables

    def job(txn: lmdb.Transaction) -> str | None:
        if (t.retained_from.get(txn) or 0) != start:
            raise lmdb.Error(f"retention: observations.retained_from moved from {start}")
        t.observations.delete_range(txn, start, end)
        t.observation_leaves.delete_range(txn, start, end)
        t.retained_from.put(txn, end)
        if final is None:
            return None
        t.retention_receipts_from.put(txn, receipts_from)
        rid = canonical.receipt_id(receipts.head(txn).next_seq)
        receipts.append(txn, final)
        return rid

    return job


def _retire_job(store: Store, receipts: ReceiptLog, cutoff_ns: int, now_ns: int) -> Job[list[str]]:
    t = store.tables

    def job(txn: lmdb.Transaction) -> list[str]:
        current = t.snapshot_current.get(txn)
        old: list[SnapshotRecord] = [
            rec
            for sid, rec in t.snapshots.items(txn)
            if sid != current and rec.retired_at_ns is None and rec.meta.promoted_at_ns < cutoff_ns
        ]
        for rec in old:
            rec.retired_at_ns = now_ns
            t.snapshots.add(txn, rec)
        ids = [r.meta.snapshot_id for r in old]
        if ids:
            receipts.append(
                txn,
                Draft(
                    kind="snapshots_retired",
                    outcome=Outcome("approved"),
                    subject_ids=ids,
                    inputs={"count": str(len(ids)), "older_than_ns": str(cutoff_ns)},
                ),
            )
        return ids

    return job


class Retention:
    def __init__(self, ctx: LoopContext, checkpointer: Checkpointer) -> None:
        self._ctx = ctx
        self._checkpointer = checkpointer
        self._lock = trio.Lock()

    async def run_once(self) -> RetentionRun:
        async with self._lock:
            try:
                return await self._run()
            except (archive.ArchiveError, OSError) as exc:
                raise RetentionFailed(str(exc)) from None

    async def _run(self) -> RetentionRun:
        cfg = self._ctx.config()
        store, writer, receipts = self._ctx.store, self._ctx.writer, self._ctx.receipts
        now = time.time_ns()
        cutoff = now - int(cfg.retention.observations_days * DAY_NS)
        await self._checkpointer.issue()
        out_dir = cfg.archive_dir

        def prepare() -> tuple[archive.Selection, str | None, tuple[str, int] | None]:
            with store.reader() as txn:
                sel = archive.select(store, txn, cutoff)
                if sel.count <= 0:
                    return sel, None, None
                path = out_dir / f"observations-{sel.first_seq:016d}-{sel.below_seq:016d}.ndjson.gz"
                return sel, path.name, archive.write(store, txn, sel, path, now)

        sel, name, written = await trio.to_thread.run_sync(prepare)
        result = RetentionRun(0, sel.first_seq, sel.below_seq, name, None)
        rid: str | None = None
        if name is not None and written is not None:
            digest, checkpoint_size = written
            final = Draft(
                kind="observations_archived",
                outcome=Outcome("approved"),
                subject_ids=[name],
                inputs={
                    "archive": name,
                    "archive_sha256": digest,
                    "first_seq": str(sel.first_seq),
                    "below_seq": str(sel.below_seq),
                    "count": str(sel.count),
                    "batch_receipts": str(len(sel.receipts)),
                    "checkpoint_size": str(checkpoint_size),
                },
            )
            step = cfg.retention.delete_batch
            for start in range(sel.first_seq, sel.below_seq, step):
                end = min(start + step, sel.below_seq)
                rid = await writer.submit(
                    _delete_job(
                        store,
                        receipts,
                        start,
                        end,
                        final if end == sel.below_seq else None,
                        sel.receipts_from,
                    )
                )
            result.archived, result.receipt_id = sel.count, rid
            self._ctx.metrics.receipts_appended.labels("observations_archived").inc()
        snap_cutoff = now - int(cfg.retention.snapshots_days * DAY_NS)
        result.snapshots_retired = await writer.submit(
            _retire_job(store, receipts, snap_cutoff, now)
        )
        if result.snapshots_retired:
            self._ctx.metrics.receipts_appended.labels("snapshots_retired").inc()
        result.data_file_bytes = _data_file_bytes(cfg.data_dir)
        log.info(
            "retention: %d observation(s) [%d, %d) archived to %s and deleted; "
            "%d snapshot(s) retired; data file %d bytes",
            result.archived,
            sel.first_seq,
            sel.below_seq,
            name or "-",
            len(result.snapshots_retired),
            result.data_file_bytes,
        )
        return result

    async def run(self) -> None:
        """The schedule."""
        while True:
            await trio.sleep(self._ctx.config().retention.interval_s)
            try:
                await self.run_once()
            except KnhkdError as exc:
                log.error("scheduled retention failed: %s", exc)


def _data_file_bytes(data_dir: Path) -> int:
    try:
        return (data_dir / "lmdb" / "data.mdb").stat().st_size
    except OSError:
        return 0
