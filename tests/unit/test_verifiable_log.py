"""The receipt tree, checkpoints, offline verification, rotation and fsck on
real LMDB stores (no daemon: the writer's transaction runner directly)."""

from __future__ import annotations

import base64
import random
from pathlib import Path
from typing import Any

import msgspec
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from knhkd.crypto.keys import Signer, Verifier, load_or_create
from knhkd.datadir.fsck import fsck
from knhkd.model import ExportFile, Outcome, ProofFile
from knhkd.receipts import checkpoints, keyring, merkle, offline, tlog_checkpoint
from knhkd.receipts.log import Draft, ReceiptLog, iter_raw, verify_store
from knhkd.receipts.tlog_checkpoint import CheckpointError
from knhkd.store.env import MB, Store, open_store
from knhkd.store.ids import seq_key
from knhkd.store.schema import NODE_KEY
from knhkd.store.writer import run_transaction


class Log:
    """A store with a receipt log, a keyring and an origin, as the daemon sets up."""

    def __init__(self, path: Path) -> None:
        self.path = path
        self.store: Store = open_store(path, map_size=16 * MB, max_map_size=256 * MB)
        self.key_path = path / "keys" / "signing.key"
        self.signer: Signer = load_or_create(self.key_path, 1)
        clock = iter(range(1_000, 10**15, 1_000))
        self.log = ReceiptLog(self.store, self.signer, lambda: next(clock))
        self.run(keyring.register_job(self.store, self.signer))
        self.run(checkpoints.set_origin_job(self.store, "test.local/log"))

    def run(self, job: Any) -> Any:
        [(value, err)] = run_transaction(self.store, [job])
        if err is not None:
            raise err
        return value

    def append(self, n: int) -> None:
        jobs = [
            lambda txn, i=i: self.log.append(
                txn, Draft("cycle_completed", Outcome("approved"), [f"c{i}"])
            )
            for i in range(n)
        ]
        for _, err in run_transaction(self.store, jobs):
            assert err is None

    def checkpoint(self) -> tlog_checkpoint.Checkpoint:
        cp = self.run(checkpoints.issue_job(self.store, self.log))
        assert cp is not None
        return cp

    def verifier(self) -> Verifier:
        with self.store.reader() as txn:
            return Verifier(keyring.read_keyring(self.store, txn))

    def proof(self, index: int, cp: tlog_checkpoint.Checkpoint) -> ProofFile:
        with self.store.reader() as txn:
            record = self.store.tables.receipts.get_raw(txn, index)
            assert record is not None
            path = self.log.tree.inclusion(txn, index, cp.size)
        return offline.proof_file(index, cp, record, path)

    def export(self, start: int, end: int, cp: tlog_checkpoint.Checkpoint) -> ExportFile:
        with self.store.reader() as txn:
            records = [r for s, r in iter_raw(self.store, txn) if start <= s < end]
            proof = self.log.tree.range_proof(txn, start, end, cp.size)
        return offline.export_file(start, cp, records, proof)

    def poke(
        self, db: str, key: bytes, flip_at: int | None = None, value: bytes | None = None
    ) -> None:
        with self.store.env.begin(write=True) as txn:
            if value is None:
                raw = bytearray(txn.get(key, db=self.store.db(db)))
                raw[flip_at or 0] ^= 0x40
                value = bytes(raw)
            txn.put(key, value, db=self.store.db(db))


@pytest.fixture
def lg(tmp_path: Path) -> Any:
    log = Log(tmp_path)
    yield log
    log.store.close()


def _verify(f: Any, verifier: Verifier) -> list[Any]:
    return offline.verify_files([("f", msgspec.json.encode(f))], verifier)


def _reference(records: list[bytes]) -> merkle.SubtreeHash:
    leaves = [merkle.leaf_hash(r) for r in records]

    def perfect(a: int, b: int) -> bytes:
        if b - a == 1:
            return leaves[a]
        h = (b - a) // 2
        return merkle.node_hash(perfect(a, a + h), perfect(a + h, b))

    return perfect


def test_stored_tree_matches_the_reference_for_every_size(lg: Log) -> None:
    records: list[bytes] = []
    for n in range(1, 40):
        lg.append(1)
        with lg.store.reader() as txn:
            records = [r for _, r in iter_raw(lg.store, txn)]
            perfect = _reference(records)

            assert lg.log.tree.root(txn) == merkle.mth(perfect, 0, n)
            for m in range(1, n + 1):
                assert lg.log.tree.root(txn, m) == merkle.mth(perfect, 0, m)


def test_checkpoint_note_format_and_signature(lg: Log) -> None:
    lg.append(5)
    cp = lg.checkpoint()
    body, _, sig = cp.text.partition("\n\n")
    assert body.split("\n") == ["test.local/log", "5", base64.b64encode(cp.root).decode()]
    assert sig.startswith("\u2014 test.local/log ")
    assert tlog_checkpoint.verify(cp.text, lg.verifier().public_keys()).size == 5
    other = load_or_create(lg.path / "other.key", 1)
    with pytest.raises(CheckpointError):
        tlog_checkpoint.verify(cp.text, {"x": other.public_key})
    forged = cp.text.replace("\n5\n", "\n6\n", 1)
    with pytest.raises(CheckpointError):
        tlog_checkpoint.verify(forged, lg.verifier().public_keys())
    # Nothing new: no second checkpoint of the same size.
    assert lg.run(checkpoints.issue_job(lg.store, lg.log)) is None


