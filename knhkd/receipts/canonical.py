"""The one canonical encoding of a receipt, used to sign, hash, export, verify.

Rules (format 1):
- The signed bytes are ``b"knhkd/receipt/v1\\n"`` followed by the MessagePack
  encoding of ``ReceiptBody`` as a map, every map's keys (struct fields and the
  ``inputs`` dict alike) sorted bytewise. Integers use the smallest MessagePack
  form; strings are UTF-8. Any MessagePack library that sorts map keys
  reproduces these bytes.
- A receipt's hash is SHA-256 of those same bytes, in lowercase hex. It is what
  the next receipt's ``prev_hash`` names; the first receipt's ``prev_hash`` is
  64 zeros.
- The signature is ed25519 over the signed bytes by the key ``key_id`` names.

Must never: encode a receipt any other way for any of these purposes.
"""

from __future__ import annotations

import hashlib
from typing import NamedTuple

import msgspec

from knhkd.model import ReceiptBody, SignedReceipt

DOMAIN = b"knhkd/receipt/v1\n"
FORMAT = 1
GENESIS_PREV = "0" * 64

_body_encoder = msgspec.msgpack.Encoder(order="sorted")
_record_encoder = msgspec.msgpack.Encoder(order="sorted")
_record_decoder = msgspec.msgpack.Decoder(SignedReceipt)


def signed_bytes(body: ReceiptBody) -> bytes:
    return DOMAIN + _body_encoder.encode(body)


def hash_of(signed: bytes) -> str:
    """The receipt hash of already encoded ``signed_bytes``."""
    return hashlib.sha256(signed).hexdigest()


def receipt_hash(body: ReceiptBody) -> str:
    return hash_of(signed_bytes(body))


def encode_record(receipt: SignedReceipt) -> bytes:
    """Storage form (LMDB value, export line): MessagePack, keys sorted."""
    return _record_encoder.encode(receipt)


def decode_record(data: bytes) -> SignedReceipt:
    return _record_decoder.decode(data)


def receipt_id(seq: int) -> str:
    return f"rcpt-{seq:012d}"


class BatchInputs(NamedTuple):
    """What an ``observation_batch_committed`` receipt commits to: the
    observations of its sector in ``first..last`` (inclusive), how many, and
    the digest over them (``salted``: over their leaf digests, schema v2;
    else over their records)."""

    first: int
    last: int
    size: int
    digest: str
    salted: bool


def batch_inputs(body: ReceiptBody) -> BatchInputs:
    """Raises ``KeyError`` or ``ValueError`` for a batch receipt that lacks them."""
    salted = "leaves_sha256" in body.inputs
    return BatchInputs(
        int(body.inputs["first_seq"]),
        int(body.inputs["last_seq"]),
        int(body.inputs["count"]),
        body.inputs["leaves_sha256" if salted else "records_sha256"],
        salted,
    )
