"""HTTPS and client certificates through the real daemon.

Every certificate is made here (``cryptography``): a CA, a server
certificate for 127.0.0.1 / localhost, client certificates of that CA and of
a rogue one. Clients are Python's ``ssl`` and httpx over 127.0.0.1; nothing
of knhkd is mocked.
"""

from __future__ import annotations

import datetime
import ipaddress
import re
import signal
import socket
import ssl
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx
import pytest
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

from knhkd.config import ConfigError, build
from tests.integration.conftest import RunningDaemon, wait_for_log

pytestmark = pytest.mark.integration

OBS = {"event_type": "x.y", "value": 1, "sector": "generic", "metadata": {}}
GATEWAY = "CN=gateway-7,O=plant"


@dataclass
class Ca:
    name: x509.Name
    key: ec.EllipticCurvePrivateKey
    cert: x509.Certificate
    pem: Path


def _name(cn: str, org: str = "") -> x509.Name:
    # Most general first in the certificate: RFC 4514 prints it the other way.
    attrs = [x509.NameAttribute(NameOID.ORGANIZATION_NAME, org)] if org else []
    return x509.Name([*attrs, x509.NameAttribute(NameOID.COMMON_NAME, cn)])


def make_ca(dir_: Path, cn: str) -> Ca:
    key = ec.generate_private_key(ec.SECP256R1())
    name = _name(cn)
    now = datetime.datetime.now(datetime.UTC)
    cert = (
        x509.CertificateBuilder()
        .subject_name(name)
        .issuer_name(name)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - datetime.timedelta(minutes=5))
        .not_valid_after(now + datetime.timedelta(days=1))
        .add_extension(x509.BasicConstraints(ca=True, path_length=None), critical=True)
        .add_extension(
            x509.KeyUsage(
                digital_signature=True, content_commitment=False, key_encipherment=False,
                data_encipherment=False, key_agreement=False, key_cert_sign=True,
                crl_sign=True, encipher_only=False, decipher_only=False,
            ),
            critical=True,
        )
        .add_extension(
            x509.SubjectKeyIdentifier.from_public_key(key.public_key()), critical=False
        )
        .sign(key, hashes.SHA256())
    )  # fmt: skip
    pem = dir_ / f"{cn}.pem"
    pem.write_bytes(cert.public_bytes(serialization.Encoding.PEM))
    return Ca(name, key, cert, pem)


def issue(
    ca: Ca, dir_: Path, stem: str, subject: x509.Name, *, server: bool, serial: int | None = None
) -> tuple[Path, Path]:
    """A leaf certificate of ``ca``: (cert.pem, key.pem) in ``dir_``."""
    key = ec.generate_private_key(ec.SECP256R1())
    now = datetime.datetime.now(datetime.UTC)
    builder = (
        x509.CertificateBuilder()
        .subject_name(subject)
        .issuer_name(ca.name)
        .public_key(key.public_key())
        .serial_number(serial or x509.random_serial_number())
        .not_valid_before(now - datetime.timedelta(minutes=5))
        .not_valid_after(now + datetime.timedelta(days=1))
        .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
        .add_extension(
            x509.AuthorityKeyIdentifier.from_issuer_public_key(ca.key.public_key()),
            critical=False,
        )
        .add_extension(
            x509.ExtendedKeyUsage(
                [ExtendedKeyUsageOID.SERVER_AUTH if server else ExtendedKeyUsageOID.CLIENT_AUTH]
            ),
            critical=False,
        )
    )
    if server:
        builder = builder.add_extension(
            x509.SubjectAlternativeName(
                [x509.DNSName("localhost"), x509.IPAddress(ipaddress.ip_address("127.0.0.1"))]
            ),
            critical=False,
        )
    cert = builder.sign(ca.key, hashes.SHA256())
    cert_path, key_path = dir_ / f"{stem}.crt", dir_ / f"{stem}.key"
    cert_path.write_bytes(cert.public_bytes(serialization.Encoding.PEM))
    key_path.write_bytes(
        key.private_bytes(
            serialization.Encoding.PEM,
            serialization.PrivateFormat.PKCS8,
            serialization.NoEncryption(),
        )
    )
    key_path.chmod(0o600)  # knhkd refuses a TLS key others may read
    return cert_path, key_path


@dataclass
class Pki:
    dir: Path
    ca: Ca
    server: tuple[Path, Path]
    gateway: tuple[Path, Path]
    ops: tuple[Path, Path]
    unmapped: tuple[Path, Path]
    rogue_gateway: tuple[Path, Path]


