"""Read queries the API and admin socket are answered from: each one short
LMDB read transaction, nothing written, no actor involved.

Guarantees: a missing record is ``NotFound`` (404, with the title its route
has always shown), never ``None`` where the caller asked for one record; a
query sees one consistent snapshot of the store (one read transaction).

Must never: open a write transaction, await, or hold a read transaction past
its return (LMDB readers pin pages the writer would reuse).
"""

from __future__ import annotations

import itertools

import lmdb

from knhkd import errors
from knhkd.loop import knowledge_state as kn
from knhkd.loop.planner import change_key
from knhkd.model import (
    DetectedPattern,
    Observation,
    Proposal,
    PublicKeyring,
    ReceiptView,
    Snapshot,
    SnapshotRecord,
    ValidationReport,
)
from knhkd.receipts import canonical, checkpoints, keyring
from knhkd.receipts.log import ReceiptLog, iter_raw, view
from knhkd.receipts.tlog_checkpoint import Checkpoint
from knhkd.store import ids
from knhkd.store.env import Store

_OBS_NOT_FOUND = "Observation not found"


class NotFound(errors.NotFound):
    """The requested record does not exist."""


class Queries:
    """The read side of the store, for the ``Daemon`` facade."""

    def __init__(self, store: Store, receipts: ReceiptLog) -> None:
        self._store = store
        self._receipts = receipts

    def get_observation(self, obs_id: str) -> Observation:
        try:
            seq = ids.seq_of(obs_id)
        except ids.BadId:
            raise NotFound(f"no observation {obs_id!r}", title=_OBS_NOT_FOUND) from None
        with self._store.reader() as txn:
            obs = self._store.tables.observations.get(txn, seq)
        if obs is None or obs.id != obs_id:
            raise NotFound(f"no observation {obs_id!r}", title=_OBS_NOT_FOUND)
        return obs

    def observation_count(self) -> int:
        """Observations stored: all ever committed but those retention deleted."""
        t = self._store.tables
        with self._store.reader() as txn:
            return (t.observations_next.get(txn) or 0) - (t.retained_from.get(txn) or 0)

    def list_patterns(self, *, limit: int) -> list[DetectedPattern]:
        out: list[DetectedPattern] = []
        with self._store.reader() as txn:
            for _, pattern in self._store.tables.patterns.items_reversed(txn):
                out.append(pattern)
                if len(out) >= limit:
                    break
        return out

    # Snapshots ---------------------------------------------------------- #

    def list_snapshots(self) -> list[Snapshot]:
        with self._store.reader() as txn:
            snaps = list(kn.iter_snapshots(self._store, txn))
        return sorted(snaps, key=lambda s: (s.version, s.promoted_at_ns))

    def ancestry(self, current: str, limit: int = 64) -> tuple[Snapshot, ...]:
        """``current``, then its parent, ... (at most ``limit``)."""
        out: list[Snapshot] = []
        with self._store.reader() as txn:
            sid: str | None = current
            while sid is not None and len(out) < limit:
                rec = kn.read_record(self._store, txn, sid)
                if rec is None:
                    break
                out.append(rec.meta)
                sid = rec.meta.parent_id
        return tuple(out)

    def snapshot_pair(self, a: str, b: str) -> tuple[SnapshotRecord, SnapshotRecord]:
        with self._store.reader() as txn:
            rec_a = kn.read_record(self._store, txn, a)
            rec_b = kn.read_record(self._store, txn, b)
        if rec_a is None:
            raise NotFound(f"no snapshot {a!r}", title="Snapshot not found")
        if rec_b is None:
            raise NotFound(f"no snapshot {b!r}", title="Snapshot not found")
        return rec_a, rec_b

    # Proposals ---------------------------------------------------------- #

    def get_proposal(self, proposal_id: str) -> tuple[Proposal, ValidationReport | None]:
        with self._store.reader() as txn:
            proposal = self._store.tables.proposals.get(txn, proposal_id)
            report = self._store.tables.validations.get(txn, proposal_id)
        if proposal is None:
            raise NotFound(f"no proposal {proposal_id!r}", title="Proposal not found")
        return proposal, report

    def proposal_with_change_of(self, proposal: Proposal) -> str | None:
        """The id of the stored proposal making the same change against the
        same snapshot, if there is one."""
        with self._store.reader() as txn:
            return self._store.tables.proposal_deltas.get(txn, change_key(proposal))

    # Receipts, keys, checkpoints, proofs -------------------------------- #

    def list_receipts(self, *, after: int, limit: int) -> list[ReceiptView]:
        out: list[ReceiptView] = []
        with self._store.reader() as txn:
            for _, raw in iter_raw(self._store, txn, after=after):
                out.append(view(canonical.decode_record(raw)))
                if len(out) >= limit:
                    break
        return out

    def receipt_head(self) -> tuple[int, str]:
        with self._store.reader() as txn:
            head = self._receipts.head(txn)
        return head.next_seq, head.hash

    def public_keyring(self) -> PublicKeyring:
        with self._store.reader() as txn:
            return keyring.read_keyring(self._store, txn)

    def latest_checkpoint(self) -> Checkpoint | None:
        with self._store.reader() as txn:
            return checkpoints.latest(self._store, txn)

    def covering_checkpoint(self, size: int) -> Checkpoint | None:
        with self._store.reader() as txn:
            return checkpoints.covering(self._store, txn, size)

    def checkpoint_at_size(self, size: int) -> Checkpoint | None:
        with self._store.reader() as txn:
            return checkpoints.at_size(self._store, txn, size)

    def inclusion_proof(self, index: int, tree_size: int) -> list[bytes]:
        with self._store.reader() as txn:
            return self._receipts.tree.inclusion(txn, index, tree_size)

    def consistency_proof(self, size1: int, size2: int) -> list[bytes]:
        with self._store.reader() as txn:
            return self._receipts.tree.consistency(txn, size1, size2)

    def receipt_with_path(self, index: int, tree_size: int) -> tuple[bytes, list[bytes]]:
        """Receipt ``index`` as stored, and its inclusion path in ``tree_size``."""
        with self._store.reader() as txn:
            record = self._store.tables.receipts.get_raw(txn, index)
            path = self._receipts.tree.inclusion(txn, index, tree_size)
        if record is None:
            raise NotFound(f"no receipt {index}")
        return bytes(record), path

    def receipts_with_range_proof(
        self, start: int, end: int, tree_size: int
    ) -> tuple[list[bytes], list[bytes]]:
        """Receipts ``[start, end)`` as stored, and their range proof in ``tree_size``."""
        with self._store.reader() as txn:
            records = _raw_range(self._store, txn, start, end)
            proof = self._receipts.tree.range_proof(txn, start, end, tree_size)
        return records, proof


def _raw_range(store: Store, txn: lmdb.Transaction, start: int, end: int) -> list[bytes]:
    # islice: stop reading at ``end``, not at the end of the log.
    rows = itertools.islice(iter_raw(store, txn, after=start - 1), max(0, end - start))
    return [bytes(raw) for _, raw in rows]
