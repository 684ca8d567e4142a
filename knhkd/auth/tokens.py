"""Bearer-token (JWT) verification against the configured OIDC issuers.

Library: PyJWT (with ``cryptography``), chosen over joserfc after trying both
(EdDSA, ES256 and RS256 tokens against a JWKS, 2026-12): both verify all
three at the same cost (~6–15 k verifications/s on one core) and are
maintained and typed; PyJWT makes the algorithm allow-list a required
argument of ``decode``, refuses a token whose ``alg`` differs from the
algorithm of the JWK it is checked with (an ES256 token against an EdDSA key,
an HS256 token against any asymmetric key: the "public key as HMAC secret"
attack fails twice), checks ``aud`` and ``iss`` and requires claims, and
parses JWKs (``PyJWK``) without fetching anything itself. (``exp``, ``nbf``
and ``iat`` are checked here, against the caller's ``now``: PyJWT would read
the clock itself.)
joserfc needs a separate claims registry for the same checks and warns on
every ``EdDSA`` token (RFC 9864 deprecates the name, which Keycloak, Okta and
Azure AD still issue).

Guarantees:
- A token is accepted only if: its ``alg`` is asymmetric and in its issuer's
  ``algorithms``; its ``iss`` is a configured issuer; its ``kid`` names a key
  of *that* issuer's set (a key of another issuer is an unknown key); the
  signature verifies with that key; ``exp``, ``iat`` and ``sub`` are present;
  ``exp`` and ``nbf`` hold at ``now`` within ``clock_skew_s``; ``iat`` is
  not in the future nor older than ``max_token_age_s``; ``aud`` names one of the
  issuer's ``audiences``; and the ``roles_claim`` is present. Anything else
  raises ``TokenRejected`` (an ``errors.Unauthorized``: 401 with an
  ``invalid_token`` challenge) whose ``reason`` is one of this module's fixed
  texts (safe to log and to send: never the token, never a library message,
  which may quote the token's parts).
- An unknown ``kid`` is answered with ``KeyNeeded`` so the caller can
  refresh that issuer's keys once (rate-limited) and try again; if it is
  still unknown, the caller refuses with ``UNKNOWN_KEY``.
- Verified tokens are cached by SHA-256 of the token (the token itself is not
  kept) until the earliest of ``exp`` and ``iat + max_token_age_s`` (plus the
  skew): what a fresh check would still accept. The cache holds at most
  ``token_cache_size`` entries (least recently used dropped) and is emptied
  whenever an issuer's key set changes.

Must never: log a token or key material; accept ``none`` or an HMAC
algorithm; read the clock (``now`` is given).
"""

from __future__ import annotations

import hashlib
import re
from collections import OrderedDict
from collections.abc import Mapping
from typing import Any, NamedTuple

import jwt
from jwt import exceptions as jwterr

from knhkd.auth.jwks import IssuerKeys
from knhkd.auth.roles import permissions_of
from knhkd.config import ASYMMETRIC_ALGORITHMS, AuthConfig, IssuerConfig
from knhkd.errors import Unauthorized
from knhkd.model import CAPACITY_PATTERN, ROLES, Principal, Role

# Longest token looked at; a JWT with a large roles claim is a few KiB.
MAX_TOKEN_BYTES = 16_384
MAX_SUBJECT = 256
REALM = 'Bearer realm="knhkd"'


class TokenRejected(Unauthorized):
    """The token does not authenticate anyone: 401 with an ``invalid_token``
    challenge; ``reason`` is a fixed text."""

    def __init__(self, reason: str) -> None:
        super().__init__(
            f"authentication failed: {reason}",
            challenge=f'{REALM}, error="invalid_token", error_description="{reason}"',
        )
        self.reason = reason


class KeyNeeded(NamedTuple):
    """``verify``'s answer when the token names a key its issuer's set does
    not hold (yet): refresh that issuer's keys, then ask again."""

    issuer: str


# PyJWT's refusals → our reasons (most specific first: they subclass each other).
_REASONS: tuple[tuple[type[Exception], str], ...] = (
    (jwterr.InvalidAudienceError, "wrong audience"),
    (jwterr.InvalidIssuerError, "wrong issuer"),
    (jwterr.InvalidSignatureError, "bad signature"),
    (jwterr.InvalidAlgorithmError, "algorithm not allowed"),
    (jwterr.DecodeError, "malformed token"),
)
_REQUIRED_CLAIMS = ("exp", "iat", "sub", "iss", "aud")


def claim_at(claims: Mapping[str, Any], path: str) -> Any:
    """The value at a dotted claim path, or None."""
    value: Any = claims
    for part in path.split("."):
        if not isinstance(value, Mapping) or part not in value:
            return None
        value = value[part]
    return value


def _listed(value: Any) -> list[Any]:
    """A claim holding names: a list, or one space-separated string."""
    if isinstance(value, str):
        return value.split()
    return value if isinstance(value, list) else []


def roles_from(value: Any, role_map: Mapping[str, Role]) -> tuple[Role, ...]:
    """Role names in a roles claim (a list of strings, or one space-separated
    string); values naming no role are ignored."""
    found: list[Role] = []
    for name in _listed(value):
        if not isinstance(name, str):
            continue
        role = role_map.get(name) if role_map else _as_role(name)
        if role is not None and role not in found:
            found.append(role)
    return tuple(found)


_CAPACITY = re.compile(CAPACITY_PATTERN)
# A token's signer claim counts at most this many entries.
MAX_CAPACITIES = 16


