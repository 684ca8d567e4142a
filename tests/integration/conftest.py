"""Fixtures that run the real daemon as a subprocess on temporary directories.

Nothing of knhkd is mocked: the daemon is ``python -m knhkd.cli.knhkd run``,
storage is LMDB on disk, clients speak HTTP over loopback and JSON lines over
the real admin socket, and ``knhkctl`` runs as its own process.
"""

from __future__ import annotations

import base64
import json
import os
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import httpx
import pytest

from tests.integration.issuer import MINTED, PRIVATE_KEYS, Issuer

REPO = Path(__file__).resolve().parents[2]
CONF = REPO / "conf"

# Every daemon this session started: its log files and key files, for the
# session's last check (``no_secret_in_any_daemon_log``).
STARTED: list[RunningDaemon] = []


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def write_config(path: Path, extra: str = "") -> Path:
    path.write_text(
        f"""
[knowledge]
ontology_dir = "{CONF / "ontology"}"
shapes_dir = "{CONF / "shapes"}"

[governance]
doctrines_dir = "{CONF / "doctrines"}"
guards_dir = "{CONF / "guards"}"

[loop]
# Tests drive cycles on demand; the interval stays out of their way.
interval_s = 3600
{extra}
"""
    )
    return path


@dataclass
class RunningDaemon:
    data_dir: Path
    port: int
    config: Path
    proc: subprocess.Popen[bytes] | None = None
    log_path: Path | None = None
    env: dict[str, str] = field(default_factory=dict)
    # The issuer the daemon trusts (make_daemon(auth=True)), else None: then
    # authentication is off and every caller is "anonymous".
    issuer: Issuer | None = None
    # Every log this daemon wrote (one per start).
    logs: list[Path] = field(default_factory=list)
    # A command the daemon's command line is appended to (it execs it), and
    # the descriptors it inherits: socket activation (test_systemd.py).
    launcher: list[str] = field(default_factory=list)
    pass_fds: tuple[int, ...] = ()

    def __eq__(self, other: object) -> bool:
        return self is other

    __hash__ = object.__hash__

    @property
    def base(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def command(self) -> list[str]:
        """``knhkd run`` on this daemon's configuration, data directory and port."""
        return [
            sys.executable,
            "-m",
            "knhkd.cli.knhkd",
            "run",
            "--config",
            str(self.config),
            "--data-dir",
            str(self.data_dir),
            "--http-bind",
            f"127.0.0.1:{self.port}",
        ]

    def start(self, *, wait: bool = True) -> RunningDaemon:
        assert self.proc is None or self.proc.poll() is not None
        self.log_path = self.data_dir.parent / f"daemon-{self.port}-{time.monotonic_ns()}.log"
        self.logs.append(self.log_path)
        if self not in STARTED:
            STARTED.append(self)
        log = self.log_path.open("wb")
        self.proc = subprocess.Popen(
            [*self.launcher, *self.command()],
            stdout=log,
            stderr=subprocess.STDOUT,
            env={**os.environ, **self.env},
            cwd=str(self.data_dir.parent),
            pass_fds=self.pass_fds,
        )
        if wait:
            self.wait_ready()
        return self

    def wait_ready(self, timeout: float = 30.0, *, reads_only: bool = False) -> None:
        """Until ``/ready`` is 200; with ``reads_only``, also until it says the
        daemon serves reads while it refuses writes (read-only, storage full)."""
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            assert self.proc is not None
            if self.proc.poll() is not None:
                raise AssertionError(f"daemon exited {self.proc.returncode}:\n{self.log()}")
            try:
                r = httpx.get(self.base + "/ready", timeout=1.0)
                if r.status_code == 200:
                    return
                if reads_only and r.status_code == 503 and r.json().get("reads") is True:
                    return
            except httpx.HTTPError:
                pass
            time.sleep(0.05)
        raise AssertionError(f"daemon not ready in {timeout}s:\n{self.log()}")

    def log(self) -> str:
        return self.log_path.read_text(errors="replace") if self.log_path else ""

    def stop(self, sig: int = signal.SIGTERM, timeout: float = 30.0) -> int:
        assert self.proc is not None
        if self.proc.poll() is None:
            self.proc.send_signal(sig)
        try:
            return self.proc.wait(timeout=timeout)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait()
            raise AssertionError(f"daemon ignored signal {sig}:\n{self.log()}") from None

    def kill9(self) -> None:
        assert self.proc is not None
        self.proc.kill()
        self.proc.wait()

    def headers(self, role: str | None = "administrator") -> dict[str, str]:
        """An Authorization header with a fresh token for ``role`` (none when
        the daemon checks no tokens, or ``role`` is None)."""
        if self.issuer is None or role is None:
            return {}
        return {"Authorization": f"Bearer {self.issuer.token(role)}"}

    def client(self, role: str | None = "administrator") -> httpx.Client:
        """An HTTP client; with an issuer, it carries a token for ``role``."""
        return httpx.Client(base_url=self.base, timeout=30.0, headers=self.headers(role))

    def as_principal(self, subject: str, *roles: str, **claims: Any) -> httpx.Client:
        """A client carrying a token for ``subject`` with ``roles`` (and any
        other claims: ``knhkd_signer=["cfo@finance"]``, ``iat=…``); its
        principal is ``<issuer>#<subject>``."""
        assert self.issuer is not None, "make_daemon(auth=True) for principals"
        token = self.issuer.token(*roles, sub=subject, **claims)
        return httpx.Client(
            base_url=self.base, timeout=30.0, headers={"Authorization": f"Bearer {token}"}
        )

    def principal(self, subject: str) -> str:
        """The ``Principal.name`` of ``subject`` of the trusted issuer."""
        assert self.issuer is not None
        return f"{self.issuer.name}#{subject}"

    def ctl(self, *args: str, timeout: float = 60.0) -> subprocess.CompletedProcess[str]:
        return run_ctl(self.data_dir, *args, timeout=timeout)


def stored_counts(d: RunningDaemon) -> tuple[int, int]:
    """(observations, receipts other than the audit trail's): what a refused
    request must leave as it was. Its audit record is stored, by design
    (README "Audit trail")."""
    st = json.loads(d.ctl("status", "--format", "json").stdout)
    listed = d.ctl("receipts", "list", "--limit", "100000", "--format", "json")
    assert listed.returncode == 0, listed.stderr
    decisions = [r for r in json.loads(listed.stdout) if r["body"]["kind"] != "audit"]
    return st["observations"], len(decisions)


def run_knhkd(*args: str, env: dict[str, str] | None = None) -> subprocess.CompletedProcess[str]:
    """``knhkd ARGS`` to its end (check-config, keygen, a run that refuses to
    start), with ``env`` added to the environment."""
    return subprocess.run(
        [sys.executable, "-m", "knhkd.cli.knhkd", *args],
        check=False,
        capture_output=True,
        text=True,
        timeout=60,
        env={**os.environ, **(env or {})},
    )


def wait_for_log(d: RunningDaemon, text: str, timeout: float = 20.0) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if text in d.log():
            return
        time.sleep(0.05)
    raise AssertionError(f"{text!r} not logged:\n{d.log()}")


def read_until_eof(s: socket.socket, timeout: float = 30.0) -> bytes:
    """Everything a raw HTTP client socket receives until the daemon closes it
    (a reset raises ``ConnectionResetError``)."""
    s.settimeout(timeout)
    out = b""
    while data := s.recv(65536):
        out += data
    return out


def run_ctl(data_dir: Path, *args: str, timeout: float = 60.0) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "knhkd.cli.knhkctl", "--data-dir", str(data_dir), *args],
        check=False,
        capture_output=True,
        text=True,
        timeout=timeout,
    )


