"""knhkctl as an operator meets it: --version, completion, --format on every
command, global options after the subcommand, progress bars on a terminal
only, and ``knhkctl smoke`` against the real daemon."""

from __future__ import annotations

import json
import os
import pty
import shutil
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest

from knhkd.cli.knhkctl import _parser
from tests.integration.conftest import RunningDaemon, free_port

CTL = [sys.executable, "-m", "knhkd.cli.knhkctl"]


def ctl(*args: str, env: dict[str, str] | None = None) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [*CTL, *args],
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
        env={**os.environ, **(env or {})},
    )


def on_pty(*args: str) -> tuple[int, str, str]:
    """knhkctl with stderr on a pseudo-terminal (stdout to a pipe): exit
    status, stdout, and what the terminal received."""
    master, slave = pty.openpty()
    proc = subprocess.Popen(
        [*CTL, *args], stdout=subprocess.PIPE, stderr=slave, stdin=subprocess.DEVNULL
    )
    os.close(slave)
    seen = b""
    while True:
        try:
            data = os.read(master, 65536)
        except OSError:  # EIO: every writer closed the terminal
            break
        if not data:
            break
        seen += data
    os.close(master)
    out = proc.stdout.read() if proc.stdout else b""
    return proc.wait(timeout=60), out.decode(), seen.decode(errors="replace")


def leaves(p: Any, path: tuple[str, ...] = ()) -> list[tuple[tuple[str, ...], Any]]:
    subs = [a for a in p._actions if a.__class__.__name__ == "_SubParsersAction"]
    if not subs:
        return [(path, p)]
    out = []
    for name, child in subs[0].choices.items():
        out += leaves(child, (*path, name))
    # `ring` runs without an action too
    if not subs[0].required:
        out.append((path, p))
    return out


def test_every_command_takes_the_global_options_after_its_name() -> None:
    commands = leaves(_parser())
    assert len(commands) >= 27
    for path, p in commands:
        flags = {f for a in p._actions for f in a.option_strings}
        missing = {"--format", "--data-dir", "--socket", "--timeout"} - flags
        assert not missing, f"knhkctl {' '.join(path)} lacks {missing}"


def test_version_and_completion() -> None:
    v = ctl("--version")
    assert v.returncode == 0 and v.stdout.startswith("knhkctl "), v
    d = subprocess.run(
        [sys.executable, "-m", "knhkd.cli.knhkd", "--version"],
        capture_output=True, text=True, check=False, timeout=60,
    )  # fmt: skip
    assert d.returncode == 0 and d.stdout.startswith("knhkd "), d
    script = ctl("completion", "bash")
    assert script.returncode == 0, script.stderr
    assert "verify-chain" in script.stdout and "smoke" in script.stdout
    if shutil.which("bash"):
        syntax = subprocess.run(
            ["bash", "-n"], input=script.stdout, text=True, capture_output=True, check=False
        )
        assert syntax.returncode == 0, syntax.stderr
    assert "#compdef knhkctl" in ctl("completion", "zsh").stdout


def test_smoke_formats_and_progress_against_the_daemon(
    daemon: RunningDaemon, tmp_path: Path
) -> None:
    d = daemon
    assert d.issuer is not None
    token = tmp_path / "token"
    token.write_text(d.issuer.token("administrator"))
    sock = str(d.data_dir / "admin.sock")
    smoke = ctl("smoke", "--url", d.base, "--token-file", str(token), "--socket", sock)
    assert smoke.returncode == 0, smoke.stdout + smoke.stderr
    for step in ("health", "ready", "ingest", "cycle", "verify-chain", "checkpoint", "metrics"):
        assert f"ok   {step}: " in smoke.stdout, smoke.stdout
    assert smoke.stderr == ""
    assert str(token.read_text()) not in smoke.stdout

    # Nobody listens there: the first step is named.
    wrong = ctl("smoke", "--url", f"http://127.0.0.1:{free_port()}", "--token-file", str(token),
                "--socket", sock)  # fmt: skip
    assert wrong.returncode == 1
    assert "FAILED at step 'health'" in wrong.stderr, wrong.stderr
    # A token without INGEST: health and ready pass, ingest is named.
    token.write_text(d.issuer.token("observer"))
    weak = ctl("smoke", "--url", d.base, "--token-file", str(token), "--socket", sock,
               "--format", "json")  # fmt: skip
    assert weak.returncode == 1
    doc = json.loads(weak.stdout)
    assert doc["failed_step"] == "ingest" and "403" in doc["steps"][-1]["detail"], doc
    assert [s["step"] for s in doc["steps"] if s["ok"]] == ["health", "ready"]

    # --format on commands that had JSON only, and after the subcommand.
    table = d.ctl("doctrines", "list", "--format", "table")
    assert table.returncode == 0, table.stderr
    with pytest.raises(json.JSONDecodeError):
        json.loads(table.stdout)
    note = d.ctl("checkpoint", "--format", "json")
    assert json.loads(note.stdout)["checkpoint"].count("\n") >= 3
    assert d.ctl("checkpoint").stdout == json.loads(note.stdout)["checkpoint"]

    # Progress on a terminal, nothing off one; stdout the same either way.
    for args in (("receipts", "export"), ("receipts", "verify-chain", "--format", "json")):
        rc, out, term = on_pty("--socket", sock, *args)
        assert rc == 0 and "knhkctl: " in term, (args, term)
        plain = ctl("--socket", sock, *args)
        assert plain.returncode == 0 and plain.stderr == "", (args, plain.stderr)
        assert json.loads(out).keys() == json.loads(plain.stdout).keys()


def test_offline_commands_take_options_after_the_name_and_draw_progress(
    make_daemon: Any, tmp_path: Path
) -> None:
    d = make_daemon()
    with d.client() as c:
        for i in range(3):
            obs = {"event_type": "t.ctl", "value": i, "sector": "generic"}
            assert c.post("/api/v1/observations", json=obs).status_code == 201
    keys = tmp_path / "keys.json"
    keys.write_text(d.ctl("keys", "export-public").stdout)
    export = tmp_path / "export.json"
    assert d.ctl("receipts", "export", "--out", str(export)).returncode == 0
    assert d.stop() == 0
    data = str(d.data_dir)

    fsck = ctl("fsck", "--data-dir", data)
    assert fsck.returncode == 0 and "fsck: clean" in fsck.stdout, fsck.stdout + fsck.stderr
    assert fsck.stderr == ""
    rc, out, term = on_pty("fsck", "--data-dir", data)
    assert rc == 0 and "fsck: clean" in out
    assert "knhkctl: fsck" in term, term

    rc, out, term = on_pty("receipts", "verify-chain", "--data-dir", data)
    assert rc == 0 and "integrity verified" in out
    assert "knhkctl: verifying the chain" in term and "receipt" in term, term

    plain = ctl("verify", "--keys", str(keys), str(export))
    assert plain.returncode == 0 and plain.stderr == ""
    rc, out, term = on_pty("verify", "--keys", str(keys), str(export), "--format", "json")
    assert rc == 0 and json.loads(out)[0]["verified"] is True
    assert "knhkctl: verifying" in term, term
