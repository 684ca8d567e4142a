"""The start-up integrity check, as the daemon runs it: after the store and
the signing key are open, before the first write.

The check itself is receipts/integrity.py (``check_store``); this module
chooses the keys it trusts and acts on the findings.

- Trusted keys for the anchor: those of ``keys/public.json`` (the export the
  daemon writes beside the secret key after every keyring change) and the
  signing key in hand, both outside LMDB. The store's own keyring is what is
  being judged, so it does not vouch for the anchor.
- Findings freeze the store (``Store.frozen``: store/writer.py refuses every
  write job, so nothing is appended to a damaged or rolled-back store, no
  genesis, no receipt, no checkpoint) and close the write gate under
  ``"integrity"`` with ``ReadOnly`` naming them: ``/health`` is degraded with
  the finding, writes answer 503 ``read-only``, reads and proofs of what is
  stored are still served. Only an operator lifts it (restore the store, or
  move the anchor aside after judging it), by restarting.
- A ``keys/public.json`` that exists but cannot be read as a keyring is a
  start-up error (``KeyringUnreadable``: one line, exit 2), not a finding:
  without it the anchor cannot be judged.

Must never: write to the store, the anchor or the keyring files.
"""

from __future__ import annotations

import logging
from pathlib import Path

import msgspec

from knhkd.crypto.keys import KeyFileError, Signer, Verifier, keyring_of
from knhkd.errors import ReadOnly
from knhkd.loop.write_gate import WriteGate
from knhkd.model import PublicKeyring
from knhkd.receipts.integrity import check_store
from knhkd.store.env import Store

log = logging.getLogger(__name__)

GATE_KEY = "integrity"


class KeyringUnreadable(Exception):
    """``keys/public.json`` exists but is not a readable public keyring."""


def trusted_keyring(data_dir: Path, signer: Signer) -> PublicKeyring:
    """The keys of ``keys/public.json`` and the signing key in hand."""
    path = data_dir / "keys" / "public.json"
    try:
        data = path.read_bytes()
    except FileNotFoundError:  # a first start
        return keyring_of(signer)
    except OSError as exc:
        raise KeyringUnreadable(f"{path}: {exc.strerror or exc}") from None
    try:
        ring = msgspec.json.decode(data, type=PublicKeyring)
        Verifier(ring)  # every key decodes and matches its id
    except (msgspec.DecodeError, KeyFileError) as exc:
        raise KeyringUnreadable(f"{path}: not a knhkd public keyring: {exc}") from None
    if signer.key_id not in {k.key_id for k in ring.keys}:
        ring = PublicKeyring(format=ring.format, keys=[*ring.keys, signer.public_entry()])
    return ring


def startup_check(
    store: Store, data_dir: Path, trusted: PublicKeyring, gate: WriteGate
) -> list[str]:
    """Run the check; on findings freeze ``store`` and close ``gate``.
    Returns the findings (empty: the store takes writes)."""
    findings = check_store(store, data_dir, Verifier(trusted).public_keys())
    if findings:
        for finding in findings:
            log.error("integrity check at start: %s", finding)
        detail = "; ".join(findings)
        store.frozen = detail
        gate.close(
            GATE_KEY,
            ReadOnly(
                f"the store failed its integrity check at start and takes no writes: {detail}"
            ),
        )
    return findings