@pytest.fixture
def make_daemon(tmp_path: Path) -> Iterator[Any]:
    made: list[RunningDaemon] = []

    def make(extra_config: str = "", *, start: bool = True, auth: bool = False) -> RunningDaemon:
        """A daemon on fresh directories; ``auth``: it trusts an issuer made
        here (a JWKS file in the temp dir; ``d.client(role)`` mints tokens)."""
        n = len(made)
        issuer = None
        if auth:
            issuer = Issuer()
            jwks = issuer.write_jwks(tmp_path / f"jwks{n}.json")
            extra_config = issuer.config(jwks_file=jwks) + extra_config
        d = RunningDaemon(
            data_dir=tmp_path / f"data{n}",
            port=free_port(),
            config=write_config(tmp_path / f"knhkd{n}.toml", extra_config),
            issuer=issuer,
        )
        made.append(d)
        if start:
            d.start()
        return d

    yield make
    for d in made:
        if d.proc is not None and d.proc.poll() is None:
            d.proc.kill()
            d.proc.wait()


@pytest.fixture
def daemon(make_daemon: Any) -> RunningDaemon:
    """A daemon that checks tokens, as production runs; ``daemon.client()``
    carries an administrator's token (``client("observer")`` another role's).
    ``make_daemon()`` without ``auth=True`` gives the default posture instead:
    authentication off, every caller "anonymous" with the observer's reads and
    ingest."""
    return make_daemon(auth=True)  # type: ignore[no-any-return]


def _spellings(secret: bytes) -> list[str]:
    """How a key's bytes could appear in a log line."""
    return [
        base64.b64encode(secret).decode(),
        base64.urlsafe_b64encode(secret).rstrip(b"=").decode(),
        secret.hex(),
    ]


def _daemon_secrets(d: RunningDaemon) -> list[tuple[str, str]]:
    """The signing keys' seeds (as stored, and in hex) of one daemon."""
    out: list[tuple[str, str]] = []
    dirs = [d.data_dir / "keys"]
    if d.env.get("CREDENTIALS_DIRECTORY"):
        dirs.append(Path(d.env["CREDENTIALS_DIRECTORY"]))
    for directory in dirs:
        for key_file in directory.glob("*.key*") if directory.is_dir() else ():
            try:
                seed = json.loads(key_file.read_bytes())["seed"]
            except (OSError, ValueError, KeyError, TypeError):
                continue
            for spelled in _spellings(base64.b64decode(seed)):
                out.append((f"signing key {key_file}", spelled))
    return out


@pytest.fixture(scope="session", autouse=True)
def no_secret_in_any_daemon_log() -> Iterator[None]:
    """After the whole session: no minted token (any of its three parts), no
    issuer private key and no daemon signing key, in any spelling, appears in
    any log a daemon of this session wrote."""
    yield
    secrets: list[tuple[str, str]] = []
    for token in MINTED:
        secrets += [("a token part", part) for part in token.split(".") if len(part) >= 16]
    for key in PRIVATE_KEYS:
        secrets += [("an issuer's private key", s) for s in _spellings(key)]
    for d in STARTED:
        secrets += _daemon_secrets(d)
    wanted = dict((value, what) for what, value in secrets)
    for d in STARTED:
        for log in d.logs:
            try:
                text = log.read_text(errors="replace")
            except FileNotFoundError:
                continue
            for value, what in wanted.items():
                assert value not in text, f"{what} appears in {log}"