def test_log_refuses_to_sign_an_inconsistent_tree(lg: Log) -> None:
    lg.append(4)
    lg.checkpoint()
    lg.append(3)
    # Rewrite history under the checkpoint: the subtree over leaves [0, 4).
    lg.poke("merkle", NODE_KEY.encode((2, 0)), flip_at=3)
    with pytest.raises(checkpoints.InconsistentTree):
        lg.checkpoint()


def test_proofs_verify_offline_and_forgeries_do_not(lg: Log) -> None:
    lg.append(13)
    cp = lg.checkpoint()
    v = lg.verifier()
    for i in range(13):
        assert _verify(lg.proof(i, cp), v)[0].verified
    good = lg.proof(6, cp)
    forged = [
        msgspec.structs.replace(good, index=7),
        msgspec.structs.replace(good, inclusion=good.inclusion[:-1]),
        msgspec.structs.replace(good, inclusion=list(reversed(good.inclusion))),
        msgspec.structs.replace(
            good, inclusion=[good.inclusion[1], good.inclusion[0], *good.inclusion[2:]]
        ),
        msgspec.structs.replace(good, tree_size=12),
        msgspec.structs.replace(good, record=lg.proof(5, cp).record),
    ]
    other = load_or_create(lg.path / "other.key", 1)
    forged.append(
        msgspec.structs.replace(
            good, checkpoint=tlog_checkpoint.sign("test.local/log", cp.size, cp.root, other)
        )
    )
    for f in forged:
        verdict = _verify(f, v)[0]
        assert not verdict.verified, f


def test_exports_verify_and_a_gap_or_swap_does_not(lg: Log) -> None:
    lg.append(21)
    cp = lg.checkpoint()
    v = lg.verifier()
    for start, end in [(0, 21), (0, 1), (5, 13), (20, 21), (7, 7)]:
        assert _verify(lg.export(start, end, cp), v)[0].verified, (start, end)
    ex = lg.export(3, 11, cp)
    recs = ex.records
    bad = [
        msgspec.structs.replace(ex, records=recs[:3] + recs[4:]),
        msgspec.structs.replace(ex, records=[recs[1], recs[0], *recs[2:]]),
        msgspec.structs.replace(ex, start=4),
        msgspec.structs.replace(ex, range_proof=ex.range_proof[1:]),
    ]
    for f in bad:
        assert not _verify(f, v)[0].verified


def test_consistency_files_and_split_views(lg: Log) -> None:
    lg.append(6)
    old = lg.checkpoint()
    lg.append(9)
    new = lg.checkpoint()
    with lg.store.reader() as txn:
        proof = lg.log.tree.consistency(txn, old.size, new.size)
    v = lg.verifier()
    good = offline.consistency_file(old, new, proof)
    assert _verify(good, v)[0].verified
    assert not _verify(msgspec.structs.replace(good, proof=proof[:-1]), v)[0].verified
    # A second tree of size 6 under the same origin and key: a split view.
    fake_root = merkle.leaf_hash(b"another history")
    fake = tlog_checkpoint.Checkpoint(
        "test.local/log",
        6,
        fake_root,
        tlog_checkpoint.sign("test.local/log", 6, fake_root, lg.signer),
    )
    pf = lg.proof(2, old)
    pf_fake = msgspec.structs.replace(pf, checkpoint=fake.text)
    verdicts = offline.verify_files(
        [("a", msgspec.json.encode(pf)), ("b", msgspec.json.encode(pf_fake))], v
    )
    assert not all(x.verified for x in verdicts)


def test_rotation_keeps_old_receipts_verifying(lg: Log) -> None:
    lg.append(3)
    old_ring = lg.verifier()
    new = keyring.prepare_rotation(lg.key_path, 2)
    lg.log.add_signer(new)
    lg.run(keyring.rotation_job(lg.store, lg.log, lg.signer.key_id, new))
    keyring.finish_rotation(lg.key_path)
    lg.append(3)
    ring = lg.verifier()
    report = verify_store(lg.store, ring)
    assert report.verified and report.total_count == 7
    with lg.store.reader() as txn:
        bodies = [msgspec.msgpack.decode(r)["body"] for _, r in iter_raw(lg.store, txn)]
    assert [b["key_id"] for b in bodies] == [lg.signer.key_id] * 4 + [new.key_id] * 3
    assert bodies[3]["kind"] == "key_rotated"
    # The old keyring alone cannot vouch for the new key's receipts.
    assert verify_store(lg.store, old_ring).signature_failures == [
        f"rcpt-{i:012d}" for i in (4, 5, 6)
    ]
    cp = lg.checkpoint()
    assert _verify(lg.export(0, 7, cp), ring)[0].verified


