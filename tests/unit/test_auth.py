"""knhkd/auth in-process: the token cache, key sets (what is refused in a
JWKS, retry with backoff, rate-limited refresh), roles, the rate limiter."""

from __future__ import annotations

import json
import time
from pathlib import Path

import pytest

from knhkd import config
from knhkd.auth.jwks import IssuerKeys, KeySetError, parse_jwks
from knhkd.auth.ratelimit import RateLimiter
from knhkd.auth.roles import ROLE_PERMISSIONS, permissions_of
from knhkd.auth.tokens import KeyNeeded, TokenRejected, Verifier, capacities_from, roles_from
from knhkd.model import PERMISSIONS, ROLES, Principal
from tests.integration.issuer import Issuer


def _setup(tmp_path: Path, **extra: object) -> tuple[Issuer, Verifier, IssuerKeys]:
    iss = Issuer()
    jwks = iss.write_jwks(tmp_path / "jwks.json")
    raw = {
        "auth": {
            "issuers": [
                {
                    "issuer": iss.name,
                    "audiences": ["knhkd-api"],
                    "jwks_file": str(jwks),
                    **extra,
                }
            ]
        }
    }
    cfg = config.build(raw, env={})
    keys = IssuerKeys(cfg.auth.issuers[0])
    assert keys.refresh(time.monotonic())
    return iss, Verifier(cfg.auth, {iss.name: keys}), keys


def test_a_verified_token_is_cached_until_it_expires(tmp_path: Path) -> None:
    iss, verifier, _ = _setup(tmp_path)
    now = time.time()
    token = iss.token("operator", exp=int(now) + 100)
    p = verifier.verify(token, now)
    assert p.roles == ("operator",) and p.may("PROMOTE_SNAPSHOTS") and not p.may("INGEST")
    assert verifier.verify(token, now + 1) is p and (verifier.hits, verifier.misses) == (1, 1)
    # Past exp (+ skew) the cached entry is not used: a fresh check refuses it.
    with pytest.raises(TokenRejected, match="expired"):
        verifier.verify(token, now + 200)


def test_the_cache_is_bounded(tmp_path: Path) -> None:
    iss, verifier, _ = _setup(tmp_path)
    verifier.cfg = config.AuthConfig(token_cache_size=3)
    now = time.time()
    for i in range(10):
        verifier.verify(iss.token("observer", sub=f"u{i}"), now)
    assert len(verifier._cache) == 3


def test_unknown_kid_asks_for_a_refresh_and_refreshes_are_rate_limited(tmp_path: Path) -> None:
    iss, verifier, keys = _setup(tmp_path, jwks_min_refresh_s=60.0)
    iss.add_key("k2")
    found = verifier.verify(iss.token("observer", kid="k2"), time.time())
    assert found == KeyNeeded(iss.name)
    t = time.monotonic()
    assert not keys.may_refresh(t)
    assert keys.may_refresh(t + 61)
    iss.write_jwks(tmp_path / "jwks.json")
    assert keys.refresh(t + 61)  # changed
    assert isinstance(verifier.verify(iss.token("observer", kid="k2"), time.time()), Principal)


def test_a_jwks_keeps_only_asymmetric_public_signature_keys() -> None:
    iss = Issuer()
    good = iss.jwks()["keys"][0]
    doc = {
        "keys": [
            good,
            {"kty": "oct", "k": "c2VjcmV0", "kid": "hmac"},
            {**good, "kid": "enc", "use": "enc"},
            {**good, "kid": "priv", "d": "AAAA"},
            {"kty": "OKP", "crv": "X448", "x": "AA", "kid": "odd"},
        ]
    }
    found = parse_jwks(json.dumps(doc).encode(), ("EdDSA",), source="t")
    assert list(found.keys) == ["k1"]
    with pytest.raises(KeySetError, match="no usable"):
        parse_jwks(json.dumps(doc).encode(), ("RS256",), source="t")
    with pytest.raises(KeySetError, match="not JSON"):
        parse_jwks(b"{nope", ("EdDSA",), source="t")


