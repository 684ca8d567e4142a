"""Observation ids: unique by construction, sortable by ingest time.

An id is a ULID (Crockford base32 of 128 bits): 48 bits of ingest time in
milliseconds, then the 64-bit observation sequence number, then 16 random
bits. The sequence is assigned by the single writer inside the committing
transaction, so two ids can never collide, whatever the concurrency: unlike the
original's timestamp-hash scheme, which lost one of two events per millisecond.
The sequence is recoverable from the id, so lookup needs no secondary index.

Must never: hand out an id for an observation that was not committed.
"""

from __future__ import annotations

import secrets

from ulid import ULID


class BadId(ValueError):
    """The text is not an observation id."""


def observation_id(ingested_at_ns: int, seq: int) -> str:
    ms = ingested_at_ns // 1_000_000
    raw = ms.to_bytes(6, "big") + seq.to_bytes(8, "big") + secrets.token_bytes(2)
    return str(ULID.from_bytes(raw))


def seq_of(obs_id: str) -> int:
    try:
        raw = ULID.from_str(obs_id).bytes
    except (ValueError, TypeError) as exc:
        raise BadId(f"not an observation id: {obs_id!r}") from exc
    return int.from_bytes(raw[6:14], "big")


def seq_key(seq: int) -> bytes:
    """LMDB key of a sequence number: big-endian so keys sort numerically."""
    return seq.to_bytes(8, "big")


def key_seq(key: bytes) -> int:
    return int.from_bytes(key, "big")
