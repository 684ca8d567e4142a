"""Canonical receipt encoding, the chain, and verification with public keys only."""

from __future__ import annotations

import hashlib
import itertools
from pathlib import Path

import msgspec
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from knhkd.crypto.keys import KeyFileError, Verifier, keyring_of, load, load_or_create
from knhkd.model import Outcome, ReceiptBody
from knhkd.receipts import canonical
from knhkd.receipts.log import Draft, ReceiptLog, iter_raw, verify_store
from knhkd.receipts.verify import verify_chain
from knhkd.store.env import MB, open_store
from knhkd.store.ids import seq_key
from knhkd.store.writer import run_transaction


def _body(**kw: object) -> ReceiptBody:
    base: dict[str, object] = dict(
        format=1,
        seq=0,
        kind="cycle_completed",
        subject_ids=["a"],
        outcome=Outcome("approved"),
        sector="",
        timestamp_ns=1,
        prev_hash="0" * 64,
        key_id="k",
        inputs={"b": "2", "a": "1"},
    )
    base.update(kw)
    return ReceiptBody(**base)  # type: ignore[arg-type]


def test_canonical_bytes_are_sorted_msgpack_with_a_domain() -> None:
    body = _body()
    raw = canonical.signed_bytes(body)
    assert raw.startswith(b"knhkd/receipt/v1\n")
    decoded = msgspec.msgpack.decode(raw[len(canonical.DOMAIN) :])
    assert list(decoded) == sorted(decoded)
    assert list(decoded["inputs"]) == ["a", "b"]
    # Insertion order of the inputs dict does not change the bytes.
    assert canonical.signed_bytes(_body(inputs={"a": "1", "b": "2"})) == raw
    assert canonical.receipt_hash(body) == hashlib.sha256(raw).hexdigest()


def test_key_file_is_private_and_refused_when_readable(tmp_path: Path) -> None:
    path = tmp_path / "keys" / "signing.key"
    signer = load_or_create(path, 1)
    assert path.stat().st_mode & 0o777 == 0o600
    assert load(path).key_id == signer.key_id
    path.chmod(0o644)
    with pytest.raises(KeyFileError, match="too open"):
        load(path)


@pytest.fixture
def log_and_store(tmp_path: Path):  # type: ignore[no-untyped-def]
    store = open_store(tmp_path, map_size=8 * MB, max_map_size=64 * MB)
    signer = load_or_create(tmp_path / "k", 1)
    clock = iter(range(1_000, 10_000_000, 7))
    log = ReceiptLog(store, signer, lambda: next(clock))
    yield log, store, Verifier(keyring_of(signer))
    store.close()


def _append(log: ReceiptLog, store, n: int) -> None:  # type: ignore[no-untyped-def]
    jobs = [
        (lambda txn, i=i: log.append(txn, Draft("cycle_completed", Outcome("approved"), [f"c{i}"])))
        for i in range(n)
    ]
    for _, err in run_transaction(store, jobs):
        assert err is None


def test_chain_verifies_and_links(log_and_store) -> None:  # type: ignore[no-untyped-def]
    log, store, verifier = log_and_store
    _append(log, store, 50)
    report = verify_store(store, verifier)
    assert report.verified and report.total_count == report.verified_count == 50
    with store.reader() as txn:
        bodies = [canonical.decode_record(v).body for _, v in iter_raw(store, txn)]
    assert [b.seq for b in bodies] == list(range(50))
    for prev, cur in itertools.pairwise(bodies):
        assert cur.prev_hash == canonical.receipt_hash(prev)
        assert cur.timestamp_ns >= prev.timestamp_ns


def test_an_aborted_job_leaves_no_trace_in_the_chain(log_and_store) -> None:  # type: ignore[no-untyped-def]
    log, store, verifier = log_and_store

    def fails(txn):  # type: ignore[no-untyped-def]
        log.append(txn, Draft("cycle_completed", Outcome("approved")))
        raise RuntimeError("no")

    ok = lambda txn: log.append(txn, Draft("cycle_completed", Outcome("approved")))  # noqa: E731
    run_transaction(store, [ok, fails, ok])
    report = verify_store(store, verifier)
    assert report.verified and report.total_count == 2


def test_a_foreign_key_fails_signatures(log_and_store, tmp_path: Path) -> None:  # type: ignore[no-untyped-def]
    log, store, _ = log_and_store
    _append(log, store, 3)
    other = Verifier(keyring_of(load_or_create(tmp_path / "other", 1)))
    report = verify_store(store, other)
    assert report.signature_failures == [canonical.receipt_id(i) for i in range(3)]


@settings(max_examples=60, deadline=None)
@given(data=st.data())
def test_any_single_byte_change_names_exactly_that_receipt(tmp_path_factory, data) -> None:  # type: ignore[no-untyped-def]
    tmp = tmp_path_factory.mktemp("flip")
    store = open_store(tmp, map_size=8 * MB, max_map_size=64 * MB)
    try:
        signer = load_or_create(tmp / "k", 1)
        log = ReceiptLog(store, signer, iter(range(10, 10_000, 3)).__next__)
        _append(log, store, 8)
        victim = data.draw(st.integers(0, 7))
        with store.reader() as txn:
            raw = bytearray(store.tables.receipts.get_raw(txn, victim) or b"")
        pos = data.draw(st.integers(0, len(raw) - 1))
        raw[pos] ^= data.draw(st.integers(1, 255))
        with store.env.begin(write=True) as txn:
            store.tables.receipts.put_raw(txn, victim, bytes(raw))
        report = verify_store(store, Verifier(keyring_of(signer)))
        bad = report.signature_failures + report.chain_breaks + report.retrocausation_violations
        assert bad == [canonical.receipt_id(victim)]
        assert not report.verified
    finally:
        store.close()


def test_truncated_tail_is_a_head_break(log_and_store) -> None:  # type: ignore[no-untyped-def]
    log, store, verifier = log_and_store
    _append(log, store, 5)
    with store.env.begin(write=True) as txn:
        txn.delete(seq_key(4), db=store.db("receipts"))
    report = verify_store(store, verifier)
    assert report.chain_breaks == ["head"]


def test_retrocausation_is_reported() -> None:
    from nacl.signing import SigningKey

    from knhkd.crypto.keys import Signer

    key = SigningKey.generate()
    from knhkd.crypto.keys import key_id_of

    signer = Signer(key, key_id_of(bytes(key.verify_key)), 0)
    records = []
    prev = canonical.GENESIS_PREV
    for seq, ts in enumerate([10, 20, 15]):
        body = _body(seq=seq, timestamp_ns=ts, prev_hash=prev, key_id=signer.key_id)
        from knhkd.model import SignedReceipt

        signed = SignedReceipt(body, signer.sign(canonical.signed_bytes(body)))
        records.append((seq, canonical.encode_record(signed)))
        prev = canonical.receipt_hash(body)
    report = verify_chain(records, Verifier(keyring_of(signer)))
    assert report.retrocausation_violations == [canonical.receipt_id(2)]
    assert report.signature_failures == [] and report.chain_breaks == []