@pytest.fixture
def pki(tmp_path: Path) -> Pki:
    d = tmp_path / "pki"
    d.mkdir()
    ca = make_ca(d, "knhkd test CA")
    rogue = make_ca(d, "rogue CA")
    return Pki(
        dir=d,
        ca=ca,
        server=issue(ca, d, "server", _name("localhost"), server=True, serial=1001),
        gateway=issue(ca, d, "gateway", _name("gateway-7", "plant"), server=False),
        ops=issue(ca, d, "ops", _name("ops-console", "plant"), server=False),
        unmapped=issue(ca, d, "unmapped", _name("stranger", "plant"), server=False),
        rogue_gateway=issue(rogue, d, "rogue", _name("gateway-7", "plant"), server=False),
    )


def tls_config(pki: Pki, extra: str = "") -> str:
    cert, key = pki.server
    return f'[http.tls]\ncertfile = "{cert}"\nkeyfile = "{key}"\n{extra}'


MTLS = """client_ca = "{ca}"
client_cert = "required"

[[http.tls.client_principals]]
subject = "CN=gateway-7,O=plant"
roles = ["producer"]

[[http.tls.client_principals]]
common_name = "ops-console"
roles = ["administrator"]
"""


def client_ctx(
    pki: Pki, cert: tuple[Path, Path] | None = None, *, max_version: ssl.TLSVersion | None = None
) -> ssl.SSLContext:
    ctx = ssl.create_default_context(cafile=str(pki.ca.pem))
    if max_version is not None:
        ctx.minimum_version = ssl.TLSVersion.TLSv1_2
        ctx.maximum_version = max_version
    if cert is not None:
        ctx.load_cert_chain(str(cert[0]), str(cert[1]))
    return ctx


def base(d: RunningDaemon) -> str:
    return f"https://127.0.0.1:{d.port}"


def start_https(d: RunningDaemon, ctx: ssl.SSLContext, timeout: float = 30.0) -> None:
    """Start ``d`` and wait until ``/ready`` answers over HTTPS."""
    d.start(wait=False)
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        assert d.proc is not None
        if d.proc.poll() is not None:
            raise AssertionError(f"daemon exited {d.proc.returncode}:\n{d.log()}")
        try:
            if httpx.get(base(d) + "/ready", verify=ctx, timeout=2.0).status_code == 200:
                return
        except httpx.HTTPError:
            pass
        time.sleep(0.05)
    raise AssertionError(f"daemon not ready over HTTPS in {timeout}s:\n{d.log()}")


def failures(d: RunningDaemon, ctx: ssl.SSLContext, headers: dict[str, str]) -> dict[str, float]:
    text = httpx.get(base(d) + "/metrics", verify=ctx, headers=headers, timeout=10.0).text
    found = re.findall(r'^knhk_tls_handshake_failures_total\{reason="(\w+)"\} (\S+)$', text, re.M)
    return {reason: float(n) for reason, n in found}


def refused(d: RunningDaemon, ctx: ssl.SSLContext) -> None:
    """A request over ``ctx`` that the daemon's handshake refuses."""
    with pytest.raises((httpx.HTTPError, ssl.SSLError, OSError)):
        httpx.post(base(d) + "/api/v1/observations", json=OBS, verify=ctx, timeout=10.0)


def peer_serial(d: RunningDaemon, pki: Pki) -> int:
    with (
        socket.create_connection(("127.0.0.1", d.port), timeout=10.0) as raw,
        client_ctx(pki).wrap_socket(raw, server_hostname="127.0.0.1") as s,
    ):
        der = s.getpeercert(binary_form=True)
        assert der is not None
        return x509.load_der_x509_certificate(der).serial_number


def test_https_with_bearer_tokens_tls12_and_plain_http_refused(make_daemon: Any, pki: Pki) -> None:
    d: RunningDaemon = make_daemon(tls_config(pki), auth=True, start=False)
    ctx = client_ctx(pki)
    start_https(d, ctx)
    with httpx.Client(base_url=base(d), verify=ctx, headers=d.headers("producer")) as c:
        r = c.post("/api/v1/observations", json=OBS)
        assert r.status_code == 201, r.text
        assert c.get("/api/v1/snapshots/current").status_code == 403
    # No token, no client certificate: authentication still on.
    assert httpx.get(base(d) + "/api/v1/snapshots/current", verify=ctx).status_code == 401
    for _ in range(2):
        refused(d, client_ctx(pki, max_version=ssl.TLSVersion.TLSv1_2))
    with pytest.raises(httpx.HTTPError):
        httpx.get(f"http://127.0.0.1:{d.port}/ready", timeout=10.0)
    counts = failures(d, ctx, d.headers("administrator"))
    assert counts.get("protocol_version") == 2, counts
    assert counts.get("not_tls") == 1, counts
    # Logged once per peer and reason, however often it happens.
    assert d.log().count("TLS handshake from 127.0.0.1 refused: protocol_version") == 1
    assert f"ready: http https://127.0.0.1:{d.port}" in d.log()


