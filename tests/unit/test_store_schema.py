"""The store owns the on-disk schema (store/schema.py, store/tables.py).

- every accessor round-trips its table's type, and writes the bytes knhkd has
  always written under the key it has always used (an existing data directory
  reads the same);
- the schema version is checked in one place and refused with
  ``SchemaVersionError``;
- no module of knhkd outside store/ names a database or a ``meta`` key
  (loop/daemon.py is exempt until its split lands).
"""

from __future__ import annotations

import ast
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import msgspec
import pytest

import knhkd
from knhkd.model import (
    CycleReport,
    Delta,
    DetectedPattern,
    Observation,
    Observe,
    Proposal,
    PublicKeyEntry,
    ReceiptHead,
    Relaxation,
    RingCursor,
    Snapshot,
    SnapshotRecord,
    StageResult,
    Triple,
    ValidationReport,
)
from knhkd.store import schema
from knhkd.store.env import MB, SchemaVersionError, Store, StoreError, open_store
from knhkd.store.writer import run_transaction

# --------------------------------------------------------------------------- #
# Round trips, against the layout written before the accessors existed
# --------------------------------------------------------------------------- #

OBS = Observation(
    id="01J0000000000000000000000A",
    seq=7,
    event_type="a.b",
    sector="finance",
    value={"amount": 5, "nested": [1, "x", None]},
    metadata={"k": "v"},
    ingested_at_ns=1_700_000_000_000_000_000,
    event_time=datetime(2024, 1, 2, 3, 4, 5, tzinfo=UTC),
)
PATTERN = DetectedPattern(
    id="pat-1",
    name="high_frequency:a.b",
    kind="high_frequency",
    sector="finance",
    confidence=0.75,
    detected_at_ns=1_700_000_000_123_456_789,
    window_seconds=60.0,
    evidence_count=3,
    evidence_ids=["e1", "e2", "e3"],
    recommended_action=Observe(),
)
PROPOSAL = Proposal(
    id="prop-1",
    parent_snapshot_id="snap-0",
    sector="logistics",
    description="d",
    reasoning="r",
    confidence=0.5,
    estimated_ticks=8,
    signers=["alice:cfo@finance"],
    resources={"cpu": 1.5},
    delta=Delta(add=[Triple("<urn:a>", "<urn:b>", '"c"')]),
    pattern_id=None,
    can_rollback=True,
    created_at_ns=5,
)
REPORT = ValidationReport(
    proposal_id="prop-1",
    passed=False,
    stages=[StageResult(1, "static", False, "failed", "bad IRI", 0.25)],
    timestamp_ns=9,
    stages_not_run=["2"],
)
SNAPSHOT = SnapshotRecord(
    meta=Snapshot("snap-1", "snap-0", 1, 11, 2, proposal_id="prop-1"),
    ntriples="<urn:a> <urn:b> <urn:c> .\n",
)
CYCLE = CycleReport(
    id="cycle-1",
    started_at=datetime(2024, 1, 2, tzinfo=UTC),
    completed_at=datetime(2024, 1, 3, tzinfo=UTC),
    duration_ms=1.5,
    patterns_detected=1,
    proposals_generated=1,
    validations_passed=0,
    validations_failed=1,
    snapshots_promoted=0,
    outcome="completed",
    receipt_ids=["rcpt-000000000001"],
    trigger="on_demand",
)
KEY = PublicKeyEntry("key-1", "ed25519", "AAAA", not_before_ns=1, not_after_ns=None)
RELAXATION = Relaxation(
    id="rlx-1",
    guard_id="G-1",
    criticality="high",
    requester="bob",
    reason="maintenance",
    requested_at_ns=1,
    quorum=2,
    min_review_ns=3,
    expires_at_ns=4,
    window_ns=5,
)


def u64(n: int) -> bytes:
    return n.to_bytes(8, "big")


@pytest.fixture
def store(tmp_path: Path) -> Any:
    s = open_store(tmp_path, map_size=MB, max_map_size=4 * MB)
    yield s
    s.close()