def test_a_key_used_outside_its_window_fails(lg: Log) -> None:
    lg.append(2)
    new = keyring.prepare_rotation(lg.key_path, 2)
    lg.log.add_signer(new)
    lg.run(keyring.rotation_job(lg.store, lg.log, lg.signer.key_id, new))
    # The retired key signs again (e.g. stolen): its window is closed.
    with lg.store.env.begin(write=True) as txn:
        lg.store.tables.keys_current.put(txn, lg.signer.key_id)
    lg.append(1)
    report = verify_store(lg.store, lg.verifier())
    assert report.signature_failures == ["rcpt-000000000003"]


def test_reconcile_finishes_or_discards_an_interrupted_rotation(lg: Log) -> None:
    old_id = lg.signer.key_id
    # Crash after step 1: the log never moved; the pending key is discarded.
    keyring.prepare_rotation(lg.key_path, 2)
    assert keyring.reconcile(lg.store, lg.key_path).key_id == old_id
    assert not keyring.next_path(lg.key_path).exists()
    # Crash after step 2: the log moved; the pending key becomes the key.
    new = keyring.prepare_rotation(lg.key_path, 3)
    lg.log.add_signer(new)
    lg.run(keyring.rotation_job(lg.store, lg.log, old_id, new))
    assert keyring.reconcile(lg.store, lg.key_path).key_id == new.key_id
    assert not keyring.next_path(lg.key_path).exists()


@settings(
    max_examples=40, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture]
)
@given(data=st.data())
def test_fsck_detects_any_bit_flip(tmp_path_factory: Any, data: st.DataObject) -> None:
    lg = Log(tmp_path_factory.mktemp("fsck"))
    try:
        lg.append(11)
        lg.checkpoint()
        lg.append(4)
        lg.checkpoint()
        assert fsck(lg.store).ok
        target = data.draw(st.sampled_from(["receipts", "merkle", "checkpoints"]))
        with lg.store.reader() as txn:
            keys = [bytes(k) for k, _ in txn.cursor(db=lg.store.db(target))]
            key = data.draw(st.sampled_from(keys))
            size = len(txn.get(key, db=lg.store.db(target)))
        lg.poke(target, key, flip_at=data.draw(st.integers(0, size - 1)))
        report = fsck(lg.store)
        assert not report.ok
        assert report.errors[0].split("/")[0] in (target, "receipts", "merkle", "checkpoints")
    finally:
        lg.store.close()


def test_fsck_names_a_tampered_observation_batch(tmp_path: Path) -> None:
    import time

    from knhkd.loop.ingest import commit_job
    from knhkd.model import ObservationIn

    lg = Log(tmp_path)
    items = [ObservationIn(event_type="a.b", sector="generic", value=i) for i in range(5)]
    lg.run(commit_job(lg.store, lg.log, [items], time.time_ns))
    assert fsck(lg.store).ok
    lg.poke("observations", seq_key(2), flip_at=random.Random(1).randrange(10, 20))
    report = fsck(lg.store)
    assert not report.ok and report.errors[0].startswith("observations/")
    lg.store.close()


def test_fsck_on_a_missing_tree_node(lg: Log) -> None:
    lg.append(8)
    with lg.store.env.begin(write=True) as txn:
        txn.delete(NODE_KEY.encode((1, 1)), db=lg.store.db("merkle"))
    report = fsck(lg.store)
    assert not report.ok and any("merkle" in e for e in report.errors)


@settings(
    max_examples=30, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture]
)
@given(data=st.data())
def test_the_offline_verifier_detects_any_bit_flip(
    tmp_path_factory: Any, data: st.DataObject
) -> None:
    """Proofs and an export made from a tampered store, against the checkpoint
    signed before the tampering, do not all verify."""
    lg = Log(tmp_path_factory.mktemp("flip"))
    try:
        lg.append(9)
        lg.checkpoint()
        target = data.draw(st.sampled_from(["receipts", "merkle", "checkpoints"]))
        with lg.store.reader() as txn:
            keys = [bytes(k) for k, _ in txn.cursor(db=lg.store.db(target))]
            key = data.draw(st.sampled_from(keys))
            size = len(txn.get(key, db=lg.store.db(target)))
        lg.poke(target, key, flip_at=data.draw(st.integers(0, size - 1)))
        with lg.store.reader() as txn:
            raw = lg.store.tables.checkpoints.get_raw(txn, 9)
            note = (raw or b"").decode(errors="replace")
            records = [r for _, r in iter_raw(lg.store, txn)]
            paths = [lg.log.tree.inclusion(txn, i, 9) for i in range(9)]
            leaves_proof = lg.log.tree.range_proof(txn, 0, 9, 9)
        files: list[Any] = [
            ProofFile("knhkd-proof-v1", i, 9, records[i], paths[i], note) for i in range(9)
        ]
        files.append(ExportFile("knhkd-export-v1", 0, 9, records, leaves_proof, note))
        verdicts = offline.verify_files(
            [(str(i), msgspec.json.encode(f)) for i, f in enumerate(files)], lg.verifier()
        )
        assert not all(v.verified for v in verdicts)
    finally:
        lg.store.close()