def test_mtls_required_maps_certificates_to_principals(make_daemon: Any, pki: Pki) -> None:
    # No [[auth.issuers]]: required, mapped client certificates are the authentication.
    d: RunningDaemon = make_daemon(tls_config(pki, MTLS.format(ca=pki.ca.pem)), start=False)
    gateway = client_ctx(pki, pki.gateway)
    start_https(d, gateway)
    ops = client_ctx(pki, pki.ops)
    assert httpx.get(base(d) + "/health", verify=ops).json()["authentication"] == "on"

    refused(d, client_ctx(pki))  # no client certificate
    refused(d, client_ctx(pki, pki.rogue_gateway))  # the right name, the wrong CA

    with httpx.Client(base_url=base(d), verify=gateway, timeout=30.0) as c:
        assert c.post("/api/v1/observations", json=OBS).status_code == 201
        r = c.post("/api/v1/snapshots/rollback", json={})
        assert r.status_code == 403, r.text
        assert f"mtls#{GATEWAY} may not" in r.json()["detail"]
        assert c.get("/api/v1/snapshots/current").status_code == 403
    # A certificate of the CA that maps to no principal is no one.
    r = httpx.get(base(d) + "/api/v1/snapshots/current", verify=client_ctx(pki, pki.unmapped))
    assert r.status_code == 401, r.text
    assert "client certificate" in r.json()["detail"]
    # Matched by common name alone: the administrator.
    assert httpx.get(base(d) + "/api/v1/snapshots/current", verify=ops).status_code == 200

    counts = failures(d, ops, {})
    assert counts.get("no_client_certificate") == 1, counts
    assert counts.get("bad_client_certificate") == 1, counts
    log = d.log()
    assert f"deny POST /api/v1/snapshots/rollback by mtls#{GATEWAY}" in log
    assert "TLS handshake from 127.0.0.1 refused: no_client_certificate" in log
    assert "TLS handshake from 127.0.0.1 refused: bad_client_certificate" in log


def test_sighup_reloads_the_certificate_for_new_connections(make_daemon: Any, pki: Pki) -> None:
    d: RunningDaemon = make_daemon(tls_config(pki), start=False)
    start_https(d, client_ctx(pki))
    assert peer_serial(d, pki) == 1001
    cert, key = pki.server
    # Renewal in place: the same paths, a new pair.
    new_cert, new_key = issue(
        pki.ca, pki.dir, "renewed", _name("localhost"), server=True, serial=2002
    )
    cert.write_bytes(new_cert.read_bytes())
    key.write_bytes(new_key.read_bytes())
    assert d.proc is not None
    d.proc.send_signal(signal.SIGHUP)
    wait_for_log(d, "TLS certificate and key reloaded")
    assert peer_serial(d, pki) == 2002

    # A key that does not match the certificate: refused, the running pair stays.
    key.write_bytes(pki.gateway[1].read_bytes())
    d.proc.send_signal(signal.SIGHUP)
    wait_for_log(d, "TLS reload refused, keeping the running certificate")
    assert "BEGIN" not in d.log()  # no key material in the log
    assert peer_serial(d, pki) == 2002
    assert d.stop() == 0


def test_non_loopback_bind_needs_tokens_or_required_mapped_certificates(pki: Pki) -> None:
    cert, key = pki.server
    tls = {"certfile": str(cert), "keyfile": str(key)}
    mapped = {
        **tls,
        "client_ca": str(pki.ca.pem),
        "client_principals": [{"common_name": "gateway-7", "roles": ["producer"]}],
    }
    bind = "0.0.0.0:8443"
    cfg = build({"http": {"bind": bind, "tls": mapped}})
    assert cfg.auth_enabled
    with pytest.raises(ConfigError, match="authentication is off"):
        build({"http": {"bind": bind, "tls": tls}})
    with pytest.raises(ConfigError, match="authentication is off"):
        build({"http": {"bind": bind, "tls": {**mapped, "client_cert": "optional"}}})
    with pytest.raises(ConfigError, match="certfile and keyfile"):
        build({"http": {"tls": {"certfile": str(cert)}}})
    with pytest.raises(ConfigError, match="exactly one of subject and common_name"):
        build({"http": {"tls": {**mapped, "client_principals": [{"roles": ["producer"]}]}}})
