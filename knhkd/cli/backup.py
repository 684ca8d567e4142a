"""``knhkctl backup``, ``knhkctl backup verify`` and ``knhkctl restore``.

Guarantees: ``backup`` asks the running daemon (the admin socket) and prints
the manifest; ``backup verify`` restores the newest backup (or ``--id``) into
a temporary directory, runs fsck and verify-chain on it, and checks its
checkpoint against the live log (the daemon, or ``--against DATA_DIR``) with
an RFC 9162 consistency proof; ``restore`` works without a daemon
(datadir/backup.py). Each prints one line and exits non-zero on failure.
A backup of an older schema version (``knhkd migrate``'s pre-migration
backup) restores and verifies as it is; both say that ``knhkd migrate`` is
next.

Must never: report a backup verified without all three checks.
"""

from __future__ import annotations

import argparse
import tempfile
from collections.abc import Callable
from datetime import datetime
from pathlib import Path
from typing import Any

import msgspec

EXIT_OK, EXIT_VERIFY_FAILED = 0, 1

Call = Callable[[str, dict[str, Any], bool], Any]


def add_parsers(sub: Any) -> None:
    bk = sub.add_parser("backup", help="take or verify a backup (see README: Backups and restore)")
    bk.add_argument("verb", nargs="?", choices=("verify",), help="verify DIR instead of taking one")
    bk.add_argument("dir", nargs="?", help="(verify) the backup directory")
    bk.add_argument("--out", help="directory of backups to add one to")
    bk.add_argument("--kind", choices=("base", "incremental"), help="default: by the schedule")
    bk.add_argument("--id", help="(verify) which backup; default: the newest")
    bk.add_argument("--against", help="(verify) a stopped daemon's data dir instead of the daemon")
    bk.add_argument(
        "--storage-key", help="(verify) the storage key, when observations are sealed at rest"
    )
    rs = sub.add_parser("restore", help="rebuild a data directory from backups")
    rs.add_argument("--from", dest="source", required=True, help="the backup directory")
    point = rs.add_mutually_exclusive_group()
    point.add_argument("--at", help="restore as of this time (ISO 8601, or ns since the epoch)")
    point.add_argument("--receipt", type=int, help="restore up to this receipt (inclusive)")
    # The directory restored into is the global --data-dir (knhkctl's
    # option on every command): given, or the configuration's.
    rs.add_argument("--force", action="store_true", help="replace the store of a non-empty dir")
    rs.add_argument("--signing-key", help="copy this signing key into DATA_DIR/keys/")
    rs.add_argument(
        "--storage-key",
        help="the storage key, when observations are sealed at rest and one a later backup "
        "erased must be erased again",
    )


def _at_ns(text: str) -> int:
    if text.isdigit():
        return int(text)
    try:
        return int(datetime.fromisoformat(text).timestamp() * 1e9)
    except ValueError:
        raise ValueError(f"--at {text!r}: not an ISO 8601 time nor nanoseconds") from None


def run(args: argparse.Namespace, call: Call, fail: type[Exception]) -> int:
    from knhkd.receipts.backup import BackupError
    from knhkd.store.env import StoreError

    try:
        if args.group == "restore":
            return _restore(args)
        if args.verb == "verify":
            if not args.dir:
                raise fail("backup verify needs the backup directory")
            return _verify(args, call)
        if not args.out:
            raise fail("backup needs --out DIR (or: backup verify DIR)")
        cargs: dict[str, Any] = {"out": str(Path(args.out).resolve())}
        if args.kind:
            cargs["kind"] = args.kind
        m = call("backup.take", cargs, True)
        print(
            f"{m['kind']} backup {m['id']}: checkpoint {m['checkpoint_size']}, "
            f"{m['tree_size']} receipts, {m['observations_next']} observations"
        )
        return EXIT_OK
    except (BackupError, StoreError, ValueError) as exc:
        raise fail(str(exc)) from None


