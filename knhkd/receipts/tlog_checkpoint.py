"""Signed checkpoints: C2SP ``tlog-checkpoint`` notes signed as C2SP
``signed-note`` with ed25519.

A checkpoint is the note text

    <origin>\\n<tree size, decimal>\\n<base64 root hash>\\n

followed by a blank line and one signature line per signer,
``— <key name> <base64(key hash || signature)>``, where the key name is the
origin, the key hash is the first 4 bytes of
``SHA-256(name || "\\n" || 0x01 || 32-byte ed25519 public key)`` (signed-note,
algorithm 0x01) and the signature is ed25519 over the note text.

Guarantees: ``parse`` refuses anything that is not exactly this shape (sizes in
canonical decimal, 32-byte roots, the em dash); ``verify`` accepts a note only
with a valid signature by a key of the given keyring.
Must never: accept a checkpoint whose signature it did not check.
"""

from __future__ import annotations

import base64
import binascii
import hashlib
from collections.abc import Mapping
from dataclasses import dataclass

from knhkd.crypto.keys import Signer, verify_with

SIG_PREFIX = "\u2014 "
ED25519 = b"\x01"


class CheckpointError(ValueError):
    """Not a well-formed checkpoint, or no valid signature from a known key."""


@dataclass(frozen=True)
class Checkpoint:
    origin: str
    size: int
    root: bytes
    text: str  # the whole signed note


def note_key_hash(name: str, public_key: bytes) -> bytes:
    return hashlib.sha256(name.encode() + b"\n" + ED25519 + public_key).digest()[:4]


def body(origin: str, size: int, root: bytes) -> str:
    return f"{origin}\n{size}\n{base64.b64encode(root).decode()}\n"


def sign(origin: str, size: int, root: bytes, signer: Signer) -> str:
    text = body(origin, size, root)
    sig = signer.sign(text.encode())
    keyhash = note_key_hash(origin, signer.public_key)
    return f"{text}\n{SIG_PREFIX}{origin} {base64.b64encode(keyhash + sig).decode()}\n"


def parse(note: str) -> tuple[Checkpoint, str, list[tuple[str, bytes, bytes]]]:
    """(checkpoint, signed text, [(name, key hash, signature)])."""
    text, sep, sigblock = note.partition("\n\n")
    if not sep or not sigblock.endswith("\n"):
        raise CheckpointError("not a signed note: no signature block")
    text += "\n"
    lines = text.split("\n")[:-1]
    if len(lines) < 3:
        raise CheckpointError("a checkpoint has an origin, a size and a root hash")
    origin, size_s, root_s = lines[0], lines[1], lines[2]
    if not origin or any(c.isspace() for c in origin):
        raise CheckpointError("bad origin line")
    if not size_s.isdigit() or (size_s != "0" and size_s.startswith("0")):
        raise CheckpointError("bad tree size line")
    try:
        root = base64.b64decode(root_s, validate=True)
    except binascii.Error:
        raise CheckpointError("bad root hash line") from None
    if len(root) != 32:
        raise CheckpointError("root hash is not 32 bytes")
    sigs: list[tuple[str, bytes, bytes]] = []
    for line in sigblock.split("\n")[:-1]:
        if not line.startswith(SIG_PREFIX):
            raise CheckpointError("bad signature line")
        name, _, b64 = line[len(SIG_PREFIX) :].rpartition(" ")
        try:
            raw = base64.b64decode(b64, validate=True)
        except binascii.Error:
            raise CheckpointError("bad signature encoding") from None
        if len(raw) != 4 + 64 or not name:
            raise CheckpointError("bad signature length")
        sigs.append((name, raw[:4], raw[4:]))
    if not sigs:
        raise CheckpointError("no signature")
    return Checkpoint(origin, int(size_s), root, note), text, sigs


def verify(note: str, public_keys: Mapping[str, bytes], *, origin: str | None = None) -> Checkpoint:
    """Parse ``note`` and check it is signed, under its origin's name, by one
    of ``public_keys`` (key id → raw public key)."""
    cp, text, sigs = parse(note)
    if origin is not None and cp.origin != origin:
        raise CheckpointError(f"checkpoint is for origin {cp.origin!r}, not {origin!r}")
    for name, keyhash, sig in sigs:
        if name != cp.origin:
            continue
        for pub in public_keys.values():
            if note_key_hash(name, pub) == keyhash and verify_with(pub, text.encode(), sig):
                return cp
    raise CheckpointError("no valid signature by a known key")
