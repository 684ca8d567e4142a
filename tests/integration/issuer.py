"""An OIDC issuer made in the test: keys generated here, a JWKS file (or
document) of their public halves, and tokens minted with PyJWT per role.
Nothing of knhkd is used to make them."""

from __future__ import annotations

import base64
import hashlib
import hmac
import json
import time
from pathlib import Path
from typing import Any

import jwt
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ed25519
from jwt.algorithms import OKPAlgorithm

AUDIENCE = "knhkd-api"

# Every token and private key made by any Issuer of this test session: the
# session's last check (conftest.py ``no_secret_in_any_daemon_log``) greps
# every daemon log for them.
MINTED: list[str] = []
PRIVATE_KEYS: list[bytes] = []


def b64url(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode()


class Issuer:
    def __init__(self, name: str = "https://idp.test/realms/knhkd", kid: str = "k1") -> None:
        self.name = name
        self.keys: dict[str, ed25519.Ed25519PrivateKey] = {}
        self.kid = kid
        self.add_key(kid)

    def add_key(self, kid: str) -> ed25519.Ed25519PrivateKey:
        key = ed25519.Ed25519PrivateKey.generate()
        self.keys[kid] = key
        PRIVATE_KEYS.append(
            key.private_bytes(
                serialization.Encoding.Raw,
                serialization.PrivateFormat.Raw,
                serialization.NoEncryption(),
            )
        )
        return key

    def jwks(self, kids: list[str] | None = None) -> dict[str, Any]:
        out = []
        for kid in kids if kids is not None else list(self.keys):
            jwk = json.loads(OKPAlgorithm.to_jwk(self.keys[kid].public_key()))
            out.append({**jwk, "kid": kid, "alg": "EdDSA", "use": "sig"})
        return {"keys": out}

    def write_jwks(self, path: Path, kids: list[str] | None = None) -> Path:
        path.write_text(json.dumps(self.jwks(kids)))
        return path

    def public_pem(self, kid: str | None = None) -> bytes:
        public = self.keys[kid or self.kid].public_key()
        return public.public_bytes(
            serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo
        )

    def private_key_bytes(self) -> list[bytes]:
        """Every private key's raw bytes (a test greps logs for them)."""
        return [
            k.private_bytes(
                serialization.Encoding.Raw,
                serialization.PrivateFormat.Raw,
                serialization.NoEncryption(),
            )
            for k in self.keys.values()
        ]

    def config(self, *, jwks_file: Path | None = None, jwks_uri: str = "", **extra: Any) -> str:
        lines = [
            "[[auth.issuers]]",
            f'issuer = "{self.name}"',
            f'audiences = ["{AUDIENCE}"]',
            f'jwks_file = "{jwks_file}"' if jwks_file else f'jwks_uri = "{jwks_uri}"',
        ]
        lines += [f"{k} = {json.dumps(v)}" for k, v in extra.items()]
        return "\n".join(lines) + "\n"

    def claims(self, *roles: str, **override: Any) -> dict[str, Any]:
        """Claims of a token for ``roles``; an override of None drops a claim."""
        now = int(time.time())
        claims: dict[str, Any] = {
            "iss": self.name,
            "aud": AUDIENCE,
            "sub": "user-" + "-".join(roles) if roles else "user",
            "iat": now,
            "exp": now + 600,
            "roles": list(roles),
        }
        claims.update(override)
        return {k: v for k, v in claims.items() if v is not None}

    def token(self, *roles: str, kid: str | None = None, **override: Any) -> str:
        kid = kid or self.kid
        token = jwt.encode(
            self.claims(*roles, **override),
            self.keys[kid],
            algorithm="EdDSA",
            headers={"kid": kid},
        )
        MINTED.append(token)
        return token

    def hs256_with_public_key(self, *roles: str) -> str:
        """The 'public key as HMAC secret' forgery (made by hand: PyJWT refuses to)."""
        header = b64url(json.dumps({"alg": "HS256", "typ": "JWT", "kid": self.kid}).encode())
        payload = b64url(json.dumps(self.claims(*roles)).encode())
        signing_input = f"{header}.{payload}".encode()
        sig = hmac.new(self.public_pem(), signing_input, hashlib.sha256).digest()
        return f"{header}.{payload}.{b64url(sig)}"

    def unsigned(self, *roles: str) -> str:
        header = b64url(json.dumps({"alg": "none", "typ": "JWT", "kid": self.kid}).encode())
        return f"{header}.{b64url(json.dumps(self.claims(*roles)).encode())}."


def flip_signature(token: str) -> str:
    head, payload, sig = token.split(".")
    raw = bytearray(base64.urlsafe_b64decode(sig + "=" * (-len(sig) % 4)))
    raw[0] ^= 0x01
    return f"{head}.{payload}.{b64url(bytes(raw))}"