def _write(store: Store, job: Any) -> Any:
    [(value, err)] = run_transaction(store, [job])
    assert err is None, err
    return value


# (accessor, key, value, database, the key as stored)
ROWS: list[tuple[str, Any, Any, str, bytes]] = [
    ("observations", 7, OBS, "observations", u64(7)),
    ("patterns", (PATTERN.detected_at_ns, "pat-1"), PATTERN, "patterns",
     u64(PATTERN.detected_at_ns) + b"pat-1"),
    ("proposals", "prop-1", PROPOSAL, "proposals", b"prop-1"),
    ("validations", "prop-1", REPORT, "validations", b"prop-1"),
    ("snapshots", "snap-1", SNAPSHOT, "snapshots", b"snap-1"),
    ("cycles", "cycle-1", CYCLE, "cycles", b"cycle-1"),
    ("keys", "key-1", KEY, "keys", b"key-1"),
    ("relaxations", "rlx-1", RELAXATION, "relaxations", b"rlx-1"),
]  # fmt: skip


@pytest.mark.parametrize(("attr", "key", "value", "db", "stored_key"), ROWS)
def test_each_struct_table_round_trips_in_the_legacy_layout(
    store: Store, attr: str, key: Any, value: Any, db: str, stored_key: bytes
) -> None:
    table = getattr(store.tables, attr)
    _write(store, lambda txn: table.put(txn, key, value))
    with store.reader() as txn:
        assert table.get(txn, key) == value
        assert list(table.items(txn)) == [(key, value)]
        assert table.count(txn) == 1
        # The bytes and key the code before the accessors wrote and read.
        assert txn.get(stored_key, db=store.db(db)) == msgspec.msgpack.encode(value)
        assert table.get(txn, _other(key)) is None


def _other(key: Any) -> Any:
    if isinstance(key, int):
        return key + 1
    if isinstance(key, str):
        return key + "x"
    return (key[0] + 1, key[1])


@pytest.mark.parametrize(
    "attr", ["observations", "patterns", "proposals", "snapshots", "cycles", "keys", "relaxations"]
)
def test_add_stores_a_value_under_the_key_it_names(store: Store, attr: str) -> None:
    attr_, key, value, _, _ = next(r for r in ROWS if r[0] == attr)
    table = getattr(store.tables, attr_)
    _write(store, lambda txn: table.add(txn, value))
    with store.reader() as txn:
        assert table.get(txn, key) == value


def test_raw_tables_keep_the_exact_bytes(store: Store) -> None:
    t = store.tables
    record, node, note = b"\x92\x01\xc4\x03abc", bytes(range(32)), "origin\n9\nroot\n"

    def job(txn: Any) -> None:
        assert t.receipts.put_raw(txn, 3, record, overwrite=False)
        assert not t.receipts.put_raw(txn, 3, b"other", overwrite=False)
        t.tree.put_raw(txn, (2, 5), node)
        t.checkpoints.put(txn, 9, note)
        t.proposal_deltas.put(txn, b"parent:delta:gov", "prop-1")

    _write(store, job)
    with store.reader() as txn:
        assert t.receipts.get_raw(txn, 3) == record
        assert list(t.receipts.items_raw(txn, start=3)) == [(3, record)]
        assert list(t.receipts.items_raw(txn, start=4)) == []
        assert t.tree.get_raw(txn, (2, 5)) == node
        assert list(t.tree.items_raw(txn)) == [((2, 5), node)]
        assert t.checkpoints.get(txn, 9) == note
        assert t.checkpoints.last(txn) == (9, note)
        assert t.checkpoints.first_from(txn, 4) == (9, note)
        assert t.checkpoints.first_from(txn, 10) is None
        assert t.proposal_deltas.get(txn, b"parent:delta:gov") == "prop-1"
        assert txn.get(u64(3), db=store.db("receipts")) == record
        assert txn.get(bytes([2]) + u64(5), db=store.db("merkle")) == node
        assert txn.get(u64(9), db=store.db("checkpoints")) == note.encode()
        assert txn.get(b"parent:delta:gov", db=store.db("proposal_deltas")) == b"prop-1"


