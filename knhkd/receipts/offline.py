"""Offline verification: proof, export and consistency files checked with
public keys only — never the daemon, never its data directory.

Imports only ``receipts`` and ``crypto`` (and ``model``), so it can be lifted
into any auditor's tool.

Guarantees for each file kind:
- proof (``knhkd-proof-v1``): the checkpoint is signed by a known key; the
  record is the canonical encoding of a receipt validly signed by a key that
  was valid at its time; its seq is the proven index; the RFC 9162 inclusion
  proof of its leaf hash reaches the checkpoint's root.
- export (``knhkd-export-v1``): as above for every record, plus contiguous
  sequence numbers, ``prev_hash`` links and non-decreasing times across the
  run, and the leaves with the range proof rebuild the checkpoint's root.
- consistency (``knhkd-consistency-v1``): both checkpoints signed, same origin,
  and the RFC 9162 consistency proof holds between their roots.
- archive (``knhkd-archive-v1``, gzip NDJSON from retention): the checkpoint
  is signed; every batch receipt is validly signed and included in its tree;
  every archived observation hashes to its leaf digest (salted: SHA-256 of
  salt and record; erased: its digest alone, the record in its erased form),
  each receipt's ``leaves_sha256`` (or, before schema v2, ``records_sha256``)
  and count are recomputed from its sector's observations in its range, and
  every observation is covered by exactly one receipt.
Across files: two checkpoints of one origin and size with different roots are
a split view, and nothing verifies.

Must never: report a file verified without recomputing its root.
"""

from __future__ import annotations

import gzip
import hashlib
import zlib
from collections.abc import Callable, Sequence

import msgspec

from knhkd.crypto import sealing
from knhkd.crypto.keys import Verifier
from knhkd.model import (
    ArchivedObservation,
    ArchivedReceipt,
    ArchiveHeader,
    ArchiveLine,
    ConsistencyFile,
    ExportFile,
    FileVerdict,
    Observation,
    ProofFile,
    SignedReceipt,
    is_erased,
)
from knhkd.receipts import canonical, merkle, tlog_checkpoint
from knhkd.receipts.tlog_checkpoint import Checkpoint, CheckpointError


class Unusable(Exception):
    """The input is not a file this verifier knows (exit status 2)."""


class NotVerified(Exception):
    """The file was understood and does not verify (exit status 1)."""


class ArchiveFile(msgspec.Struct):
    """A retention archive, read whole."""

    format: str
    header: ArchiveHeader
    receipts: list[ArchivedReceipt]
    observations: list[ArchivedObservation]


AnyFile = ProofFile | ExportFile | ConsistencyFile | ArchiveFile
_line_decoder = msgspec.json.Decoder(ArchiveLine)
_obs_decoder = msgspec.msgpack.Decoder(Observation)
_LEAF_DIGEST_BYTES = 32


def proof_file(index: int, cp: Checkpoint, record: bytes, path: list[bytes]) -> ProofFile:
    return ProofFile("knhkd-proof-v1", index, cp.size, record, path, cp.text)


def export_file(start: int, cp: Checkpoint, records: list[bytes], proof: list[bytes]) -> ExportFile:
    return ExportFile("knhkd-export-v1", start, cp.size, records, proof, cp.text)


def consistency_file(old: Checkpoint, new: Checkpoint, proof: list[bytes]) -> ConsistencyFile:
    return ConsistencyFile("knhkd-consistency-v1", old.text, new.text, proof)


class _Format(msgspec.Struct):
    format: str


_KINDS: dict[str, type[AnyFile]] = {
    "knhkd-proof-v1": ProofFile,
    "knhkd-export-v1": ExportFile,
    "knhkd-consistency-v1": ConsistencyFile,
}


def load_archive(data: bytes) -> ArchiveFile:
    try:
        lines = gzip.decompress(data).splitlines()
    except (OSError, EOFError, zlib.error) as exc:
        raise Unusable(f"not a gzip file: {exc}") from None
    try:
        decoded = [_line_decoder.decode(line) for line in lines if line]
    except (msgspec.DecodeError, msgspec.ValidationError) as exc:
        raise Unusable(f"not a knhkd archive: {exc}") from None
    if not decoded or not isinstance(decoded[0], ArchiveHeader):
        raise Unusable("not a knhkd archive: the first line is not its header")
    header = decoded[0]
    if any(isinstance(x, ArchiveHeader) for x in decoded[1:]):
        raise Unusable("not a knhkd archive: more than one header")
    return ArchiveFile(
        header.format,
        header,
        [x for x in decoded if isinstance(x, ArchivedReceipt)],
        [x for x in decoded if isinstance(x, ArchivedObservation)],
    )


