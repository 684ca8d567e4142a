"""systemd/knhkd.service is valid and stays hardened.

Guarantees checked:
- ``systemd-analyze verify`` accepts the unit and prints nothing (an unknown or
  misplaced key is only a warning with exit status 0, so silence is asserted);
- ``systemd-analyze security --offline=true`` rates its overall exposure at most
  ``MAX_EXPOSURE`` (lower is better; systemd calls < 2 "OK");
- the directives the daemon's contract depends on are present with their values
  (notify protocol, watchdog, stop signal and timeout, user, directories, sandbox).

Skipped, with the reason, only when ``systemd-analyze`` is not installed.
"""

from __future__ import annotations

import re
import shutil
import subprocess
import sys
from collections import defaultdict
from pathlib import Path

import pytest

UNIT = Path(__file__).resolve().parents[2] / "systemd" / "knhkd.service"
EXEC = "/usr/local/bin/knhkd"
# Today's unit scores 1.2. Raise this only with a reason in the commit.
MAX_EXPOSURE = 1.5

ANALYZE = shutil.which("systemd-analyze")
needs_analyze = pytest.mark.skipif(
    ANALYZE is None, reason="systemd-analyze is not installed (Debian package: systemd)"
)


def _parse(text: str) -> dict[str, dict[str, list[str]]]:
    """Unit file -> section -> key -> values (keys may repeat in systemd units)."""
    out: dict[str, dict[str, list[str]]] = defaultdict(lambda: defaultdict(list))
    section = ""
    for raw in text.splitlines():
        line = raw.strip()
        if not line or line[0] in "#;":
            continue
        if line.startswith("[") and line.endswith("]"):
            section = line[1:-1]
            continue
        key, sep, value = line.partition("=")
        assert sep, f"not KEY=VALUE: {raw!r}"
        out[section][key.strip()].append(value.strip())
    return out


def _runnable_copy(tmp_path: Path) -> Path:
    """The unit with ExecStart pointing at a binary that exists on this machine.

    ``verify`` checks that ExecStart is executable; the daemon is not installed
    at /usr/local/bin here, so the interpreter stands in for it.
    """
    copy = tmp_path / UNIT.name
    text = UNIT.read_text(encoding="utf-8")
    assert f"ExecStart={EXEC} " in text
    copy.write_text(text.replace(EXEC, sys.executable), encoding="utf-8")
    return copy


@needs_analyze
def test_verify(tmp_path: Path) -> None:
    assert ANALYZE is not None
    unit = _runnable_copy(tmp_path)
    done = subprocess.run(
        [ANALYZE, "verify", unit.name],
        cwd=tmp_path,
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    output = (done.stdout + done.stderr).strip()
    assert done.returncode == 0, output
    assert output == "", f"systemd-analyze verify warned:\n{output}"


@needs_analyze
def test_security_exposure(tmp_path: Path) -> None:
    assert ANALYZE is not None
    unit = _runnable_copy(tmp_path)
    done = subprocess.run(
        [ANALYZE, "security", "--offline=true", "--no-pager", unit.name],
        cwd=tmp_path,
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    found = re.search(r"Overall exposure level for \S+: (\d+(?:\.\d+)?)", done.stdout)
    assert found, f"no exposure level in the output:\n{done.stdout}\n{done.stderr}"
    exposure = float(found.group(1))
    assert exposure <= MAX_EXPOSURE, f"exposure {exposure} > {MAX_EXPOSURE}:\n{done.stdout}"


def test_contract_directives() -> None:
    unit = _parse(UNIT.read_text(encoding="utf-8"))
    service = unit["Service"]
    expected = {
        "Type": "notify",
        "NotifyAccess": "main",
        "WatchdogSec": "30",
        "ExecStart": f"{EXEC} run --config /etc/knhkd/knhkd.toml",
        "ExecReload": "/bin/kill -HUP $MAINPID",
        "Restart": "on-failure",
        "TimeoutStopSec": "30",
        "KillSignal": "SIGTERM",
        "User": "knhkd",
        "Group": "knhkd",
        "StateDirectory": "knhkd",
        "RuntimeDirectory": "knhkd",
        # The ring in /run/knhkd outlives a restart (systemd/README.md).
        "RuntimeDirectoryPreserve": "yes",
        "RuntimeDirectoryMode": "0750",
        "UMask": "0077",
        "NoNewPrivileges": "yes",
        "ProtectSystem": "strict",
        "ProtectHome": "yes",
        "PrivateTmp": "yes",
        "PrivateDevices": "yes",
        "ProtectKernelTunables": "yes",
        "ProtectKernelModules": "yes",
        "ProtectKernelLogs": "yes",
        "ProtectControlGroups": "yes",
        "RestrictAddressFamilies": "AF_UNIX AF_INET AF_INET6",
        "RestrictNamespaces": "yes",
        "LockPersonality": "yes",
        "MemoryDenyWriteExecute": "yes",
        "CapabilityBoundingSet": "",
    }
    for key, value in expected.items():
        assert service.get(key) == [value], f"{key}: {service.get(key)} != [{value!r}]"
    assert "@system-service" in service["SystemCallFilter"]
    assert "RestartSec" in service and "LimitNOFILE" in service
    # The shared-memory ring needs /dev/shm: nothing may hide it.
    for key in ("InaccessiblePaths", "TemporaryFileSystem", "ReadOnlyPaths"):
        assert not any("/dev/shm" in v or v.strip() == "/dev" for v in service.get(key, [])), key
    assert unit["Install"]["WantedBy"] == ["multi-user.target"]
