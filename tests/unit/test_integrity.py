"""store/anchor.py and receipts/integrity.py on real LMDB stores: the anchor
is written atomically, and the start-up check names a store that is behind
its anchor, forked from it, or structurally inconsistent."""

from __future__ import annotations

import os
import shutil
from pathlib import Path

import pytest

from knhkd.datadir.fsck import fsck
from knhkd.receipts.integrity import check_store, has_held_chain
from knhkd.store import anchor
from knhkd.store.env import MB, StoreDamaged, open_store
from tests.unit.test_verifiable_log import Log


def test_anchor_write_is_atomic_and_cleans_its_temporary_file(tmp_path: Path) -> None:
    path = anchor.path_in(tmp_path)
    assert anchor.read(path) is None
    anchor.write(path, "one\n")
    anchor.write(path, "two\n")
    assert anchor.read(path) == "two\n"
    assert sorted(os.listdir(tmp_path)) == [anchor.FILENAME]

    class Boom(Exception):
        pass

    class Text(str):
        def encode(self, *a: object, **k: object) -> bytes:  # type: ignore[override]
            raise Boom

    with pytest.raises(Boom):
        anchor.write(path, Text("three"))
    assert anchor.read(path) == "two\n"
    assert sorted(os.listdir(tmp_path)) == [anchor.FILENAME]


def test_an_unreadable_anchor_is_an_error_not_absent(tmp_path: Path) -> None:
    path = anchor.path_in(tmp_path)
    path.write_bytes(b"\xff\xfe not text")
    with pytest.raises(anchor.AnchorError):
        anchor.read(path)


def _trusted(lg: Log) -> dict[str, bytes]:
    return {lg.signer.key_id: lg.signer.public_key}


def _with_genesis(lg: Log) -> None:
    """A current snapshot pointer, as the daemon's genesis leaves."""
    from knhkd.knowledge.rdf import content_id
    from knhkd.model import Snapshot, SnapshotRecord

    sid = content_id("")
    meta = Snapshot(snapshot_id=sid, version=0, parent_id=None, promoted_at_ns=1, triple_count=0)

    def job(txn):  # type: ignore[no-untyped-def]
        lg.store.tables.snapshots.put(txn, sid, SnapshotRecord(meta=meta, ntriples=""))
        lg.store.tables.snapshot_current.put(txn, sid)

    lg.run(job)


def test_a_store_at_or_ahead_of_its_anchor_passes(tmp_path: Path) -> None:
    lg = Log(tmp_path)
    assert not has_held_chain(lg.store, tmp_path)
    assert check_store(lg.store, tmp_path, _trusted(lg)) == []
    _with_genesis(lg)
    lg.append(5)
    anchor.write(anchor.path_in(tmp_path), lg.checkpoint().text)
    assert has_held_chain(lg.store, tmp_path)
    lg.append(3)
    lg.checkpoint()
    assert check_store(lg.store, tmp_path, _trusted(lg)) == []
    assert fsck(lg.store, tmp_path).ok
    lg.store.close()


def test_a_rolled_back_store_is_behind_its_anchor(tmp_path: Path) -> None:
    lg = Log(tmp_path / "a")
    _with_genesis(lg)
    lg.append(4)
    lg.checkpoint()
    lg.store.close()
    shutil.copytree(tmp_path / "a" / "lmdb", tmp_path / "older")  # the store as it was
    lg.store = open_store(tmp_path / "a", map_size=16 * MB)
    from knhkd.receipts.log import ReceiptLog

    lg.log = ReceiptLog(lg.store, lg.signer, lambda: 10**15)
    lg.append(4)
    anchor.write(anchor.path_in(tmp_path / "a"), lg.checkpoint().text)
    lg.store.close()
    shutil.rmtree(tmp_path / "a" / "lmdb")
    shutil.copytree(tmp_path / "older", tmp_path / "a" / "lmdb")
    store = open_store(tmp_path / "a", create=False)
    findings = check_store(store, tmp_path / "a", _trusted(lg))
    assert len(findings) == 1 and "behind the anchor" in findings[0], findings
    assert "its tree has 4 receipts" in findings[0]
    report = fsck(store, tmp_path / "a")
    assert not report.ok and report.errors[-1].startswith("anchor: the store is behind")
    store.close()


def test_a_forked_store_or_a_foreign_anchor_is_found(tmp_path: Path) -> None:
    a, b = Log(tmp_path / "a"), Log(tmp_path / "b")
    for lg in (a, b):
        _with_genesis(lg)
        lg.append(4)
    # b's history signed by a's key and origin would be a fork of a's: here
    # a's anchor against b's store (same size, another root).
    note = a.checkpoint().text
    b.checkpoint()
    anchor.write(anchor.path_in(tmp_path / "b"), note)
    found = check_store(b.store, tmp_path / "b", {**_trusted(a), **_trusted(b)})
    assert found and "does not have the root" in found[0], found
    # Signed by a key the caller does not trust.
    found = check_store(b.store, tmp_path / "b", _trusted(b))
    assert found and "not a checkpoint signed by a known key" in found[0]
    for lg in (a, b):
        lg.store.close()


def test_structure_names_a_head_out_of_step_and_a_dangling_snapshot(tmp_path: Path) -> None:
    lg = Log(tmp_path)
    lg.append(3)
    found = check_store(lg.store, tmp_path, _trusted(lg))
    assert found == ["the store has 3 receipts but no current snapshot"]
    _with_genesis(lg)

    def damage(txn):  # type: ignore[no-untyped-def]
        txn.delete((2).to_bytes(8, "big"), db=lg.store.db("receipts"))
        lg.store.tables.snapshot_current.put(txn, "gone")

    lg.run(damage)
    found = check_store(lg.store, tmp_path, _trusted(lg))
    assert any("chain head says 3 receipts, the store holds 2" in f for f in found), found
    assert any("current snapshot gone is not in the store" in f for f in found), found
    lg.store.close()


def test_a_data_dir_that_held_a_chain_never_gets_databases_created(tmp_path: Path) -> None:
    (tmp_path / "lmdb").mkdir()
    import lmdb

    lmdb.open(str(tmp_path / "lmdb")).close()  # an empty environment
    before = (tmp_path / "lmdb" / "data.mdb").read_bytes()
    with pytest.raises(StoreDamaged, match="lacks database"):
        open_store(tmp_path, create=False)
    assert (tmp_path / "lmdb" / "data.mdb").read_bytes() == before
