"""Verification of a receipt chain with public keys only.

Guarantees:
- Each receipt is judged on its own signature (ed25519 over the canonical
  bytes, by the key its ``key_id`` names, valid at the receipt's time), its link to its predecessor
  (``prev_hash``, contiguous ``seq``) and its time (never before its
  predecessor's: invariant Q1, no retrocausation).
- A stored record that is not exactly the canonical encoding of a validly
  signed receipt counts as a signature failure.
- A damaged receipt is named once, under ``signature_failures``; the link from
  its successor is not then held against the successor (the successor's own
  ``prev_hash`` is signed, so it is the damaged one that changed). Altering one
  stored byte therefore names exactly the receipt that holds it.
- Works on anything that yields ``(seq, stored bytes)``: a live store, a copy of
  a stopped daemon's data dir, an export.

Must never: trust a stored hash or head it has not recomputed.
"""

from __future__ import annotations

from collections.abc import Iterable, Iterator

import msgspec

from knhkd.crypto.batch import verify_many
from knhkd.crypto.keys import Verifier
from knhkd.model import ChainVerification, SignedReceipt
from knhkd.receipts import canonical

CHUNK = 4096


def _chunks(records: Iterable[tuple[int, bytes]]) -> Iterator[list[tuple[int, bytes]]]:
    chunk: list[tuple[int, bytes]] = []
    for item in records:
        chunk.append(item)
        if len(chunk) == CHUNK:
            yield chunk
            chunk = []
    if chunk:
        yield chunk


def _decode(raw: bytes) -> SignedReceipt | None:
    try:
        signed = canonical.decode_record(raw)
    except (msgspec.MsgspecError, ValueError):
        # Undecodable (including invalid UTF-8): damaged beyond reading.
        return None
    # Stored bytes must be the canonical encoding of what they decode to: a
    # change msgpack would tolerate (an unknown key, a wider integer form) is
    # still a change to the record.
    return signed if canonical.encode_record(signed) == raw else None


def verify_chain(
    records: Iterable[tuple[int, bytes]],
    verifier: Verifier,
    *,
    expected_head: tuple[int, str] | None = None,
) -> ChainVerification:
    """Verify ``records`` in order. ``expected_head`` is (next_seq, hash) as stored.

    Signatures of a chunk are checked together on all cores (crypto/batch.py);
    the chain is then walked in order.
    """
    total = verified = 0
    sig_failures: list[str] = []
    breaks: list[str] = []
    retro: list[str] = []
    expected_seq = 0
    last_hash: str | None = canonical.GENESIS_PREV
    last_ts = 0
    first: int | None = None
    last: int | None = None
    public = verifier.public_keys()
    for chunk in _chunks(records):
        decoded = [_decode(raw) for _, raw in chunk]
        messages = [canonical.signed_bytes(d.body) if d else b"" for d in decoded]
        checks = [
            (public.get(d.body.key_id, b""), m, d.signature) if d else (b"", b"", b"")
            for d, m in zip(decoded, messages, strict=True)
        ]
        sig_ok = verify_many(checks)
        for (seq, _), signed, message, ok_sig in zip(chunk, decoded, messages, sig_ok, strict=True):
            total += 1
            first = seq if first is None else first
            last = seq
            rid = canonical.receipt_id(seq)
            if (
                signed is None
                or signed.body.seq != seq
                or not ok_sig
                or not verifier.valid_at(signed.body.key_id, signed.body.timestamp_ns)
            ):
                sig_failures.append(rid)
                expected_seq, last_hash = seq + 1, None
                continue
            body = signed.body
            ok = True
            if seq != expected_seq or (last_hash is not None and body.prev_hash != last_hash):
                breaks.append(rid)
                ok = False
            if body.timestamp_ns < last_ts:
                retro.append(rid)
                ok = False
            verified += ok
            expected_seq = seq + 1
            last_hash = canonical.hash_of(message)
            last_ts = body.timestamp_ns
    head_hash = last_hash or ""
    head_moved = expected_head is not None and expected_head[0] != expected_seq
    head_differs = (
        expected_head is not None and last_hash is not None and expected_head[1] != last_hash
    )
    if head_moved or head_differs:
        # The stored head disagrees with the last receipt: a truncated or
        # rewritten tail.
        breaks.append("head")
    return ChainVerification(
        total_count=total,
        verified_count=verified,
        signature_failures=sig_failures,
        chain_breaks=breaks,
        retrocausation_violations=retro,
        verified=not (sig_failures or breaks or retro),
        head_hash=head_hash,
        first_seq=first,
        last_seq=last,
    )