def test_observations_append_pre_encoded_records_and_iterate_newest_first(
    store: Store,
) -> None:
    obs = store.tables.observations
    records = [
        (u64(s), msgspec.msgpack.encode(msgspec.structs.replace(OBS, seq=s))) for s in range(5)
    ]
    assert _write(store, lambda txn: obs.put_appending(txn, iter(records))) == 5
    with store.reader() as txn:
        assert [s for s, _ in obs.items_reversed(txn)] == [4, 3, 2, 1, 0]
        assert [o.seq for o in obs.values(txn)] == [0, 1, 2, 3, 4]
        assert obs.get_raw(txn, 2) == records[2][1]


# (slot, value, the bytes as stored)
META_ROWS: list[tuple[str, Any, bytes]] = [
    ("schema_version", 2, b"2"),
    ("salted_from", 7, b"7"),
    ("observations_next", 42, b"42"),
    ("receipt_head", ReceiptHead(3, "ab" * 32, 17), msgspec.msgpack.encode([3, "ab" * 32, 17])),
    ("log_origin", "knhkd.example/log", b"knhkd.example/log"),
    ("tree_size", 9, b"9"),
    ("keys_current", "key-1", b"key-1"),
    ("snapshot_current", "snap-1", b"snap-1"),
    ("ring_cursor", RingCursor(ring_id=5, next_seq=[1, 2]), msgspec.msgpack.encode(
        {"ring_id": 5, "next_seq": [1, 2]})),
]  # fmt: skip


@pytest.mark.parametrize(("attr", "value", "stored"), META_ROWS)
def test_each_meta_key_round_trips_in_the_legacy_encoding(
    tmp_path: Path, attr: str, value: Any, stored: bytes
) -> None:
    store = open_store(tmp_path, map_size=MB, max_map_size=4 * MB)
    try:
        slot = getattr(store.tables, attr)
        _write(store, lambda txn: slot.put(txn, value))
        with store.reader() as txn:
            assert slot.get(txn) == value
            assert txn.get(slot.key, db=store.db("meta")) == stored
        assert slot.entry(value) == (slot.key, stored)
    finally:
        store.close()


def test_governance_digests_and_meta_entries(store: Store) -> None:
    t = store.tables
    doctrines = t.governance_digests["doctrines"]
    cursor = RingCursor(ring_id=1, next_seq=[3])

    def job(txn: Any) -> None:
        doctrines.put(txn, "d1")
        t.put_meta(txn, dict([t.ring_cursor.entry(cursor)]))

    _write(store, job)
    with store.reader() as txn:
        assert txn.get(b"governance.doctrines_digest", db=store.db("meta")) == b"d1"
        assert t.governance_digests["guards"].get(txn) is None
        assert t.ring_cursor.get(txn) == cursor
    [(_, err)] = run_transaction(store, [lambda txn: t.put_meta(txn, {b"not.a.key": b"x"})])
    assert isinstance(err, KeyError)


def test_the_schema_declares_every_database_once() -> None:
    names = [t.name for t in schema.TABLES]
    assert len(set(names)) == len(names) == len(schema.DB_NAMES)
    assert len(set(schema.META_KEYS)) == len(schema.META_KEYS)


# --------------------------------------------------------------------------- #
# The schema version
# --------------------------------------------------------------------------- #


def test_a_foreign_schema_version_is_a_schema_version_error(tmp_path: Path) -> None:
    store = open_store(tmp_path, map_size=MB, max_map_size=4 * MB)
    _write(store, lambda txn: store.tables.schema_version.put_raw(txn, b"3"))
    store.close()
    with pytest.raises(SchemaVersionError, match="schema version 3 is not 2") as caught:
        open_store(tmp_path, map_size=MB, max_map_size=4 * MB)
    assert caught.value.found == b"3"
    assert not caught.value.older
    assert isinstance(caught.value, StoreError)
    # Refused, not rewritten: it still says 2.
    ro = tmp_path / "lmdb"
    assert (ro / "data.mdb").exists()
    with pytest.raises(SchemaVersionError):
        open_store(tmp_path, readonly=True, exclusive=False)


