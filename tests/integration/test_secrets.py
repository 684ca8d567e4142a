"""Secrets from systemd credentials through the real daemon: the signing key
and a JWKS file named ``credential:NAME`` are read from
``$CREDENTIALS_DIRECTORY``; a missing directory or a key file others may read
refuses the start naming what is wrong; a credential key is never rotated in
place. (That no token or key reaches a log is checked over the whole session:
conftest.py ``no_secret_in_any_daemon_log``.)"""

from __future__ import annotations

import json
import os
import ssl
import subprocess
import sys
from pathlib import Path
from typing import Any

import httpx

from tests.integration.conftest import RunningDaemon
from tests.integration.issuer import Issuer

OBS = {"event_type": "t.secret", "value": 1, "sector": "generic", "metadata": {}}


def keygen(path: Path) -> str:
    done = subprocess.run(
        [sys.executable, "-m", "knhkd.cli.knhkd", "keygen", str(path)],
        capture_output=True,
        text=True,
        check=False,
    )
    assert done.returncode == 0, done.stderr
    return done.stdout.strip().rsplit(" ", 1)[-1]


def creds_dir(tmp_path: Path) -> Path:
    creds = tmp_path / "credentials"
    creds.mkdir(mode=0o700)
    return creds


def test_signing_key_and_jwks_as_systemd_credentials(make_daemon: Any, tmp_path: Path) -> None:
    creds = creds_dir(tmp_path)
    key_id = keygen(creds / "signing.key")
    os.chmod(creds / "signing.key", 0o400)  # as systemd hands it over
    issuer = Issuer()
    issuer.write_jwks(creds / "jwks.json")
    conf = (
        issuer.config().replace('jwks_uri = ""', 'jwks_file = "credential:jwks.json"')
        + '\n[keys]\nsigning_key = "credential:signing.key"\n'
    )
    d: RunningDaemon = make_daemon(conf, start=False)
    d.env["CREDENTIALS_DIRECTORY"] = str(creds)
    d.start()
    token = issuer.token("administrator")
    with httpx.Client(base_url=d.base, headers={"Authorization": f"Bearer {token}"}) as c:
        assert c.post("/api/v1/observations", json=OBS).status_code == 201
    # The credential signed the log; its public half went to DATA_DIR/keys.
    ring = json.loads((d.data_dir / "keys" / "public.json").read_text())
    assert [k["key_id"] for k in ring["keys"]] == [key_id]
    assert not (d.data_dir / "keys" / "signing.key").exists()
    ok = d.ctl("receipts", "verify-chain")
    assert ok.returncode == 0, ok.stdout
    # Rotation would replace a read-only credential: refused, naming why.
    rot = d.ctl("keys", "rotate")
    assert rot.returncode == 2 and "systemd credential" in rot.stderr
    assert d.stop() == 0


def test_a_credential_without_credentials_directory_refuses_start(make_daemon: Any) -> None:
    d: RunningDaemon = make_daemon('[keys]\nsigning_key = "credential:signing.key"\n', start=False)
    d.env["CREDENTIALS_DIRECTORY"] = ""
    d.start(wait=False)
    assert d.proc is not None and d.proc.wait(timeout=30) == 2
    assert "keys.signing_key" in d.log() and "CREDENTIALS_DIRECTORY" in d.log()


def test_a_key_file_others_may_read_refuses_start_naming_it(
    make_daemon: Any, tmp_path: Path
) -> None:
    creds = creds_dir(tmp_path)
    keygen(creds / "signing.key")
    os.chmod(creds / "signing.key", 0o640)
    d: RunningDaemon = make_daemon('[keys]\nsigning_key = "credential:signing.key"\n', start=False)
    d.env["CREDENTIALS_DIRECTORY"] = str(creds)
    d.start(wait=False)
    assert d.proc is not None and d.proc.wait(timeout=30) == 2
    assert f"{creds / 'signing.key'}: permissions 0640 are too open" in d.log()


def test_a_missing_credential_key_is_not_generated(make_daemon: Any, tmp_path: Path) -> None:
    creds = creds_dir(tmp_path)
    d: RunningDaemon = make_daemon('[keys]\nsigning_key = "credential:signing.key"\n', start=False)
    d.env["CREDENTIALS_DIRECTORY"] = str(creds)
    d.start(wait=False)
    assert d.proc is not None and d.proc.wait(timeout=30) == 2
    assert "no such key file" in d.log()
    assert not (creds / "signing.key").exists()


def test_tls_key_as_a_credential_and_a_tls_key_others_may_read(
    make_daemon: Any, tmp_path: Path
) -> None:
    from tests.integration.test_tls import _name, issue, make_ca, start_https

    pki = tmp_path / "pki"
    pki.mkdir()
    ca = make_ca(pki, "secrets test CA")
    cert, key = issue(ca, pki, "server", _name("localhost"), server=True)
    creds = creds_dir(tmp_path)
    (creds / "tls.key").write_bytes(key.read_bytes())
    os.chmod(creds / "tls.key", 0o644)
    conf = f'[http.tls]\ncertfile = "{cert}"\nkeyfile = "credential:tls.key"\n'
    d: RunningDaemon = make_daemon(conf, start=False)
    d.env["CREDENTIALS_DIRECTORY"] = str(creds)
    d.start(wait=False)
    assert d.proc is not None and d.proc.wait(timeout=30) == 2
    assert f"{creds / 'tls.key'}: permissions 0644 are too open" in d.log()
    os.chmod(creds / "tls.key", 0o400)
    start_https(d, ssl.create_default_context(cafile=str(ca.pem)))
    assert d.stop() == 0