def load(data: bytes) -> AnyFile:
    if data[:2] == b"\x1f\x8b":  # gzip: a retention archive
        return load_archive(data)
    try:
        fmt = msgspec.json.decode(data, type=_Format).format
        kind = _KINDS[fmt]
        return msgspec.json.decode(data, type=kind)
    except KeyError as exc:
        raise Unusable(f"unknown file format {exc.args[0]!r}") from None
    except (msgspec.DecodeError, msgspec.ValidationError) as exc:
        raise Unusable(f"not a knhkd proof, export or consistency file: {exc}") from None


def _checkpoint(note: str, verifier: Verifier) -> Checkpoint:
    try:
        return tlog_checkpoint.verify(note, verifier.public_keys())
    except CheckpointError as exc:
        raise NotVerified(f"checkpoint: {exc}") from None


def _receipt(raw: bytes, seq: int, verifier: Verifier) -> SignedReceipt:
    try:
        signed = canonical.decode_record(raw)
    except (msgspec.MsgspecError, ValueError):
        raise NotVerified(f"receipt {seq}: not a receipt record") from None
    body = signed.body
    if canonical.encode_record(signed) != raw:
        raise NotVerified(f"receipt {seq}: record is not in canonical form")
    if body.seq != seq:
        raise NotVerified(f"receipt {seq}: record says it is receipt {body.seq}")
    if not verifier.verify(
        body.key_id, canonical.signed_bytes(body), signed.signature, at_ns=body.timestamp_ns
    ):
        raise NotVerified(f"receipt {seq}: bad signature, or key {body.key_id} not valid then")
    return signed


def verify_proof(pf: ProofFile, verifier: Verifier) -> Checkpoint:
    cp = _checkpoint(pf.checkpoint, verifier)
    if cp.size != pf.tree_size:
        raise NotVerified(f"proof is for tree size {pf.tree_size}, checkpoint is {cp.size}")
    _receipt(pf.record, pf.index, verifier)
    leaf = merkle.leaf_hash(pf.record)
    if not merkle.verify_inclusion(leaf, pf.index, cp.size, pf.inclusion, cp.root):
        raise NotVerified(f"receipt {pf.index} is not included in the tree of size {cp.size}")
    return cp


def verify_export(ef: ExportFile, verifier: Verifier) -> Checkpoint:
    cp = _checkpoint(ef.checkpoint, verifier)
    if cp.size != ef.tree_size:
        raise NotVerified(f"export is for tree size {ef.tree_size}, checkpoint is {cp.size}")
    prev: SignedReceipt | None = None
    for i, raw in enumerate(ef.records):
        signed = _receipt(raw, ef.start + i, verifier)
        if prev is not None:
            if signed.body.prev_hash != canonical.receipt_hash(prev.body):
                raise NotVerified(f"receipt {ef.start + i}: chain break (prev_hash)")
            if signed.body.timestamp_ns < prev.body.timestamp_ns:
                raise NotVerified(f"receipt {ef.start + i}: earlier than its predecessor")
        elif ef.start == 0 and signed.body.prev_hash != canonical.GENESIS_PREV:
            raise NotVerified("receipt 0: chain does not start at the genesis hash")
        prev = signed
    leaves = [merkle.leaf_hash(r) for r in ef.records]
    if merkle.root_from_range(leaves, ef.start, cp.size, ef.range_proof) != cp.root:
        raise NotVerified(
            f"receipts [{ef.start}, {ef.start + len(leaves)}) do not rebuild the root "
            f"of the tree of size {cp.size}"
        )
    return cp


def verify_consistency(cf: ConsistencyFile, verifier: Verifier) -> tuple[Checkpoint, Checkpoint]:
    old = _checkpoint(cf.old_checkpoint, verifier)
    new = _checkpoint(cf.new_checkpoint, verifier)
    if old.origin != new.origin:
        raise NotVerified(f"checkpoints of two logs: {old.origin!r} and {new.origin!r}")
    if not merkle.verify_consistency(old.size, new.size, cf.proof, old.root, new.root):
        raise NotVerified(f"tree of size {new.size} does not extend the tree of size {old.size}")
    return old, new


def _leaf(o: ArchivedObservation, obs: Observation) -> bytes:
    """The leaf digest of an archived observation, checked against its record."""
    if o.digest is None or len(o.digest) != _LEAF_DIGEST_BYTES:
        raise NotVerified(f"observation {o.seq}: no leaf digest")
    if o.salt is None:
        if not is_erased(obs):
            raise NotVerified(f"observation {o.seq}: the salt is gone but it is not erased")
    elif hashlib.sha256(o.salt + o.record).digest() != o.digest:
        raise NotVerified(f"observation {o.seq}: does not hash to its leaf digest")
    return o.digest


