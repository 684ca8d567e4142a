"""docs/runbooks/: every ``knhkctl``/``knhkd`` subcommand a fenced shell block
names exists (``--help`` of the real CLI exits 0), and every alert a runbook
names is defined in conf/prometheus/alerts.yml (where that file exists)."""

from __future__ import annotations

import re
import shlex
import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[2]
RUNBOOKS = REPO / "docs" / "runbooks"
ALERTS = REPO / "conf" / "prometheus" / "alerts.yml"
FENCE = re.compile(r"^```(?:sh|bash|console|shell)\n(.*?)^```", re.M | re.S)
# Options that take a value, which may come before the subcommand.
VALUED = {"--data-dir", "--socket", "--format", "--timeout", "--config"}
MODULES = {"knhkctl": "knhkd.cli.knhkctl", "knhkd": "knhkd.cli.knhkd"}


def commands(text: str) -> list[tuple[str, ...]]:
    """(program, subcommand words…) of each knhkctl/knhkd call in fenced blocks."""
    found: list[tuple[str, ...]] = []
    for block in FENCE.findall(text):
        for raw in block.replace("\\\n", " ").splitlines():
            line = raw.split(" #", 1)[0].removeprefix("$ ")
            for part in re.split(r"\|\||&&|[|;]", line):
                try:
                    words = shlex.split(part)
                except ValueError:
                    continue
                # `sudo -u knhkd`, `VAR=value` before the program
                while words and (words[0] == "sudo" or "=" in words[0] or words[0] == "-u"):
                    words = words[2:] if words[0] == "-u" else words[1:]
                if not words or words[0] not in MODULES:
                    continue
                path, rest = [words[0]], words[1:]
                while rest and len(path) < 3:
                    w = rest.pop(0)
                    if w in VALUED:
                        rest = rest[1:]
                    elif w.startswith(("-", ">", "<", "2>")):
                        break
                    else:
                        path.append(w)
                found.append(tuple(path))
    return found


def test_every_runbook_command_exists() -> None:
    pages = sorted(RUNBOOKS.glob("*.md"))
    assert len(pages) >= 10, pages
    named: dict[tuple[str, ...], str] = {}
    for page in pages:
        for cmd in commands(page.read_text()):
            named.setdefault(cmd, page.name)
    assert len(named) >= 15, named
    bad = []
    for (prog, *words), page in sorted(named.items()):
        r = subprocess.run(
            [sys.executable, "-m", MODULES[prog], *words, "--help"],
            capture_output=True, text=True, timeout=60, check=False,
        )  # fmt: skip
        if r.returncode != 0:
            bad.append(f"{page}: {prog} {' '.join(words)}: {r.stderr.strip()}")
    assert not bad, "\n".join(bad)


def test_the_checker_sees_a_missing_subcommand() -> None:
    # What the test above relies on: a wrong word is refused by --help.
    [cmd] = commands("```sh\nknhkctl --data-dir /x receipts verify-chains --format json\n```\n")
    assert cmd == ("knhkctl", "receipts", "verify-chains")
    r = subprocess.run(
        [sys.executable, "-m", MODULES[cmd[0]], *cmd[1:], "--help"],
        capture_output=True, text=True, timeout=60, check=False,
    )  # fmt: skip
    assert r.returncode == 2


def test_every_alert_a_runbook_names_is_defined() -> None:
    if not ALERTS.exists():
        pytest.skip(f"{ALERTS.relative_to(REPO)} is absent")
    defined = set(re.findall(r"^\s*-\s*alert:\s*(\S+)", ALERTS.read_text(), re.M))
    named = {
        (m, page.name)
        for page in RUNBOOKS.glob("*.md")
        for m in re.findall(r"`(KNHK[A-Za-z]+|Knhk[A-Za-z]+)`", page.read_text())
    }
    missing = sorted(f"{page}: {alert}" for alert, page in named if alert not in defined)
    assert not missing, missing
