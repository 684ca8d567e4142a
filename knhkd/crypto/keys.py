"""Ed25519 signing keys: generation, the secret-key file, key ids, export.

Guarantees:
- A secret key file is created with mode 0600 (in a 0700 directory) and is
  refused at load when group or others can read it, as ssh does.
- The key id is the first 8 bytes of SHA-256 over the raw 32-byte public key,
  in lowercase hex: anyone holding the public key can recompute it.
- The public export (``PublicKeyring``, format ``knhkd-keyring-v1``) is JSON:
  ``{"format": "knhkd-keyring-v1", "keys": [{"key_id", "algorithm":
  "ed25519", "public_key": base64(32 bytes), "not_before_ns",
  "not_after_ns"}]}``.

Must never: write a secret key anywhere but its file, log it, or export it.
"""

from __future__ import annotations

import base64
import hashlib
import os
import stat
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path

import msgspec
import nacl.bindings
from nacl.exceptions import BadSignatureError
from nacl.signing import SigningKey, VerifyKey

from knhkd.crypto.batch import sign_many
from knhkd.model import PublicKeyEntry, PublicKeyring

SECRET_FORMAT = "knhkd-ed25519-secret-v1"


class KeyFileError(Exception):
    """A key file is missing, malformed or unsafe."""


class _SecretFile(msgspec.Struct, forbid_unknown_fields=True):
    format: str
    seed: str  # base64 of the 32-byte ed25519 seed
    created_ns: int


def key_id_of(public_key: bytes) -> str:
    return hashlib.sha256(public_key).digest()[:8].hex()


@dataclass(frozen=True)
class Signer:
    """A loaded signing key."""

    key: SigningKey
    key_id: str
    created_ns: int
    # libsodium's 64-byte secret key (seed || public key), for batch signing.
    secret: bytes = field(init=False, repr=False)

    def __post_init__(self) -> None:
        _, sk = nacl.bindings.crypto_sign_seed_keypair(bytes(self.key))
        object.__setattr__(self, "secret", sk)

    @property
    def public_key(self) -> bytes:
        return bytes(self.key.verify_key)

    def sign(self, message: bytes) -> bytes:
        return bytes(nacl.bindings.crypto_sign(message, self.secret)[:64])

    def sign_many(self, messages: Sequence[bytes]) -> list[bytes]:
        return sign_many(self.secret, messages)

    def public_entry(self) -> PublicKeyEntry:
        return PublicKeyEntry(
            key_id=self.key_id,
            algorithm="ed25519",
            public_key=base64.b64encode(self.public_key).decode(),
            not_before_ns=self.created_ns,
        )


def generate_file(path: Path, now_ns: int) -> Signer:
    """A new key, written to ``path`` (which must not exist) mode 0600, fsynced."""
    path.parent.mkdir(parents=True, exist_ok=True, mode=0o700)
    key = SigningKey.generate()
    body = msgspec.json.encode(
        _SecretFile(
            format=SECRET_FORMAT,
            seed=base64.b64encode(bytes(key)).decode(),
            created_ns=now_ns,
        )
    )
    # O_EXCL: two starts racing on a fresh data dir never both write a key.
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    try:
        with os.fdopen(fd, "wb") as fh:
            fh.write(body + b"\n")
            fh.flush()
            os.fsync(fh.fileno())
    except BaseException:
        # A full disk must not leave an empty key file that every later start
        # refuses as damaged: the key was never used, remove it.
        path.unlink(missing_ok=True)
        raise
    dir_fd = os.open(path.parent, os.O_RDONLY)
    try:
        os.fsync(dir_fd)
    finally:
        os.close(dir_fd)
    return Signer(key=key, key_id=key_id_of(bytes(key.verify_key)), created_ns=now_ns)


def load_or_create(path: Path, now_ns: int) -> Signer:
    """Load the signing key at ``path``, generating it when the file is absent."""
    if not path.exists():
        generate_file(path, now_ns)
    return load(path)


def load(path: Path) -> Signer:
    try:
        st = path.stat()
    except FileNotFoundError:
        raise KeyFileError(f"{path}: no such key file") from None
    if st.st_mode & (stat.S_IRWXG | stat.S_IRWXO):
        raise KeyFileError(
            f"{path}: permissions {stat.S_IMODE(st.st_mode):04o} are too open; "
            "the signing key must be 0600"
        )
    try:
        secret = msgspec.json.decode(path.read_bytes(), type=_SecretFile)
        if secret.format != SECRET_FORMAT:
            raise KeyFileError(f"{path}: unknown key format {secret.format!r}")
        seed = base64.b64decode(secret.seed, validate=True)
        key = SigningKey(seed)
    except (msgspec.DecodeError, ValueError, TypeError) as exc:
        raise KeyFileError(f"{path}: not a knhkd signing key ({exc})") from None
    return Signer(key=key, key_id=key_id_of(bytes(key.verify_key)), created_ns=secret.created_ns)


class Verifier:
    """Public keys by key id, with validity windows: all an offline verifier holds."""

    def __init__(self, keyring: PublicKeyring) -> None:
        self._keys: dict[str, tuple[VerifyKey, PublicKeyEntry]] = {}
        for entry in keyring.keys:
            try:
                raw = base64.b64decode(entry.public_key, validate=True)
                key = VerifyKey(raw)
            except (ValueError, TypeError) as exc:
                raise KeyFileError(f"key {entry.key_id}: not an ed25519 public key") from exc
            if key_id_of(raw) != entry.key_id:
                raise KeyFileError(f"key {entry.key_id}: id does not match its public key")
            self._keys[entry.key_id] = (key, entry)

    def verify(
        self, key_id: str, message: bytes, signature: bytes, *, at_ns: int | None = None
    ) -> bool:
        """True when ``key_id`` signed ``message``, and was valid at ``at_ns`` if given."""
        found = self._keys.get(key_id)
        if found is None or (at_ns is not None and not self.valid_at(key_id, at_ns)):
            return False
        key, _ = found
        try:
            key.verify(message, signature)
        except (BadSignatureError, ValueError, TypeError):
            return False
        return True

    def valid_at(self, key_id: str, at_ns: int) -> bool:
        """Is ``key_id`` known, and ``at_ns`` inside its validity window?"""
        found = self._keys.get(key_id)
        if found is None:
            return False
        entry = found[1]
        return entry.not_before_ns <= at_ns and (
            entry.not_after_ns is None or at_ns <= entry.not_after_ns
        )

    def public_keys(self) -> dict[str, bytes]:
        return {kid: bytes(key) for kid, (key, _) in self._keys.items()}

    @classmethod
    def from_json(cls, data: bytes) -> Verifier:
        try:
            ring = msgspec.json.decode(data, type=PublicKeyring)
        except (msgspec.DecodeError, msgspec.ValidationError) as exc:
            raise KeyFileError(f"not a knhkd public keyring: {exc}") from None
        return cls(ring)


def verify_with(public_key: bytes, message: bytes, signature: bytes) -> bool:
    try:
        VerifyKey(public_key).verify(message, signature)
    except (BadSignatureError, ValueError, TypeError):
        return False
    return True


def keyring_of(*signers: Signer) -> PublicKeyring:
    return PublicKeyring(format="knhkd-keyring-v1", keys=[s.public_entry() for s in signers])