def verify_archive(
    af: ArchiveFile, verifier: Verifier, storage_key: bytes | None = None
) -> Checkpoint:
    """Digests are over plaintext records: sealed ones (encryption at rest)
    are opened with ``storage_key`` first."""
    h = af.header
    sealer = None if storage_key is None else sealing.Sealer(storage_key)
    for o in af.observations:
        if sealing.is_sealed(o.record):
            if sealer is None:
                raise Unusable(f"observation {o.seq} is sealed: give the storage key")
            try:
                o.record = sealer.open(o.record)
            except sealing.SealError as exc:
                raise NotVerified(f"observation {o.seq}: {exc}") from None
    cp = _checkpoint(h.checkpoint, verifier)
    if cp.size != h.tree_size:
        raise NotVerified(f"archive is for tree size {h.tree_size}, checkpoint is {cp.size}")
    by_seq: dict[int, tuple[ArchivedObservation, Observation]] = {}
    for o in af.observations:
        if not h.first_seq <= o.seq < h.below_seq or o.seq in by_seq:
            raise NotVerified(f"observation {o.seq}: outside the archive's range, or twice")
        try:
            obs = _obs_decoder.decode(o.record)
        except (msgspec.DecodeError, msgspec.ValidationError):
            raise NotVerified(f"observation {o.seq}: not an observation record") from None
        if obs.seq != o.seq:
            raise NotVerified(f"observation {o.seq}: record says it is {obs.seq}")
        by_seq[o.seq] = (o, obs)
    if len(by_seq) != h.below_seq - h.first_seq:
        raise NotVerified(
            f"{len(by_seq)} observations for the range [{h.first_seq}, {h.below_seq})"
        )
    covered: set[int] = set()
    for r in af.receipts:
        signed = _receipt(r.record, r.seq, verifier)
        if not merkle.verify_inclusion(
            merkle.leaf_hash(r.record), r.seq, cp.size, r.inclusion, cp.root
        ):
            raise NotVerified(f"receipt {r.seq} is not included in the tree of size {cp.size}")
        body = signed.body
        if body.kind != "observation_batch_committed":
            raise NotVerified(f"receipt {r.seq}: not an observation batch receipt")
        try:
            first, last, count, want, salted = canonical.batch_inputs(body)
        except (KeyError, ValueError):
            raise NotVerified(f"receipt {r.seq}: batch receipt lacks its inputs") from None
        digest, n = hashlib.sha256(), 0
        for seq in range(first, last + 1):
            if seq not in by_seq:
                raise NotVerified(f"receipt {r.seq}: observation {seq} is not in the archive")
            o, obs = by_seq[seq]
            if obs.sector != body.sector:
                continue
            if seq in covered:
                raise NotVerified(f"observation {seq}: covered by two receipts")
            covered.add(seq)
            n += 1
            digest.update(_leaf(o, obs) if salted else o.record)
        if n != count or digest.hexdigest() != want:
            raise NotVerified(
                f"observations {first}..{last} of sector {body.sector} do not match receipt {r.seq}"
            )
    if len(covered) != len(by_seq):
        raise NotVerified(f"{len(by_seq) - len(covered)} archived observations no receipt covers")
    return cp


def verify_files(
    named: Sequence[tuple[str, bytes]],
    verifier: Verifier,
    done: Callable[[FileVerdict], None] | None = None,
    *,
    storage_key: bytes | None = None,
) -> list[FileVerdict]:
    """Verify every file; raises ``Unusable`` for input it cannot read.
    ``done(verdict)`` is called as each file's verdict is reached."""
    loaded = [(name, load(data)) for name, data in named]
    verdicts: list[FileVerdict] = []
    seen: dict[tuple[str, int], tuple[bytes, str]] = {}
    for name, f in loaded:
        kind = f.format.removeprefix("knhkd-").removesuffix("-v1")
        try:
            if isinstance(f, ProofFile):
                cps = [verify_proof(f, verifier)]
                count = 1
            elif isinstance(f, ExportFile):
                cps = [verify_export(f, verifier)]
                count = len(f.records)
            elif isinstance(f, ArchiveFile):
                cps = [verify_archive(f, verifier, storage_key)]
                count = len(f.receipts)
            else:
                cps = list(verify_consistency(f, verifier))
                count = 0
            for cp in cps:
                other = seen.setdefault((cp.origin, cp.size), (cp.root, name))
                if other[0] != cp.root:
                    raise NotVerified(
                        f"split view: {other[1]} and this file sign different trees of size "
                        f"{cp.size} for {cp.origin!r}"
                    )
            verdicts.append(
                FileVerdict(name, kind, True, "verified", cps[-1].origin, cps[-1].size, count)
            )
        except NotVerified as exc:
            verdicts.append(FileVerdict(name, kind, False, str(exc)))
        if done is not None:
            done(verdicts[-1])
    return verdicts
