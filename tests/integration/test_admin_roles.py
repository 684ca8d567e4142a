"""The admin socket's peer credentials through the real daemon: another
local uid is refused (and audited) unless ``[[admin.roles]]`` maps it, and
then may run its roles' commands only. The test makes a throwaway user
(``useradd``) and runs ``knhkctl`` as it; skipped, saying why, where it
cannot."""

from __future__ import annotations

import json
import os
import pwd
import shutil
import signal
import subprocess
import sys
import tempfile
import time
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from knhkd.cli import knhkctl
from tests.integration.conftest import RunningDaemon, wait_for_log


@pytest.fixture
def other_user() -> Iterator[pwd.struct_passwd]:
    if os.geteuid() != 0:
        pytest.skip(f"needs root to create a second user (tests run as uid {os.geteuid()})")
    name = f"knhkt{uuid.uuid4().hex[:8]}"
    made = subprocess.run(
        ["useradd", "--no-create-home", "--shell", "/usr/sbin/nologin", name],
        capture_output=True,
        text=True,
        check=False,
    )
    if made.returncode != 0:
        pytest.skip(f"useradd failed: {made.stderr.strip()}")
    try:
        yield pwd.getpwnam(name)
    finally:
        subprocess.run(["userdel", name], capture_output=True, check=False)


def ctl_as(user: pwd.struct_passwd, sock: Path, *args: str) -> subprocess.CompletedProcess[str]:
    """``knhkctl`` as ``user``: a forked child drops to its uid and gid and
    runs knhkctl's main (the interpreter lives under /root, which the user
    cannot exec, so the switch happens after the interpreter is loaded)."""
    out_r, out_w = os.pipe()
    err_r, err_w = os.pipe()
    pid = os.fork()
    if pid == 0:  # the child: never returns into pytest
        rc = 70
        try:
            os.close(out_r)
            os.close(err_r)
            os.dup2(out_w, 1)
            os.dup2(err_w, 2)
            # pytest's capture replaced sys.stdout/err: write to the pipes.
            sys.stdout = open(1, "w", closefd=False)  # noqa: SIM115
            sys.stderr = open(2, "w", closefd=False)  # noqa: SIM115
            os.setgroups([])
            os.setgid(user.pw_gid)
            os.setuid(user.pw_uid)
            rc = knhkctl.main(["--socket", str(sock), *args])
            sys.stdout.flush()
            sys.stderr.flush()
        finally:
            os._exit(rc)
    os.close(out_w)
    os.close(err_w)
    with os.fdopen(out_r) as out, os.fdopen(err_r) as err:
        stdout, stderr = out.read(), err.read()
    _, status = os.waitpid(pid, 0)
    return subprocess.CompletedProcess(args, os.waitstatus_to_exitcode(status), stdout, stderr)


def test_admin_socket_admits_mapped_uids_for_their_roles_only(
    make_daemon: Any, other_user: pwd.struct_passwd
) -> None:
    # A socket directory the other user can reach (the data directory is 0700).
    sock_dir = Path(tempfile.mkdtemp(prefix="knhkd-admin-"))
    try:
        os.chmod(sock_dir, 0o755)
        sock = sock_dir / "admin.sock"
        mapped = f"""
[admin]
socket = "{sock}"
[[admin.roles]]
uid = {other_user.pw_uid}
roles = ["observer"]
"""
        d: RunningDaemon = make_daemon(mapped)
        # Mapped as observer: its reads are allowed ...
        ok = ctl_as(other_user, sock, "snapshots", "list", "--format", "json")
        assert ok.returncode == 0, ok.stderr
        assert json.loads(ok.stdout)["snapshots"]
        # ... what needs another permission is refused, naming it.
        no = ctl_as(other_user, sock, "snapshots", "rollback")
        assert no.returncode == 2
        assert f"knhkctl#uid:{other_user.pw_uid} may not admin snapshots.rollback" in no.stderr
        assert "needs PROMOTE_SNAPSHOTS" in no.stderr
        rotate = ctl_as(other_user, sock, "keys", "rotate")
        assert rotate.returncode == 2 and "needs ALL" in rotate.stderr
        # The daemon's own uid (root here) is an administrator.
        root = subprocess.run(
            [sys.executable, "-m", "knhkd.cli.knhkctl", "--socket", str(sock), "cycle", "run"],
            capture_output=True,
            text=True,
            check=False,
            timeout=60,
        )
        assert root.returncode == 0, root.stderr

        # Unmapped (a reload maps another uid instead): refused at the door.
        d.config.write_text(
            d.config.read_text().replace(f"uid = {other_user.pw_uid}", "uid = 4000000")
        )
        d.proc.send_signal(signal.SIGHUP)  # type: ignore[union-attr]
        wait_for_log(d, "configuration reloaded")
        out = ctl_as(other_user, sock, "status")
        assert out.returncode == 2
        assert f"uid {other_user.pw_uid} may not use this socket" in out.stderr

        # Mapped by its group (a second reload): the group's role applies.
        d.config.write_text(
            d.config.read_text()
            .replace("uid = 4000000", f"gid = {other_user.pw_gid}")
            .replace('roles = ["observer"]', 'roles = ["operator"]')
        )
        d.proc.send_signal(signal.SIGHUP)  # type: ignore[union-attr]
        for _ in range(200):
            if d.log().count("configuration reloaded") >= 2:
                break
            time.sleep(0.05)
        cyc = ctl_as(other_user, sock, "cycle", "run")
        assert cyc.returncode == 0, cyc.stderr
        assert ctl_as(other_user, sock, "keys", "rotate").returncode == 2
        # A mapped peer acts only as itself: naming another approver is refused.
        spoof = ctl_as(other_user, sock, "guards", "approve", "rlx-1", "--approver", "bob")
        assert spoof.returncode == 2
        assert "may act only as itself" in spoof.stderr

        # Every refusal is in the audit trail, with the peer's credentials.
        entries: list[dict[str, Any]] = []
        for _ in range(100):
            r = subprocess.run(
                [
                    sys.executable,
                    "-m",
                    "knhkd.cli.knhkctl",
                    "--socket",
                    str(sock),
                    "audit",
                    "list",
                    "--format",
                    "json",
                    "--principal",
                    f"knhkctl#uid:{other_user.pw_uid}",
                ],
                capture_output=True,
                text=True,
                check=False,
                timeout=60,
            )
            assert r.returncode == 0, r.stderr
            entries = json.loads(r.stdout)
            if any(e["route"] == "admin connect" for e in entries):
                break
            time.sleep(0.1)
        routes = {(e["route"], e["decision"]) for e in entries}
        assert ("admin snapshots.rollback", "deny") in routes, entries
        assert ("admin keys.rotate", "deny") in routes, entries
        assert ("admin connect", "deny") in routes, entries
        assert all(f"uid:{other_user.pw_uid}" in e["peer"] for e in entries)
        assert d.stop() == 0
    finally:
        shutil.rmtree(sock_dir, ignore_errors=True)
