"""The store and its single-writer transaction runner, on real LMDB files."""

from __future__ import annotations

from pathlib import Path

import lmdb
import pytest

from knhkd.store.env import MB, SCHEMA_VERSION, StoreError, open_store
from knhkd.store.ids import BadId, observation_id, seq_of
from knhkd.store.writer import run_transaction


def test_one_daemon_per_data_dir(tmp_path: Path) -> None:
    store = open_store(tmp_path, map_size=MB, max_map_size=4 * MB)
    with pytest.raises(StoreError, match="in use"):
        open_store(tmp_path, map_size=MB, max_map_size=4 * MB)
    store.close()
    open_store(tmp_path, map_size=MB, max_map_size=4 * MB).close()


def test_foreign_schema_version_is_refused(tmp_path: Path) -> None:
    store = open_store(tmp_path, map_size=MB, max_map_size=4 * MB)
    with store.env.begin(write=True) as txn:
        store.tables.schema_version.put(txn, SCHEMA_VERSION + 1)
    store.close()
    with pytest.raises(StoreError, match="schema version"):
        open_store(tmp_path, map_size=MB, max_map_size=4 * MB)


def test_a_failing_job_is_rolled_back_alone(tmp_path: Path) -> None:
    store = open_store(tmp_path, map_size=MB, max_map_size=4 * MB)
    db = store.db("observations")

    def good(key: bytes):  # type: ignore[no-untyped-def]
        return lambda txn: txn.put(key, b"v", db=db)

    def bad(txn: lmdb.Transaction) -> None:
        txn.put(b"bad", b"v", db=db)
        raise ValueError("refused")

    results = run_transaction(store, [good(b"a"), bad, good(b"b")])
    assert [r[1] is None for r in results] == [True, False, True]
    assert isinstance(results[1][1], ValueError)
    with store.reader() as txn:
        assert txn.get(b"a", db=db) == b"v"
        assert txn.get(b"b", db=db) == b"v"
        assert txn.get(b"bad", db=db) is None
    store.close()


def test_map_full_grows_and_retries_whole_transaction(tmp_path: Path) -> None:
    store = open_store(tmp_path, map_size=MB, max_map_size=64 * MB)
    db = store.db("observations")
    calls = []

    def big(txn: lmdb.Transaction) -> int:
        calls.append(1)
        for i in range(3000):
            txn.put(i.to_bytes(8, "big"), b"x" * 1000, db=db)
        return 3000

    results = run_transaction(store, [big])
    assert results == [(3000, None)]
    assert len(calls) > 1, "the job should have been retried after growth"
    assert store.map_size() > MB
    with store.reader() as txn:
        assert txn.stat(db)["entries"] == 3000
    store.close()


def test_map_ceiling_is_an_error_and_nothing_is_written(tmp_path: Path) -> None:
    store = open_store(tmp_path, map_size=MB, max_map_size=2 * MB)
    db = store.db("observations")

    def huge(txn: lmdb.Transaction) -> None:
        for i in range(10_000):
            txn.put(i.to_bytes(8, "big"), b"x" * 1000, db=db)

    with pytest.raises(StoreError, match="ceiling"):
        run_transaction(store, [huge])
    with store.reader() as txn:
        assert txn.stat(db)["entries"] == 0
    store.close()


def test_observation_ids_round_trip_and_are_unique_per_sequence() -> None:
    ids = {observation_id(1_700_000_000_000_000_000, seq) for seq in range(10_000)}
    assert len(ids) == 10_000
    for seq in (0, 1, 2**40, 2**63):
        assert seq_of(observation_id(1_700_000_000_000_000_000, seq)) == seq
    with pytest.raises(BadId):
        seq_of("not-an-id")
