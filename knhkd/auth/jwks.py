"""An issuer's signing keys (RFC 7517 JWK Set), from a file or a URI.

Guarantees:
- Only verification keys an issuer's ``algorithms`` allow are kept: a
  symmetric key (``kty: oct``), an encryption key (``use: enc``), a key whose
  algorithm is not allowed or that PyJWT cannot read is skipped with a warning
  naming its ``kid`` (never its material). A token can therefore only be
  checked with an asymmetric key of an allowed algorithm.
- ``refresh`` never raises: a file that cannot be read or a URI that cannot
  be fetched (after ``jwks_attempts`` tries, backoff 0.5 s doubling) is logged
  and the keys already held stay in force, so an offline site keeps verifying
  with what it has. A set that parses to no usable key is such a failure too.
- Refreshes are rate-limited by the caller's clock: ``may_refresh`` is false
  within ``jwks_min_refresh_s`` of the last attempt, so a flood of tokens with
  unknown key ids costs one fetch.
- A URI is fetched with a timeout, at most ``MAX_JWKS_BYTES``, and no
  redirect followed (config.py holds the URI to https, or http to loopback).

Must never: log or expose key material; block the event loop (``refresh``
does file or network I/O: the HTTP edge calls it on a worker thread).
"""

from __future__ import annotations

import hashlib
import json
import logging
import time
import urllib.request
from collections.abc import Callable, Mapping
from typing import Any, NamedTuple

from jwt import PyJWK
from jwt.exceptions import PyJWKError, PyJWTError

from knhkd.config import ConfigError, IssuerConfig, secret_path

log = logging.getLogger("knhkd.auth")

MAX_JWKS_BYTES = 1 << 20
BACKOFF_INITIAL_S = 0.5


class KeySetError(Exception):
    """A key set could not be read or holds no usable key."""


class KeySet(NamedTuple):
    """The usable keys of a JWK Set by ``kid`` ("" for a key with none), and a
    digest of their JWKs, which changes iff a key does."""

    keys: dict[str, PyJWK]
    digest: str


def parse_jwks(data: bytes, algorithms: tuple[str, ...], *, source: str) -> KeySet:
    """The usable verification keys of a JWK Set."""
    try:
        doc = json.loads(data)
    except (ValueError, UnicodeDecodeError):
        raise KeySetError(f"{source}: not JSON") from None
    entries = doc.get("keys") if isinstance(doc, dict) else None
    if not isinstance(entries, list):
        raise KeySetError(f"{source}: not a JWK Set (no 'keys' list)")
    keys: dict[str, PyJWK] = {}
    kept: list[Any] = []
    for entry in entries:
        if not isinstance(entry, dict):
            continue
        kid = entry.get("kid", "")
        kid = kid if isinstance(kid, str) else ""
        why = _unusable(entry)
        if why is None:
            try:
                key = PyJWK(entry)
            except (PyJWKError, PyJWTError, ValueError, TypeError):
                why = "not a key PyJWT can read"
            else:
                if key.algorithm_name in algorithms:
                    keys[kid] = key
                    kept.append(entry)
                    continue
                why = f"algorithm {key.algorithm_name} not allowed"
        log.warning("%s: key %r skipped: %s", source, kid, why)
    if not keys:
        raise KeySetError(f"{source}: no usable verification key")
    canonical = json.dumps(kept, sort_keys=True, separators=(",", ":")).encode()
    return KeySet(keys, hashlib.sha256(canonical).hexdigest())


# JWK members that hold private (or symmetric) key material (RFC 7518 §6).
PRIVATE_MEMBERS = frozenset({"d", "p", "q", "dp", "dq", "qi", "oth", "k"})


def _unusable(entry: Mapping[str, Any]) -> str | None:
    if entry.get("kty") == "oct":
        return "a symmetric key (HMAC is never accepted)"
    if PRIVATE_MEMBERS & entry.keys():
        return "it holds private key material (publish public keys only)"
    if entry.get("use", "sig") != "sig":
        return "not a signature key"
    return None