def _restore(args: argparse.Namespace) -> int:
    from knhkd.crypto.sealing import load_key
    from knhkd.datadir.backup import Point, restore

    point = Point(receipt=args.receipt, at_ns=None if args.at is None else _at_ns(args.at))
    r = restore(
        Path(args.source),
        Path(args.data_dir),
        point,
        force=args.force,
        signing_key=Path(args.signing_key) if args.signing_key else None,
        storage_key=load_key(Path(args.storage_key)) if args.storage_key else None,
    )
    again = (
        f"; erased again {len(r.erased_again)} observations ({', '.join(r.erasures_reapplied)})"
        if r.erased_again
        else ""
    )
    print(
        f"restored {args.data_dir} from {r.backup_id} ({r.point}): receipts 0..{r.tree_size - 1}, "
        f"{r.observations} observations{again}{_older(r.schema_version, args.data_dir)}"
    )
    return EXIT_OK


def _older(version: int, data_dir: str) -> str:
    from knhkd.store.env import SCHEMA_VERSION

    if version >= SCHEMA_VERSION:
        return ""
    return (
        f"; schema v{version}, older than this knhkd's v{SCHEMA_VERSION}: "
        f"run `knhkd migrate --data-dir {data_dir}` before starting knhkd on it"
    )


def _verify(args: argparse.Namespace, call: Call) -> int:
    from knhkd.crypto.keys import Verifier
    from knhkd.crypto.sealing import load_key
    from knhkd.datadir import backup as db
    from knhkd.datadir.fsck import fsck_data_dir
    from knhkd.receipts import backup as rb
    from knhkd.receipts.log import verify_store
    from knhkd.store.env import SCHEMA_VERSION, open_store

    root = Path(args.dir)
    backups = db.load_backups(root)
    chosen = next((m for m in backups if m.id == args.id), None) if args.id else backups[-1]
    if chosen is None:
        raise rb.BackupError(f"{root}: no backup {args.id}")
    chain = db.chain_of(backups, chosen)
    problems = [p for m in chain for p in db.check_files(root, m)]
    if problems:
        print(f"backup {chosen.id}: NOT VERIFIED: {problems[0]}")
        return EXIT_VERIFY_FAILED
    # An older schema (a pre-migration backup) is checked at its version.
    older = db.schema_of(chain) < SCHEMA_VERSION
    keys = Verifier.from_json((root / chosen.id / rb.KEYRING_FILE).read_bytes())
    with tempfile.TemporaryDirectory(prefix="knhkd-backup-verify-") as tmp:
        target = Path(tmp) / "data"
        later = [m for m in backups if m.id > chosen.id]
        key = load_key(Path(args.storage_key)) if args.storage_key else None
        db.restore(
            root,
            target,
            db.Point(receipt=chosen.tree_size - 1) if later else db.Point(),
            storage_key=key,
        )
        report = fsck_data_dir(target, older_schema=older, storage_key=key)
        if not report.ok:
            print(f"backup {chosen.id}: NOT VERIFIED: fsck: {report.errors[0]}")
            return EXIT_VERIFY_FAILED
        store = open_store(target, readonly=True, exclusive=False, migrating=older)
        try:
            chain_rep = verify_store(store, keys)
        finally:
            store.close()
        if not chain_rep.verified:
            print(f"backup {chosen.id}: NOT VERIFIED: the receipt chain does not verify")
            return EXIT_VERIFY_FAILED
    if args.against:
        store = open_store(Path(args.against), readonly=True, exclusive=False)
        try:
            note, proof = rb.consistency_to_latest(store, chosen.checkpoint_size)
        finally:
            store.close()
        live_keys = Verifier.from_json((Path(args.against) / "keys" / "public.json").read_bytes())
    else:
        res = call("backup.consistency", {"size": chosen.checkpoint_size}, True)
        note, proof = res["checkpoint"], [bytes.fromhex(p) for p in res["proof"]]
        live_keys = Verifier(msgspec.convert(call("keys.export_public", {}, True), _ring_type()))
    try:
        verdict = db.verify_consistency(
            chosen, note, proof, {**live_keys.public_keys(), **keys.public_keys()}
        )
    except rb.BackupError as exc:
        print(f"backup {chosen.id}: NOT VERIFIED: {exc}")
        return EXIT_VERIFY_FAILED
    print(
        f"backup {chosen.id}: verified: files, fsck clean, {chain_rep.total_count} receipts "
        f"verify; {verdict}{_older(chosen.schema_version, 'DATA_DIR') if older else ''}"
    )
    return EXIT_OK


def _ring_type() -> Any:
    from knhkd.model import PublicKeyring

    return PublicKeyring
