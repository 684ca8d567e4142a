"""Read queries the API and admin socket are answered from: each one short
LMDB read transaction, nothing written, no actor involved.

Guarantees: a missing record is ``NotFound`` (404, with the title its route
has always shown), never ``None`` where the caller asked for one record; a
query sees one consistent snapshot of the store (one read transaction).

Must never: open a write transaction, await, or hold a read transaction past
its return (LMDB readers pin pages the writer would reuse).
"""

from __future__ import annotations

import lmdb
import msgspec

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
from knhkd.store.env import META_OBS_NEXT, Store

_obs_decoder = msgspec.msgpack.Decoder(Observation)
_pattern_decoder = msgspec.msgpack.Decoder(DetectedPattern)
_proposal_decoder = msgspec.msgpack.Decoder(Proposal)
_report_decoder = msgspec.msgpack.Decoder(ValidationReport)
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
            raw = txn.get(ids.seq_key(seq), db=self._store.db("observations"))
        if raw is None:
            raise NotFound(f"no observation {obs_id!r}", title=_OBS_NOT_FOUND)
        obs = _obs_decoder.decode(raw)
        if obs.id != obs_id:
            raise NotFound(f"no observation {obs_id!r}", title=_OBS_NOT_FOUND)
        return obs

    def observation_count(self) -> int:
        with self._store.reader() as txn:
            raw = txn.get(META_OBS_NEXT, db=self._store.db("meta"))
        return int(raw) if raw is not None else 0

    def list_patterns(self, *, limit: int) -> list[DetectedPattern]:
        out: list[DetectedPattern] = []
        with self._store.reader() as txn:
            cursor = txn.cursor(db=self._store.db("patterns"))
            if cursor.last():
                for _, raw in cursor.iterprev():
                    out.append(_pattern_decoder.decode(raw))
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
            raw = txn.get(proposal_id.encode(), db=self._store.db("proposals"))
            report = txn.get(proposal_id.encode(), db=self._store.db("validations"))
        if raw is None:
            raise NotFound(f"no proposal {proposal_id!r}", title="Proposal not found")
        return (
            _proposal_decoder.decode(raw),
            None if report is None else _report_decoder.decode(report),
        )

    def proposal_with_change_of(self, proposal: Proposal) -> str | None:
        """The id of the stored proposal making the same change against the
        same snapshot, if there is one."""
        with self._store.reader() as txn:
            existing = txn.get(change_key(proposal), db=self._store.db("proposal_deltas"))
        return None if existing is None else bytes(existing).decode()

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
            record = txn.get(ids.seq_key(index), db=self._store.db("receipts"))
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
    return [bytes(raw) for _, raw in iter_raw(store, txn, after=start - 1)][: end - start]