class _NoRedirect(urllib.request.HTTPRedirectHandler):
    """A redirect is an error: it could lead from https to http."""

    def redirect_request(self, *args: Any, **kwargs: Any) -> None:
        return None


_OPENER = urllib.request.build_opener(_NoRedirect)


def fetch(uri: str, timeout_s: float) -> bytes:
    req = urllib.request.Request(uri, headers={"Accept": "application/json"})
    with _OPENER.open(req, timeout=timeout_s) as resp:
        data: bytes = resp.read(MAX_JWKS_BYTES + 1)
    if len(data) > MAX_JWKS_BYTES:
        raise KeySetError(f"{uri}: larger than {MAX_JWKS_BYTES} bytes")
    return data


class IssuerKeys:
    """The keys in force for one issuer, and when they were last (re)loaded."""

    def __init__(
        self,
        cfg: IssuerConfig,
        *,
        fetcher: Callable[[str, float], bytes] = fetch,
        sleep: Callable[[float], None] = time.sleep,
    ) -> None:
        self.cfg = cfg
        self.keys: dict[str, PyJWK] = {}
        self.digest = ""
        self.loaded_at: float | None = None
        self.last_attempt: float | None = None
        self._fetch = fetcher
        self._sleep = sleep

    @property
    def source(self) -> str:
        return self.cfg.jwks_file or self.cfg.jwks_uri

    def get(self, kid: str | None) -> PyJWK | None:
        """The key a token's ``kid`` names; a token without one may use the
        issuer's only key."""
        if kid is None:
            return next(iter(self.keys.values())) if len(self.keys) == 1 else None
        return self.keys.get(kid)

    def may_refresh(self, now: float) -> bool:
        last = self.last_attempt
        return last is None or now - last >= self.cfg.jwks_min_refresh_s

    def stale(self, now: float) -> bool:
        """A URI's keys are due for a fetch (never fetched, or too old)."""
        if not self.cfg.jwks_uri:
            return False
        loaded = self.loaded_at
        return (loaded is None or now - loaded >= self.cfg.jwks_refresh_s) and self.may_refresh(now)

    def load(self) -> KeySet:
        """Read the set now (one attempt for a file, ``jwks_attempts`` for a
        URI); raises ``KeySetError``."""
        if self.cfg.jwks_file:
            try:
                # A path, or credential:NAME (systemd LoadCredential=).
                data = secret_path("jwks_file", self.cfg.jwks_file).read_bytes()
            except ConfigError as exc:
                raise KeySetError(exc.message) from None
            except OSError as exc:
                raise KeySetError(f"{self.cfg.jwks_file}: {exc.strerror}") from None
            return parse_jwks(data, self.cfg.algorithms, source=self.cfg.jwks_file)
        delay = BACKOFF_INITIAL_S
        for attempt in range(1, self.cfg.jwks_attempts + 1):
            try:
                data = self._fetch(self.cfg.jwks_uri, self.cfg.jwks_timeout_s)
                return parse_jwks(data, self.cfg.algorithms, source=self.cfg.jwks_uri)
            except (OSError, KeySetError, ValueError) as exc:
                if attempt == self.cfg.jwks_attempts:
                    raise KeySetError(f"{self.cfg.jwks_uri}: {exc}") from None
                self._sleep(delay)
                delay *= 2
        raise AssertionError("unreachable")  # pragma: no cover

    def refresh(self, now: float) -> bool:
        """Reload; True iff the set of keys changed. Never raises."""
        self.last_attempt = now
        try:
            found = self.load()
        except KeySetError as exc:
            log.warning(
                "issuer %s: keys not refreshed, keeping %d: %s",
                self.cfg.issuer,
                len(self.keys),
                exc,
            )
            return False
        changed = found.digest != self.digest
        # One assignment each: the event loop reads ``keys`` while a worker
        # thread refreshes, and sees the old dict or the new one.
        self.keys, self.digest, self.loaded_at = found.keys, found.digest, now
        if changed:
            log.info("issuer %s: %d key(s) from %s", self.cfg.issuer, len(found.keys), self.source)
        return changed