def capacities_from(value: Any) -> tuple[str, ...]:
    """What a signer claim (a list of strings, or one space-separated string)
    lets the principal sign as: its ``role@unit``, ``@unit`` and ``role``
    entries, deduplicated, in order; anything else is ignored."""
    found: list[str] = []
    for name in _listed(value):
        ok = isinstance(name, str) and len(name) <= 256 and _CAPACITY.fullmatch(name)
        if ok and name not in found:
            found.append(name)
    return tuple(found[:MAX_CAPACITIES])


def _as_role(name: str) -> Role | None:
    for role in ROLES:
        if role == name:
            return role
    return None


class Verifier:
    """Checks bearer tokens against the issuers of one ``AuthConfig``."""

    def __init__(self, cfg: AuthConfig, keys: Mapping[str, IssuerKeys]) -> None:
        self.cfg = cfg
        self.issuers: dict[str, IssuerConfig] = {i.issuer: i for i in cfg.issuers}
        self.keys = keys
        self._cache: OrderedDict[bytes, tuple[Principal, float]] = OrderedDict()
        self.hits = 0
        self.misses = 0

    def forget(self) -> None:
        """Drop every cached verification (an issuer's keys changed)."""
        self._cache.clear()

    def verify(self, token: str, now: float) -> Principal | KeyNeeded:
        """The principal a token authenticates at ``now`` (Unix seconds), or
        which issuer's keys to refresh first; raises ``TokenRejected``."""
        if len(token) > MAX_TOKEN_BYTES:
            raise TokenRejected("token too large")
        digest = hashlib.sha256(token.encode()).digest()
        hit = self._cache.get(digest)
        if hit is not None:
            if now < hit[1]:
                self._cache.move_to_end(digest)
                self.hits += 1
                return hit[0]
            del self._cache[digest]
        self.misses += 1
        checked = self._check(token, now)
        if isinstance(checked, KeyNeeded):
            return checked
        principal, until = checked
        self._cache[digest] = (principal, until)
        if len(self._cache) > self.cfg.token_cache_size:
            self._cache.popitem(last=False)
        return principal

    def _check(self, token: str, now: float) -> tuple[Principal, float] | KeyNeeded:
        try:
            header = jwt.get_unverified_header(token)
            unverified = jwt.decode(token, options={"verify_signature": False})
        except jwterr.PyJWTError:
            raise TokenRejected("malformed token") from None
        alg = header.get("alg")
        if alg not in ASYMMETRIC_ALGORITHMS:
            raise TokenRejected("algorithm not allowed")
        iss = unverified.get("iss")
        issuer = self.issuers.get(iss) if isinstance(iss, str) else None
        if issuer is None:
            raise TokenRejected("unknown issuer")
        if alg not in issuer.algorithms:
            raise TokenRejected("algorithm not allowed")
        kid = header.get("kid")
        if kid is not None and not isinstance(kid, str):
            raise TokenRejected("malformed token")
        keys = self.keys.get(issuer.issuer)
        key = keys.get(kid) if keys is not None else None
        if key is None:
            return KeyNeeded(issuer.issuer)
        try:
            claims = jwt.decode(
                token,
                key,
                algorithms=list(issuer.algorithms),
                audience=list(issuer.audiences),
                issuer=issuer.issuer,
                # Times are checked below against the caller's ``now``: PyJWT
                # would read the clock itself.
                options={
                    "require": list(_REQUIRED_CLAIMS),
                    "verify_exp": False,
                    "verify_nbf": False,
                    "verify_iat": False,
                },
            )
        except jwterr.MissingRequiredClaimError as exc:
            # exc.claim is one of _REQUIRED_CLAIMS: our own text.
            raise TokenRejected(f"missing claim {exc.claim}") from None
        except jwterr.PyJWTError as exc:
            raise TokenRejected(_reason(exc)) from None
        return self._principal(issuer, claims, now)

    @staticmethod
    def _principal(
        issuer: IssuerConfig, claims: Mapping[str, Any], now: float
    ) -> tuple[Principal, float]:
        iat, exp, nbf, sub = claims["iat"], claims["exp"], claims.get("nbf"), claims["sub"]
        if not all(_is_time(t) for t in (iat, exp)) or not (nbf is None or _is_time(nbf)):
            raise TokenRejected("malformed token")
        skew = issuer.clock_skew_s
        if now >= exp + skew:
            raise TokenRejected("token expired")
        if now + skew < iat or (nbf is not None and now + skew < nbf):
            raise TokenRejected("token not yet valid")
        if now - iat > issuer.max_token_age_s + skew:
            raise TokenRejected("token too old")
        if not isinstance(sub, str) or not 0 < len(sub) <= MAX_SUBJECT:
            raise TokenRejected("invalid subject")
        value = claim_at(claims, issuer.roles_claim)
        if value is None:
            raise TokenRejected("no roles claim")
        roles = roles_from(value, issuer.role_map)
        principal = Principal(
            issuer=issuer.issuer,
            subject=sub,
            roles=roles,
            permissions=permissions_of(roles),
            signing_as=capacities_from(claim_at(claims, issuer.signer_claim)),
            issued_at=float(iat),
        )
        until = min(float(exp), float(iat) + issuer.max_token_age_s) + issuer.clock_skew_s
        return principal, until


UNKNOWN_KEY = "unknown key id"


def refused(reason: str) -> Unauthorized:
    """The 401 for one of this module's reasons (``UNKNOWN_KEY`` for a key
    still unknown after a refresh)."""
    return TokenRejected(reason)


def _is_time(value: Any) -> bool:
    return isinstance(value, int | float) and not isinstance(value, bool)


def _reason(exc: Exception) -> str:
    for kind, reason in _REASONS:
        if isinstance(exc, kind):
            return reason
    return "invalid token"
