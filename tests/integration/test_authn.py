"""Bearer tokens at the HTTP door, through the real daemon: an issuer made in
the test (keys generated here, a JWKS file in the temp dir, another served
over 127.0.0.1), every kind of bad token refused with 401 and a
``WWW-Authenticate`` challenge, and neither token nor key in the log."""

from __future__ import annotations

import json
import threading
import time
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

import httpx
import pytest

from tests.integration.conftest import RunningDaemon, free_port
from tests.integration.issuer import Issuer, flip_signature

pytestmark = pytest.mark.integration

READ = "/api/v1/snapshots/current"


class JwksServer:
    """A JWKS document served on 127.0.0.1, counting the fetches."""

    def __init__(self, issuer: Issuer, kids: list[str]) -> None:
        self.doc = json.dumps(issuer.jwks(kids)).encode()
        self.fetches = 0
        outer = self

        class Handler(BaseHTTPRequestHandler):
            def do_GET(self) -> None:
                outer.fetches += 1
                self.send_response(200)
                self.send_header("content-type", "application/json")
                self.send_header("content-length", str(len(outer.doc)))
                self.end_headers()
                self.wfile.write(outer.doc)

            def log_message(self, *args: Any) -> None:
                pass

        self.server = ThreadingHTTPServer(("127.0.0.1", free_port()), Handler)
        self.uri = f"http://127.0.0.1:{self.server.server_address[1]}/jwks.json"
        threading.Thread(target=self.server.serve_forever, daemon=True).start()


@pytest.fixture
def jwks_server() -> Iterator[tuple[Issuer, JwksServer]]:
    other = Issuer(name="https://other.test", kid="b1")
    other.add_key("b2")
    server = JwksServer(other, ["b1"])
    yield other, server
    server.server.shutdown()


def _get(d: RunningDaemon, token: str | None, *, raw: str | None = None) -> httpx.Response:
    headers = {"Authorization": raw if raw is not None else f"Bearer {token}"}
    if token is None and raw is None:
        headers = {}
    return httpx.get(d.base + READ, headers=headers, timeout=10.0)


def test_every_bad_token_is_401_with_a_challenge(
    make_daemon: Any, tmp_path: Path, jwks_server: tuple[Issuer, JwksServer]
) -> None:
    other, server = jwks_server
    d: RunningDaemon = make_daemon(
        other.config(jwks_uri=server.uri, jwks_min_refresh_s=2.0), auth=True
    )
    iss = d.issuer
    assert iss is not None
    stranger = Issuer(name="https://stranger.test")
    now = int(time.time())
    cases: dict[str, tuple[str | None, str]] = {
        "malformed": ("not.a.jwt", "malformed token"),
        "alg none": (iss.unsigned("administrator"), "algorithm not allowed"),
        "HS256 with the public key": (
            iss.hs256_with_public_key("administrator"),
            "algorithm not allowed",
        ),
        "bad signature": (flip_signature(iss.token("administrator")), "bad signature"),
        "expired": (iss.token("observer", exp=now - 120, iat=now - 300), "token expired"),
        "nbf in the future": (iss.token("observer", nbf=now + 600), "token not yet valid"),
        "iat older than the max age": (
            iss.token("observer", iat=now - 7200, exp=now + 600),
            "token too old",
        ),
        "wrong audience": (iss.token("observer", aud="someone-else"), "wrong audience"),
        "wrong issuer": (stranger.token("administrator"), "unknown issuer"),
        "kid of another issuer": (
            # signed with the other issuer's key, under that key's kid
            _resign(iss, other, "b1"),
            "unknown key id",
        ),
        "no roles claim": (iss.token(roles=None), "no roles claim"),
        "no sub": (iss.token("observer", sub=None), "missing claim sub"),
    }
    tokens = []
    for name, (token, reason) in cases.items():
        r = _get(d, token)
        assert r.status_code == 401, (name, r.text)
        assert r.headers["content-type"] == "application/problem+json"
        assert r.json()["type"] == "urn:knhkd:problem:unauthorized"
        challenge = r.headers["www-authenticate"]
        assert 'error="invalid_token"' in challenge and reason in challenge, (name, challenge)
        tokens.append(token)

    # No credentials at all: the bare challenge (RFC 6750 §3.1); another scheme: invalid_request.
    r = _get(d, None)
    assert r.status_code == 401 and r.headers["www-authenticate"] == 'Bearer realm="knhkd"'
    r = _get(d, None, raw="Basic YWRtaW46YWRtaW4=")
    assert r.status_code == 401 and 'error="invalid_request"' in r.headers["www-authenticate"]

    # A good token passes; the public routes need none.
    assert _get(d, iss.token("observer")).status_code == 200
    assert httpx.get(d.base + "/health").json()["authentication"] == "on"

    # Unknown kid of the URI issuer: one refresh (its first fetch), then 401;
    # at once again: no second fetch (rate-limited), still 401.
    b2 = other.token("observer", kid="b2")
    assert _get(d, b2).status_code == 401 and server.fetches == 1
    assert _get(d, b2).status_code == 401 and server.fetches == 1
    # The issuer publishes b2; past jwks_min_refresh_s the next unknown kid refreshes.
    server.doc = json.dumps(other.jwks(["b1", "b2"])).encode()
    time.sleep(2.2)
    assert _get(d, b2).status_code == 200 and server.fetches == 2
    assert _get(d, other.token("observer", kid="b1")).status_code == 200
    tokens.append(b2)

    log = d.log()
    d.stop()
    log = d.log()
    assert "deny GET /api/v1/snapshots/current by -" in log
    for token in tokens:
        assert token is not None
        for part in token.split("."):
            if len(part) > 8:
                assert part not in log, "a token part reached the log"
    for key in iss.private_key_bytes() + other.private_key_bytes():
        assert key.hex() not in log


def _resign(iss: Issuer, other: Issuer, kid: str) -> str:
    import jwt

    return jwt.encode(iss.claims("administrator"), other.keys[kid], "EdDSA", {"kid": kid})
