"""Who may call which route, through the real daemon: the route → permission
table covers every route the app serves (default deny for a new one), every
role × every route answers as the table says, and the default posture
(no issuer: loopback only, "anonymous" with the observer's reads and ingest)."""

from __future__ import annotations

import re
import subprocess
import sys
from pathlib import Path
from typing import Any

import httpx
import pytest
from quart_trio import QuartTrio

from knhkd.api import http
from knhkd.api.authn import PUBLIC, ROUTE_PERMISSIONS
from knhkd.api.routes import health
from knhkd.auth.roles import READS, permissions_of
from knhkd.model import ROLES
from tests.integration.conftest import RunningDaemon, free_port

pytestmark = pytest.mark.integration


def _routes() -> list[tuple[str, str, str]]:
    """(endpoint, method, rule) of every route an app can serve (as
    api/http.py's create_app makes it, with the bench route too)."""
    app = QuartTrio("knhkd", static_folder=None)
    for bp in (*http.BLUEPRINTS, health.bench):
        app.register_blueprint(bp)
    out = []
    for rule in app.url_map.iter_rules():
        for method in sorted((rule.methods or set()) - {"HEAD", "OPTIONS"}):
            out.append((rule.endpoint, method, rule.rule))
    return out


def test_every_route_has_exactly_one_entry_in_the_table() -> None:
    served = {endpoint for endpoint, _, _ in _routes()}
    assert served - set(ROUTE_PERMISSIONS) == set(), "routes with no permission (denied to all)"
    assert set(ROUTE_PERMISSIONS) - served == set(), "table entries for no route"
    # Whatever the table says, a read permission (the observer's, anonymous's
    # by default) never opens a route that changes something.
    for endpoint, method, rule in _routes():
        if method != "GET":
            assert ROUTE_PERMISSIONS[endpoint] not in READS | {PUBLIC}, (method, rule)


def _expected(roles: tuple[str, ...], endpoint: str) -> bool:
    need = ROUTE_PERMISSIONS[endpoint]
    held = permissions_of(roles)  # type: ignore[arg-type]
    return need == PUBLIC or need in held or "ALL" in held


def test_every_role_on_every_route_answers_as_the_table_says(make_daemon: Any) -> None:
    d: RunningDaemon = make_daemon("[http]\nnoop_endpoint = true\n", auth=True)
    assert d.issuer is not None
    principals: dict[str, tuple[str, ...]] = {role: (role,) for role in ROLES}
    principals["no role"] = ()
    principals["unknown role"] = ("superuser",)
    wrong: list[str] = []
    with httpx.Client(base_url=d.base, timeout=15.0) as c:
        for who, roles in principals.items():
            # A connection per request: Hypercorn now and then never answers
            # the next request on a connection whose last request body the
            # route did not read (a 404 for a bogus id), which is not what
            # this test is about.
            auth = {
                "Authorization": f"Bearer {d.issuer.token(*roles, sub=f'matrix-{who}')}",
                "Connection": "close",
            }
            for endpoint, method, rule in _routes():
                path = re.sub(r"<[^>]+>", "x", rule)
                body = {"json": {}} if method == "POST" else {}
                try:
                    status = c.request(method, path, headers=auth, **body).status_code
                except httpx.HTTPError as exc:
                    raise AssertionError(f"{who}: {method} {path}: {exc!r}") from exc
                allowed = _expected(roles, endpoint)
                ok = status not in (401, 403) if allowed else status == 403
                if not ok:
                    wrong.append(f"{who}: {method} {rule} -> {status} (allowed={allowed})")
    assert not wrong, "\n".join(wrong)


def test_default_posture_is_anonymous_reads_and_ingest_on_loopback(make_daemon: Any) -> None:
    d: RunningDaemon = make_daemon()
    assert "authentication is off" in d.log()
    with d.client() as c:
        assert c.get("/health").json()["authentication"] == "off"
        assert c.get("/api/v1/snapshots/current").status_code == 200
        obs = {"event_type": "x.y", "value": 1, "sector": "generic", "metadata": {}}
        assert c.post("/api/v1/observations", json=obs).status_code == 201
        # A token is not looked at while authentication is off.
        r = c.post("/api/v1/snapshots/rollback", headers={"Authorization": "Bearer x.y.z"})
        assert r.status_code == 403 and "authentication is off" in r.json()["detail"]
        for path in ("/api/v1/mape-k/execute", "/api/v1/proposals/x/promote"):
            assert c.post(path, json={}).status_code == 403
    assert "deny POST /api/v1/snapshots/rollback by anonymous" in d.log()


def _knhkd(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "knhkd.cli.knhkd", *args],
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )


def test_non_loopback_without_auth_and_a_bad_jwks_refuse_to_start(tmp_path: Path) -> None:
    conf = tmp_path / "k.toml"
    conf.write_text('[http]\nbind = "0.0.0.0:8080"\n')
    r = _knhkd("check-config", str(conf))
    assert r.returncode == 2 and "http.bind" in r.stderr and "authentication is off" in r.stderr
    r = _knhkd(
        "run",
        "--data-dir",
        str(tmp_path / "d"),
        "--http-bind",
        f"0.0.0.0:{free_port()}",
    )
    assert r.returncode == 2 and "http.bind" in r.stderr, r.stderr
    assert not (tmp_path / "d").exists()

    jwks = tmp_path / "jwks.json"
    jwks.write_text('{"keys": [{"kty": "oct", "k": "c2VjcmV0", "kid": "h"}]}')
    conf.write_text(
        f'[[auth.issuers]]\nissuer = "https://i"\naudiences = ["a"]\njwks_file = "{jwks}"\n'
        '[http]\nbind = "0.0.0.0:8080"\n'
    )
    r = _knhkd("check-config", str(conf))
    assert r.returncode == 2 and "auth.issuers[0].jwks_file" in r.stderr, r.stderr
    assert "no usable verification key" in r.stderr and "c2VjcmV0" not in r.stderr + r.stdout