def test_a_jwks_uri_is_retried_with_backoff_and_failure_keeps_the_old_keys() -> None:
    iss = Issuer()
    doc = json.dumps(iss.jwks()).encode()
    answers: list[bytes | OSError] = [OSError("refused"), OSError("refused"), doc]
    sleeps: list[float] = []

    def fetcher(uri: str, timeout: float) -> bytes:
        a = answers.pop(0)
        if isinstance(a, OSError):
            raise a
        return a

    cfg = config.IssuerConfig(
        issuer=iss.name, audiences=("a",), jwks_uri="https://idp.test/jwks", jwks_attempts=3
    )
    keys = IssuerKeys(cfg, fetcher=fetcher, sleep=sleeps.append)
    assert keys.stale(0.0)
    assert keys.refresh(0.0) and sleeps == [0.5, 1.0] and list(keys.keys) == ["k1"]
    answers[:] = [OSError("down")] * 3
    assert not keys.refresh(100.0) and list(keys.keys) == ["k1"]


def test_roles_come_from_a_list_or_a_string_through_the_map() -> None:
    assert roles_from(["operator", "nonsense", "operator"], {}) == ("operator",)
    assert roles_from("observer analyst", {}) == ("observer", "analyst")
    assert roles_from(["kc-admins"], {"kc-admins": "administrator"}) == ("administrator",)
    assert roles_from(["operator"], {"kc-admins": "administrator"}) == ()
    assert roles_from(42, {}) == ()


def test_signing_capacities_come_from_the_signer_claim_only_well_formed() -> None:
    assert capacities_from(["cfo@finance", "@compliance", "auditor", "cfo@finance"]) == (
        "cfo@finance",
        "@compliance",
        "auditor",
    )
    assert capacities_from("cfo@finance  x@y") == ("cfo@finance", "x@y")
    assert capacities_from(["a:b@c", "bad unit", "@", "", 5, "r@u@v"]) == ()
    assert capacities_from(None) == () and capacities_from({"cfo": "finance"}) == ()


def test_every_role_has_an_entry_and_administrator_may_do_everything() -> None:
    assert set(ROLE_PERMISSIONS) == set(ROLES)
    admin = Principal("i", "s", ("administrator",), permissions_of(["administrator"]))
    assert all(admin.may(p) for p in PERMISSIONS)


@pytest.mark.parametrize(
    ("raw", "key"),
    [
        ({"http": {"bind": "0.0.0.0:8080"}}, "http.bind"),
        (
            {
                "auth": {
                    "issuers": [
                        {
                            "issuer": "i",
                            "audiences": ["a"],
                            "jwks_file": "f",
                            "algorithms": ["HS256"],
                        }
                    ]
                }
            },
            "auth.issuers[0].algorithms",
        ),
        (
            {"auth": {"issuers": [{"issuer": "i", "audiences": ["a"]}]}},
            "auth.issuers[0]",
        ),
        (
            {
                "auth": {
                    "issuers": [
                        {"issuer": "i", "audiences": ["a"], "jwks_uri": "http://idp.example/jwks"}
                    ]
                }
            },
            "auth.issuers[0].jwks_uri",
        ),
        ({"auth": {"anonymous_permissions": ["SUDO"]}}, "auth.anonymous_permissions[0]"),
        (
            {"auth": {"issuers": [{"issuer": "knhkctl", "audiences": ["a"], "jwks_file": "f"}]}},
            "auth.issuers[0].issuer",
        ),
        (
            {
                "auth": {
                    "issuers": [
                        {"issuer": "i", "audiences": ["a"], "jwks_file": "f", "signer_claim": "a."}
                    ]
                }
            },
            "auth.issuers[0].signer_claim",
        ),
        ({"auth": {"phi_max_token_age_s": 0}}, "auth.phi_max_token_age_s"),
    ],
)
def test_auth_configuration_errors_name_the_key(raw: dict[str, object], key: str) -> None:
    with pytest.raises(config.ConfigError) as info:
        config.build(raw, env={})
    assert info.value.key == key


def test_rate_limiter_buckets_overrides_and_bound() -> None:
    cfg = config.RateLimitConfig(
        rate_per_s=1.0,
        burst=2,
        max_principals=2,
        overrides=(config.RateLimitOverride(role="producer", rate_per_s=0.0),),
    )
    rl = RateLimiter(cfg)
    a = Principal("i", "a")
    assert rl.take(a, 0.0) == 0 and rl.take(a, 0.0) == 0
    assert rl.take(a, 0.0) == pytest.approx(1.0)
    assert rl.take(a, 1.0) == 0  # refilled one
    producer = Principal("i", "p", ("producer",))
    assert all(rl.take(producer, 0.0) == 0 for _ in range(100))  # override: no limit
    for name in "bcd":
        rl.take(Principal("i", name), 2.0)
    assert len(rl) == 2
