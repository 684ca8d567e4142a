"""The log's public keyring and key rotation.

The keyring lives in LMDB (``keys``: key id → ``PublicKeyEntry``) with the
current key id in ``meta`` (``keys.current``); ``keys/public.json`` beside the
secret key is an export of it.

Rotation protocol (crash-safe at every step):
  1. the new secret key is written to ``signing.key.next`` (0600, fsynced);
  2. one transaction appends a ``key_rotated`` receipt signed by the outgoing
     key (it names the new key id and public key), closes the outgoing key's
     validity window at that receipt's time, opens the new key's window there,
     and makes the new key current;
  3. ``signing.key.next`` is renamed over ``signing.key`` (the outgoing secret
     is gone: it can sign nothing more).
``reconcile`` at start-up finishes or discards a rotation a crash interrupted:
the store says which key is current, and the files are made to agree.

Guarantees: old keys keep verifying the receipts of their window; a receipt
signed by a key outside its window fails verification.
Must never: make a key current without a receipt signed by its predecessor.
"""

from __future__ import annotations

import os
from pathlib import Path

import lmdb
import msgspec

from knhkd.crypto.keys import KeyFileError, Signer, generate_file, load
from knhkd.errors import Conflict
from knhkd.model import Outcome, PublicKeyring, SignedReceipt
from knhkd.receipts.log import Draft, ReceiptLog
from knhkd.store.env import Store
from knhkd.store.writer import Job


class RotationError(Conflict):
    """A rotation was refused or a key file disagrees with the log."""

    problem = "rotation-refused"
    title = "Key rotation refused"


def read_keyring(store: Store, txn: lmdb.Transaction) -> PublicKeyring:
    entries = list(store.tables.keys.values(txn))
    entries.sort(key=lambda e: (e.not_before_ns, e.key_id))
    return PublicKeyring(format="knhkd-keyring-v1", keys=entries)


def current_key_id(store: Store, txn: lmdb.Transaction) -> str | None:
    return store.tables.keys_current.get(txn)


def next_path(key_path: Path) -> Path:
    return key_path.with_name(key_path.name + ".next")


def reconcile(store: Store, key_path: Path) -> Signer:
    """Load the signing key, finishing or discarding an interrupted rotation."""
    with store.reader() as txn:
        current = current_key_id(store, txn)
    signer = load(key_path)
    pending = next_path(key_path)
    if current is None or signer.key_id == current:
        if pending.exists():
            pending.unlink()  # step 2 never committed: the rotation did not happen
        return signer
    if pending.exists():
        nxt = load(pending)
        if nxt.key_id == current:
            os.replace(pending, key_path)  # step 2 committed; finish step 3
            _fsync_dir(key_path.parent)
            return nxt
    raise KeyFileError(
        f"{key_path} holds key {signer.key_id}, but the log's current key is {current}; "
        "restore that key or rotate with `knhkctl keys rotate`"
    )


def register_job(store: Store, signer: Signer) -> Job[bool]:
    """First start: record the signing key as the log's first, current key."""

    def job(txn: lmdb.Transaction) -> bool:
        if current_key_id(store, txn) is not None:
            return False
        entry = signer.public_entry()
        store.tables.keys.put(txn, signer.key_id, entry)
        store.tables.keys_current.put(txn, signer.key_id)
        return True

    return job


def rotation_job(store: Store, log: ReceiptLog, outgoing: str, new: Signer) -> Job[SignedReceipt]:
    """Step 2 of the protocol; ``log`` must already hold ``new`` (add_signer)."""

    def job(txn: lmdb.Transaction) -> SignedReceipt:
        current = current_key_id(store, txn)
        if current != outgoing:
            raise RotationError(f"current key is {current}, not {outgoing}")
        signed = log.append(
            txn,
            Draft(
                kind="key_rotated",
                outcome=Outcome("approved", "signing key rotated"),
                subject_ids=[outgoing, new.key_id],
                inputs={
                    "outgoing_key_id": outgoing,
                    "new_key_id": new.key_id,
                    "new_public_key": new.public_entry().public_key,
                },
            ),
        )
        at = signed.body.timestamp_ns
        keys = store.tables.keys
        entry = keys.get(txn, outgoing)
        if entry is None:
            raise RotationError(f"outgoing key {outgoing} is not in the keyring")
        keys.put(txn, outgoing, msgspec.structs.replace(entry, not_after_ns=at))
        fresh = msgspec.structs.replace(new.public_entry(), not_before_ns=at)
        if not keys.put(txn, new.key_id, fresh, overwrite=False):
            raise RotationError(f"key {new.key_id} was used before")
        store.tables.keys_current.put(txn, new.key_id)
        return signed

    return job


def prepare_rotation(key_path: Path, now_ns: int) -> Signer:
    """Step 1: a new key in ``signing.key.next``."""
    pending = next_path(key_path)
    if pending.exists():
        pending.unlink()
    return generate_file(pending, now_ns)


def finish_rotation(key_path: Path) -> None:
    """Step 3."""
    os.replace(next_path(key_path), key_path)
    _fsync_dir(key_path.parent)


def _fsync_dir(path: Path) -> None:
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)
