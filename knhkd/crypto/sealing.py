"""Encryption at rest of observation records (``[storage] encryption_key``):
PyNaCl's SecretBox (XSalsa20-Poly1305) under a 32-byte key from a file or a
systemd credential.

A sealed record is ``SEALED`` (0xc1, a byte MessagePack never uses, so no
plaintext record starts with it), the 24-byte random nonce, and the
ciphertext with its MAC. Records written before encryption was turned on
stay readable as they are.

Guarantees: ``open`` returns the exact bytes ``seal`` was given, or raises
``SealError`` (wrong key, damaged record); ``check_token``/``verify_token``
let the store tell a wrong key at start, before any record is read.

Must never: log or put in an error message the key or a plaintext; accept a
key file group or others may read.
"""

from __future__ import annotations

import stat
from pathlib import Path

import nacl.exceptions
import nacl.secret
import nacl.utils

SEALED = b"\xc1"
KEY_BYTES = nacl.secret.SecretBox.KEY_SIZE
_CHECK = b"knhkd storage key check v1"


class SealError(Exception):
    """A sealed record (or the key check) does not open with this key."""


class StorageKeyError(ValueError):
    """The key file cannot be used; the message names it and says why."""


def load_key(path: Path) -> bytes:
    """32 raw bytes, or 64 hexadecimal digits (a trailing newline allowed)."""
    try:
        st = path.stat()
        data = path.read_bytes()
    except OSError as exc:
        raise StorageKeyError(f"{path}: cannot read the storage key: {exc.strerror}") from None
    if st.st_mode & (stat.S_IRWXG | stat.S_IRWXO):
        raise StorageKeyError(
            f"{path}: permissions {stat.S_IMODE(st.st_mode):04o} are too open; "
            "the storage key must be readable by its owner only (chmod 600)"
        )
    if len(data) == KEY_BYTES:
        return data
    text = data.strip()
    if len(text) == 2 * KEY_BYTES:
        try:
            return bytes.fromhex(text.decode("ascii"))
        except (UnicodeDecodeError, ValueError):
            pass
    raise StorageKeyError(f"{path}: not a storage key (32 bytes, or 64 hexadecimal digits)")


def new_key() -> bytes:
    return nacl.utils.random(KEY_BYTES)


class Sealer:
    __slots__ = ("_box",)

    def __init__(self, key: bytes) -> None:
        self._box = nacl.secret.SecretBox(key)

    def seal(self, plain: bytes) -> bytes:
        return SEALED + bytes(self._box.encrypt(bytes(plain)))

    def open(self, stored: bytes) -> bytes:
        """The plaintext of a sealed record; a record stored unsealed as is."""
        if stored[:1] != SEALED:
            return stored
        try:
            return bytes(self._box.decrypt(stored[1:]))
        except nacl.exceptions.CryptoError:
            raise SealError("a sealed record does not open with this key") from None

    def check_token(self) -> bytes:
        """Stored in ``meta`` at the first start with a key."""
        return self.seal(_CHECK)

    def verify_token(self, token: bytes) -> bool:
        try:
            return self.open(token) == _CHECK
        except SealError:
            return False


def is_sealed(stored: bytes) -> bool:
    return stored[:1] == SEALED
