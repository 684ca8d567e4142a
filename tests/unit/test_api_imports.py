"""api/ stays an edge: the only exception types it imports are those of
knhkd.errors, and of the project it imports only the facade and layer 1."""

from __future__ import annotations

import ast
import importlib
from pathlib import Path

import knhkd.api

API = Path(knhkd.api.__file__).parent
# The facade (loop.daemon), layer 1, and monitor.decode's pure decoding of a
# body into observations (the shapes gate and the commit are the facade's).
ALLOWED = {
    "knhkd.errors",
    "knhkd.model",
    "knhkd.config",
    "knhkd.loop.daemon",
    "knhkd.monitor.decode",
    # Bearer tokens, key sets, roles and rate limits (api/authn.py): the edge's
    # own checks, below the facade, with no state of the daemon's.
    "knhkd.auth.jwks",
    "knhkd.auth.ratelimit",
    "knhkd.auth.roles",
    "knhkd.auth.tokens",
    # Client-certificate subjects, their principals, handshake failure
    # reasons (api/server.py, api/authn.py): pure functions of a certificate.
    "knhkd.auth.tls",
    # The request span (W3C trace context in, one server span per request)
    # wraps every route, so it belongs to the edge that sees the headers.
    "knhkd.telemetry.tracing",
    # An HTTP worker process (api/worker.py) logs as the daemon does: the
    # same format and journald priorities on the stderr they share.
    "knhkd.telemetry",
}


def _imports(path: Path) -> list[tuple[str, str]]:
    """(module, name) of every ``from knhkd... import name``; (module, "") of
    every ``import knhkd...``."""
    out: list[tuple[str, str]] = []
    for node in ast.walk(ast.parse(path.read_text(), str(path))):
        if isinstance(node, ast.ImportFrom) and node.module and node.module.startswith("knhkd"):
            out.extend((node.module, alias.name) for alias in node.names)
        elif isinstance(node, ast.Import):
            out.extend((a.name, "") for a in node.names if a.name.startswith("knhkd"))
    return out


def _api_files() -> list[Path]:
    files = sorted(API.rglob("*.py"))
    assert API / "http.py" in files and API / "admin.py" in files
    return files


def test_api_imports_exception_types_only_from_errors() -> None:
    offenders = []
    for path in _api_files():
        for module, name in _imports(path):
            if module.startswith("knhkd.api") or not name:
                continue
            value = getattr(importlib.import_module(module), name, None)
            if (
                isinstance(value, type)
                and issubclass(value, BaseException)
                and module != "knhkd.errors"
            ):
                offenders.append(f"{path.name}: {module}.{name}")
    assert offenders == []


def test_api_imports_only_the_facade_and_layer_one() -> None:
    seen = {
        (path.name, module)
        for path in _api_files()
        for module, _ in _imports(path)
        if not module.startswith("knhkd.api")
    }
    assert {m for _, m in seen} <= ALLOWED, sorted(p for p in seen if p[1] not in ALLOWED)


def test_the_check_sees_an_offending_import(tmp_path: Path) -> None:
    bad = tmp_path / "bad.py"
    bad.write_text("from knhkd.loop.ingest import Overloaded\n")
    assert _imports(bad) == [("knhkd.loop.ingest", "Overloaded")]
