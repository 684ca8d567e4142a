"""Retention archives: the observations retention removes from the store,
written with the batch receipts that commit to them, each receipt's
inclusion proof, and the signed checkpoint the proofs reach
(``knhkd-archive-v1``: gzip-compressed NDJSON, one ``model.ArchiveLine`` a
line, the header first). ``receipts/offline.py`` verifies one with the public
keyring alone.

``select`` decides what goes: the longest run of observations, from the
first still stored, whose age (event time, else ingest time) is past the
cutoff, shortened to a commit boundary so that every batch receipt it
touches is archived whole (a receipt's digest is over all its sector's
observations in its range, so a part of a batch could not be verified).

Guarantees:
- ``write`` reads everything in the caller's one read transaction: the
  observations, their leaves, the receipts, the proofs and the checkpoint
  all describe one committed state; the file is written beside its final
  name, fsynced and renamed, so an archive that exists is complete.
- Every archived observation is covered by exactly one archived batch
  receipt, and every archived receipt is included in the header's tree.

Must never: write into the store (the deletion is the writer's:
loop/retention.py); archive part of a batch receipt's observations.
"""

from __future__ import annotations

import gzip
import hashlib
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Literal

import lmdb
import msgspec

from knhkd.model import ArchivedObservation, ArchivedReceipt, ArchiveHeader, Observation
from knhkd.receipts import canonical, tlog_checkpoint
from knhkd.receipts.checkpoints import origin_of
from knhkd.receipts.tree import MerkleTree
from knhkd.store.env import Store
from knhkd.store.schema import LEAF_DIGEST_BYTES

FORMAT: Literal["knhkd-archive-v1"] = "knhkd-archive-v1"
_json = msgspec.json.Encoder()


class ArchiveError(Exception):
    """An archive could not be made; the message says why."""


@dataclass
class Selection:
    """Observations ``[first_seq, below_seq)`` and the batch receipts (by
    receipt seq) that commit to them; ``receipts_from``: where the next
    selection starts looking."""

    first_seq: int
    below_seq: int
    receipts: list[int] = field(default_factory=list)
    receipts_from: int = 0

    @property
    def count(self) -> int:
        return self.below_seq - self.first_seq


def age_ns(obs: Observation) -> int:
    """What retention measures an observation's age from: its event time
    when the producer gave one, else when it was stored."""
    if obs.event_time is not None:
        return int(obs.event_time.timestamp() * 1_000_000_000)
    return obs.ingested_at_ns


def select(store: Store, txn: lmdb.Transaction, cutoff_ns: int) -> Selection:
    t = store.tables
    first = t.retained_from.get(txn) or 0
    receipts_from = t.retention_receipts_from.get(txn) or 0
    below = t.observations_next.get(txn) or 0
    for seq, raw in t.observations.items_raw(txn, start=first):
        if age_ns(t.observations.decode(raw)) >= cutoff_ns:
            below = seq
            break
    batches: list[tuple[int, int, int]] = []
    last_scanned = receipts_from - 1
    for rseq, raw in t.receipts.items_raw(txn, start=receipts_from):
        last_scanned = rseq
        body = canonical.decode_record(raw).body
        if body.kind != "observation_batch_committed":
            continue
        lo, hi = int(body.inputs["first_seq"]), int(body.inputs["last_seq"])
        if hi >= first:
            batches.append((rseq, lo, hi))
    # Observations of one commit are shared out between its sectors' receipts,
    # whose ranges overlap: move the cut down until no receipt straddles it.
    moved = True
    while moved:
        moved = False
        for _, lo, hi in batches:
            if lo < below <= hi:
                below, moved = lo, True
    below = max(below, first)
    sel = Selection(first, below)
    sel.receipts = [rseq for rseq, _, hi in batches if hi < below]
    rest = [rseq for rseq, _, hi in batches if hi >= below]
    sel.receipts_from = rest[0] if rest else last_scanned + 1
    return sel


def write(
    store: Store, txn: lmdb.Transaction, sel: Selection, out: Path, now_ns: int
) -> tuple[str, int]:
    """Write the archive of ``sel`` to ``out``; returns its SHA-256 (hex) and
    the size of the tree its checkpoint signs."""
    t = store.tables
    last = t.checkpoints.last(txn)
    if last is None:
        raise ArchiveError("no signed checkpoint to prove the archived receipts against")
    size, note = last
    if sel.receipts and sel.receipts[-1] >= size:
        raise ArchiveError(
            f"the latest checkpoint ({size}) does not cover receipt {sel.receipts[-1]}"
        )
    cp = tlog_checkpoint.parse(note)[0]
    tree = MerkleTree(store)
    header = ArchiveHeader(
        FORMAT, origin_of(store, txn) or cp.origin, sel.first_seq, sel.below_seq, now_ns, size, note
    )
    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = out.with_name(f".{out.name}.tmp")
    with tmp.open("wb") as raw_fh:
        with gzip.GzipFile(fileobj=raw_fh, mode="wb", mtime=0) as fh:
            fh.write(_json.encode(header) + b"\n")
            for rseq in sel.receipts:
                record = t.receipts.get_raw(txn, rseq)
                if record is None:
                    raise ArchiveError(f"receipt {rseq} is missing")
                line = ArchivedReceipt(rseq, record, tree.inclusion(txn, rseq, size))
                fh.write(_json.encode(line) + b"\n")
            # As stored: sealed records stay sealed (encryption at rest).
            for seq, rec in t.observations.items_raw(txn, start=sel.first_seq):
                if seq >= sel.below_seq:
                    break
                leaf = t.observation_leaves.get_raw(txn, seq)
                obs = ArchivedObservation(seq, rec)
                if leaf is not None:
                    obs.digest = leaf[:LEAF_DIGEST_BYTES]
                    obs.salt = leaf[LEAF_DIGEST_BYTES:] or None
                fh.write(_json.encode(obs) + b"\n")
        raw_fh.flush()
        os.fsync(raw_fh.fileno())
    os.replace(tmp, out)
    dir_fd = os.open(out.parent, os.O_RDONLY)
    try:
        os.fsync(dir_fd)
    finally:
        os.close(dir_fd)
    h = hashlib.sha256()
    with out.open("rb") as fh:
        while chunk := fh.read(1 << 20):
            h.update(chunk)
    return h.hexdigest(), size
