"""Backups taken by the running daemon: on request (``knhkctl backup``, the
admin socket) and on the ``[backup]`` schedule, each receipted; and the
receipt that records a restore, at the first start of a restored data
directory.

Guarantees:
- One backup at a time; the copy runs in a worker thread in one LMDB read
  transaction (receipts/backup.py), so ingest keeps committing meanwhile.
- A checkpoint of everything committed is signed just before the copy, so
  every observation acknowledged before the backup was asked for is covered
  by the backup's checkpoint.
- Each backup is receipted (``backup_taken``: id, kind, parent, the covered
  checkpoint's size, the manifest's SHA-256) after its manifest is durable.
- An incremental's parent is the newest backup under the same directory;
  without one (or every ``backup.base_every`` backups) a base is taken.
- Retention keeps the newest ``backup.keep`` backups and every backup they
  need (their chain back to the base); only then are older ones deleted.
- ``record_restore`` appends the ``restored`` receipt before any other
  receipt of the restored daemon, then removes the marker.

Must never: hold a read transaction on the event loop; delete a backup a
kept one depends on.
"""

from __future__ import annotations

import hashlib
import logging
import shutil
from pathlib import Path

import lmdb
import msgspec
import trio

from knhkd.errors import KnhkdError, NotFound
from knhkd.loop.checkpointer import Checkpointer
from knhkd.loop.context import LoopContext
from knhkd.loop.writer import StoreWriter
from knhkd.model import BackupKind, BackupManifest, Outcome
from knhkd.receipts import backup as rb
from knhkd.receipts.log import Draft, ReceiptLog
from knhkd.store.writer import Job

log = logging.getLogger("knhkd.backup")
MARKER = "restored.json"


class BackupFailed(KnhkdError):
    problem = "backup-failed"
    title = "Backup failed"


def newest(out_root: Path) -> list[BackupManifest]:
    """The complete backups under ``out_root``, oldest first."""
    if not out_root.is_dir():
        return []
    found = []
    for d in sorted(out_root.iterdir()):
        path = d / rb.MANIFEST
        if not d.name.startswith(".") and path.is_file():
            found.append(rb.decode_manifest(path.read_bytes(), path))
    return found


def prune(out_root: Path, keep: int) -> list[str]:
    """Delete backups beyond the newest ``keep`` that no kept one needs."""
    backups = newest(out_root)
    by_id = {m.id: m for m in backups}
    kept: set[str] = set()
    for m in backups[-keep:]:
        cur: BackupManifest | None = m
        while cur is not None and cur.id not in kept:
            kept.add(cur.id)
            cur = by_id.get(cur.parent_id) if cur.parent_id else None
    gone = [m.id for m in backups if m.id not in kept]
    for backup_id in gone:
        shutil.rmtree(out_root / backup_id, ignore_errors=True)
    return gone


class Backups:
    def __init__(self, ctx: LoopContext, checkpointer: Checkpointer) -> None:
        self._ctx = ctx
        self._checkpointer = checkpointer
        self._lock = trio.Lock()

    async def take(
        self, out_root: Path, kind: BackupKind | None = None, *, small: bool = False
    ) -> BackupManifest:
        """``kind`` None: by the schedule (a base every ``base_every``
        backups, incrementals on the newest between), a base if there is
        none; with ``small`` an incremental whenever there is one to take it
        from (a base copies the whole store: not for a caller who waits)."""
        async with self._lock:
            try:
                return await self._take(out_root, kind, small)
            except (rb.BackupError, OSError) as exc:
                raise BackupFailed(str(exc)) from None

    async def _take(self, out_root: Path, kind: BackupKind | None, small: bool) -> BackupManifest:
        existing = await trio.to_thread.run_sync(newest, out_root)
        parent = existing[-1] if existing else None
        if kind is None and small:
            kind = "base" if parent is None else "incremental"
        if kind is None:
            since_base = 0
            for m in reversed(existing):
                if m.kind == "base":
                    break
                since_base += 1
            base_every = self._ctx.config().backup.base_every
            kind = "incremental" if parent is not None and since_base + 1 < base_every else "base"
        if kind == "incremental" and parent is None:
            raise NotFound(f"no backup under {out_root} to take an incremental from")
        await self._checkpointer.issue()
        store = self._ctx.store
        manifest = await trio.to_thread.run_sync(
            lambda: rb.take(store, out_root, kind, parent if kind == "incremental" else None)
        )
        digest = hashlib.sha256(rb.encode_manifest(manifest)).hexdigest()
        await self._ctx.writer.submit(_receipt_job(self._ctx.receipts, manifest, digest))
        log.info(
            "%s backup %s: checkpoint %d, %d receipts",
            manifest.kind,
            manifest.id,
            manifest.checkpoint_size,
            manifest.tree_size,
        )
        return manifest

    async def run(self) -> None:
        """The schedule; idle while ``backup.dir`` is empty."""
        while True:
            cfg = self._ctx.config().backup
            await trio.sleep(cfg.interval_s)
            cfg = self._ctx.config().backup
            if not cfg.dir:
                continue
            try:
                await self.take(Path(cfg.dir))
                gone = await trio.to_thread.run_sync(prune, Path(cfg.dir), cfg.keep)
                if gone:
                    log.info("backups past retention deleted: %s", ", ".join(gone))
            except KnhkdError as exc:
                log.error("scheduled backup failed: %s", exc)


def _append_job(receipts: ReceiptLog, draft: Draft) -> Job[None]:
    def job(txn: lmdb.Transaction) -> None:
        receipts.append(txn, draft)

    return job


def _receipt_job(receipts: ReceiptLog, m: BackupManifest, digest: str) -> Job[None]:
    return _append_job(
        receipts,
        Draft(
            kind="backup_taken",
            outcome=Outcome("approved"),
            subject_ids=[m.id],
            inputs={
                "kind": m.kind,
                "parent_id": m.parent_id or "",
                "checkpoint_size": str(m.checkpoint_size),
                "tree_size": str(m.tree_size),
                "manifest_sha256": digest,
            },
        ),
    )


class _Marker(msgspec.Struct):
    backup_id: str
    base_id: str
    tree_size: int
    point: str
    # What the restore erased again (datadir/backup.py): each of those records
    # names this receipt.
    erased_again: list[str] = []
    erasures_reapplied: list[str] = []


async def record_restore(data_dir: Path, writer: StoreWriter, receipts: ReceiptLog) -> bool:
    """The ``restored`` receipt of a restored data directory's first start."""
    path = data_dir / MARKER
    try:
        marker = msgspec.json.decode(path.read_bytes(), type=_Marker)
    except FileNotFoundError:
        return False

    inputs = {
        "backup_id": marker.backup_id,
        "base_id": marker.base_id,
        "restored_tree_size": str(marker.tree_size),
        "point": marker.point,
    }
    if marker.erased_again:
        inputs["erased_again"] = str(len(marker.erased_again))
        inputs["erased_again_ids"] = ",".join(marker.erased_again)
        inputs["erasures_reapplied"] = ",".join(marker.erasures_reapplied)
    draft = Draft(
        kind="restored",
        outcome=Outcome("approved"),
        subject_ids=[marker.backup_id],
        inputs=inputs,
    )
    await writer.submit(_append_job(receipts, draft))
    await trio.to_thread.run_sync(path.unlink)
    log.info("restored from backup %s (%s)", marker.backup_id, marker.point)
    return True