def test_a_store_without_a_version_is_refused_read_only(tmp_path: Path) -> None:
    store = open_store(tmp_path, map_size=MB, max_map_size=4 * MB)
    _write(store, lambda txn: txn.delete(schema.META_SCHEMA, db=store.db("meta")))
    store.close()
    with pytest.raises(SchemaVersionError, match="no schema version") as caught:
        open_store(tmp_path, readonly=True, exclusive=False)
    assert caught.value.found is None


# --------------------------------------------------------------------------- #
# No module outside store/ names a database or a meta key
# --------------------------------------------------------------------------- #

PACKAGE = Path(knhkd.__file__).parent
# loop/daemon.py is being split (issue 9 item 4); it moves to the accessors then.
EXEMPT = ("store/",)


def offences(source: str) -> list[tuple[int, str]]:
    """(line, what) for each place ``source`` opens a database by name or spells
    a ``meta`` key; docstrings may mention them."""
    tree = ast.parse(source)
    docstrings = {
        id(node.body[0].value)
        for node in ast.walk(tree)
        if isinstance(node, ast.Module | ast.ClassDef | ast.FunctionDef | ast.AsyncFunctionDef)
        and node.body
        and isinstance(node.body[0], ast.Expr)
        and isinstance(node.body[0].value, ast.Constant)
    }
    meta_keys = set(schema.META_KEYS)
    found: list[tuple[int, str]] = []
    for node in ast.walk(tree):
        if (
            isinstance(node, ast.Call)
            and isinstance(node.func, ast.Attribute)
            and node.func.attr in ("db", "open_db")
        ):
            found.append((node.lineno, f".{node.func.attr}(...) opens a database by name"))
        elif isinstance(node, ast.Attribute) and node.attr == "dbs":
            found.append((node.lineno, ".dbs reaches the database handles"))
        elif isinstance(node, ast.Constant) and id(node) not in docstrings:
            value = node.value
            raw = value.encode() if isinstance(value, str) else value
            if isinstance(raw, bytes) and raw in meta_keys:
                found.append((node.lineno, f"meta key {value!r}"))
        elif isinstance(node, ast.ImportFrom):
            for alias in node.names:
                if alias.name.startswith("META_") or alias.name == "DB_NAMES":
                    found.append((node.lineno, f"imports {alias.name}"))
        if isinstance(node, ast.Attribute) and node.attr.startswith("META_"):
            found.append((node.lineno, f"uses {node.attr}"))
    return sorted(found)


def test_the_scan_finds_what_it_is_meant_to() -> None:
    bad = (
        '"""Docstrings may say receipts.head."""\n'
        'x = txn.get(b"receipts.head", db=store.db("meta"))\n'
        "from knhkd.store.env import META_OBS_NEXT\n"
        "y = store.dbs\n"
        "z = schema.META_ORIGIN\n"
        'k = "keys.current"\n'
    )
    assert [line for line, _ in offences(bad)] == [2, 2, 3, 4, 5, 6]
    assert offences('"""ring.cursor"""\nx = store.tables.ring_cursor.get(txn)\n') == []


def test_no_module_outside_store_names_a_database_or_a_meta_key() -> None:
    report = []
    for path in sorted(PACKAGE.rglob("*.py")):
        rel = path.relative_to(PACKAGE).as_posix()
        if rel.startswith(EXEMPT):
            continue
        for line, what in offences(path.read_text()):
            report.append(f"knhkd/{rel}:{line}: {what}")
    assert not report, "use store.tables (store/tables.py):\n" + "\n".join(report)
