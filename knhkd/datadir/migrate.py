"""Schema migrations: ``knhkd migrate`` moves a stopped daemon's store from
the schema version it was written with to ``SCHEMA_VERSION`` (store/schema.py).

How:
  1. the data directory's lock is taken (no daemon runs on it while it
     migrates) and the stored version read;
  2. the pre-migration backup: a base backup (``backup_data_dir``, the one
     backup mechanism: a compact LMDB copy, the public keyring and a manifest
     naming the older schema version and the signed checkpoint it covers) in
     a new sibling directory ``DATA_DIR.pre-migration-vN-TIMESTAMP``, which
     ``knhkctl backup verify`` and ``knhkctl restore --from`` take as they
     are (a restored pre-migration backup is of version N: migrate it again).
     The store is opened for it as the migration opens it, which creates the
     databases the current schema adds, empty: the only write before the
     backup, and no step;
  3. every step from the stored version to the current one (``STEPS``: step
     ``n`` takes version ``n`` to ``n + 1``), the new version and a
     ``schema_migrated`` receipt (from, to, the backup's name), all in one
     write transaction: a crash leaves the old store or the migrated one;
  4. verification: fsck of the whole store (chain, signatures, tree,
     checkpoints, every batch receipt against what it covers) and the anchor.

``dry_run`` reports the plan (versions, steps, where the backup would go)
and writes nothing.

Guarantees: a store of the current version is left untouched; a newer one is
refused; every receipt that verified before verifies after (no step rewrites
a receipt, an observation or a tree node).

Must never: run a step without the backup having been written first; migrate a
store a daemon holds; delete the backup.
"""

from __future__ import annotations

import os
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

import lmdb

from knhkd.crypto.keys import Signer
from knhkd.datadir.backup import backup_data_dir
from knhkd.datadir.fsck import fsck
from knhkd.model import BackupManifest, FsckReport, Outcome
from knhkd.receipts.backup import BackupError
from knhkd.receipts.log import Draft, ReceiptLog
from knhkd.store.env import (
    SCHEMA_VERSION,
    Store,
    StoreError,
    found_version,
    lock_data_dir,
    open_store,
    raw_env,
    read_version,
)
from knhkd.store.writer import run_transaction

# A step over the migration's write transaction: what it did, in one line.
Step = Callable[[Store, lmdb.Transaction], str]


def _v1_to_v2(store: Store, txn: lmdb.Transaction) -> str:
    """observations from here on committed to by salted digests (erasable)"""
    # ``observation_leaves`` and ``scrub`` exist already (open_store creates the
    # databases the schema adds). Observations stored so far keep receipts that
    # commit to their content (``records_sha256``, a hash over the
    # concatenation): no per-observation digest can stand in for them, so they
    # get no leaf, and erasure refuses them (loop/erasure.py, README).
    t = store.tables
    first = t.observations_next.get(txn) or 0
    t.salted_from.put(txn, first)
    return f"observations from seq {first} on are committed to by salted digests"


STEPS: dict[int, Step] = {1: _v1_to_v2}


class MigrationError(Exception):
    """Nothing to migrate from, or a migration that cannot run (exit 2)."""


@dataclass
class MigrationReport:
    from_version: int
    to_version: int
    dry_run: bool
    steps: list[str] = field(default_factory=list)
    # The directory of the pre-migration backup (``knhkctl restore --from``).
    backup: Path | None = None
    manifest: BackupManifest | None = None
    fsck: FsckReport | None = None

    @property
    def ok(self) -> bool:
        return self.fsck is None or self.fsck.ok


def stored_version(env: lmdb.Environment) -> int:
    found = read_version(env)
    version = None if found is None else found_version(found)
    if version is None:
        raise MigrationError(f"the store's schema version is unreadable ({found!r})")
    return version


def backup_root(data_dir: Path, version: int) -> Path:
    """Where the pre-migration backup of a store of ``version`` goes: a new
    sibling directory of backups (one base)."""
    stamp = time.strftime("%Y%m%dT%H%M%SZ", time.gmtime())
    return data_dir.parent / f"{data_dir.name}.pre-migration-v{version}-{stamp}"


def migrate(
    data_dir: Path,
    signer: Callable[[Store], Signer],
    *,
    dry_run: bool = False,
    map_size: int = 1024 * 1024 * 1024,
) -> MigrationReport:
    """Migrate ``data_dir``'s store to ``SCHEMA_VERSION``. ``signer`` gives the
    key that signs the migration's receipt (the store's current key)."""
    lmdb_dir = data_dir / "lmdb"
    if not (lmdb_dir / "data.mdb").exists():
        raise MigrationError(f"no knhkd store under {data_dir}")
    try:
        held = lock_data_dir(data_dir)
    except StoreError as exc:
        raise MigrationError(f"{exc}: stop the daemon first") from None
    lock_fd: int | None = held
    try:
        with raw_env(data_dir) as env:
            version = stored_version(env)
            report = MigrationReport(version, SCHEMA_VERSION, dry_run)
            if version > SCHEMA_VERSION:
                raise MigrationError(
                    f"the store's schema version {version} is newer than this knhkd's "
                    f"{SCHEMA_VERSION}: it cannot be migrated down"
                )
            missing = [v for v in range(version, SCHEMA_VERSION) if v not in STEPS]
            if missing:
                raise MigrationError(f"no migration from schema version {missing[0]}")
            if version == SCHEMA_VERSION or dry_run:
                report.steps = [
                    f"v{v} -> v{v + 1}: {(STEPS[v].__doc__ or STEPS[v].__name__).strip()}"
                    for v in range(version, SCHEMA_VERSION)
                ]
                if dry_run:
                    report.backup = backup_root(data_dir, version)
                return report
        # The raw environment is closed: one process opens an LMDB file once.
        # The backup's store closes a duplicate of the lock (flock: the lock
        # stays held through the original until the migration's store closes it).
        root = backup_root(data_dir, version)
        try:
            report.manifest = backup_data_dir(
                data_dir, root, migrating=True, lock_fd=os.dup(held)
            )
        except (BackupError, StoreError) as exc:
            raise MigrationError(
                f"the pre-migration backup failed, nothing migrated: {exc}"
            ) from None
        report.backup = root
        store = open_store(data_dir, map_size=map_size, migrating=True, lock_fd=lock_fd)
        lock_fd = None  # the store holds it now, and closes it
        try:
            _run_steps(store, signer(store), version, report)
            report.fsck = fsck(store, data_dir)
        finally:
            store.close()
        return report
    finally:
        if lock_fd is not None:
            os.close(lock_fd)


def _run_steps(store: Store, signer: Signer, version: int, report: MigrationReport) -> None:
    assert report.backup is not None  # never a step without the backup
    log = ReceiptLog(store, signer, time.time_ns)

    def job(txn: lmdb.Transaction) -> None:
        report.steps.clear()  # a map-full retry runs the job again
        for v in range(version, SCHEMA_VERSION):
            report.steps.append(f"v{v} -> v{v + 1}: {STEPS[v](store, txn)}")
        store.tables.schema_version.put(txn, SCHEMA_VERSION)
        log.append(
            txn,
            Draft(
                kind="schema_migrated",
                outcome=Outcome("approved"),
                inputs={
                    "from_version": str(version),
                    "to_version": str(SCHEMA_VERSION),
                    "backup": backup_name,
                },
            ),
        )

    assert report.manifest is not None
    backup_name = f"{report.backup.name}/{report.manifest.id}"
    [(_, error)] = run_transaction(store, [job])
    if error is not None:
        raise MigrationError(f"the migration failed and wrote nothing: {error}") from error
