"""Which build of knhkd is running, for ``knhk_build_info``.

Guarantees: ``commit()`` answers the git commit the package was installed
from when it is known — pip's record of a VCS install (``direct_url.json``,
PEP 610), else the checkout the package is imported from — and ``""``
otherwise; it never raises and never waits more than a second.

Must never: make the daemon's start depend on git being installed or the
checkout being readable.
"""

from __future__ import annotations

import json
import subprocess
from importlib import metadata
from pathlib import Path


def commit() -> str:
    return _installed_commit() or _checkout_commit()


def _installed_commit() -> str:
    try:
        text = metadata.distribution("knhkd").read_text("direct_url.json")
        info = json.loads(text or "{}").get("vcs_info", {})
    except (metadata.PackageNotFoundError, ValueError, AttributeError, OSError):
        return ""
    value = info.get("commit_id", "") if isinstance(info, dict) else ""
    return value if isinstance(value, str) else ""


def _checkout_commit() -> str:
    top = Path(__file__).resolve().parents[2]
    if not (top / ".git").exists():  # an installed package: no checkout around it
        return ""
    try:
        done = subprocess.run(
            ["git", "-C", str(top), "rev-parse", "HEAD"],
            capture_output=True, text=True, timeout=1.0, check=False,
        )  # fmt: skip
    except (OSError, subprocess.SubprocessError):
        return ""
    out = done.stdout.strip()
    return out if done.returncode == 0 and len(out) == 40 else ""
