"""An HTTP worker process (``python -m knhkd.api.worker``) imports only what
it runs: the edge (Quart, Hypercorn, authentication, decoding), never the
loop, the store, SHACL or RDF. Its import is on the path of every restart to
ready (api/workers.py starts the workers beside the daemon's own start-up)."""

from __future__ import annotations

import json
import subprocess
import sys

# What a worker never runs: the daemon's facade and loop, LMDB, knowledge.
FORBIDDEN = ("pyshacl", "rdflib", "lmdb", "knhkd.loop", "knhkd.store", "knhkd.knowledge")


def _loaded_by(module: str) -> list[str]:
    """The modules a fresh interpreter holds after importing ``module``."""
    code = f"import json, sys, {module}; print(json.dumps(sorted(sys.modules)))"
    out = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, check=True, timeout=60
    )
    loaded: list[str] = json.loads(out.stdout)
    return loaded


def _forbidden(loaded: list[str]) -> list[str]:
    return [m for m in loaded if any(m == f or m.startswith(f + ".") for f in FORBIDDEN)]


def test_a_worker_imports_neither_the_loop_nor_shacl_nor_rdf() -> None:
    loaded = _loaded_by("knhkd.api.worker")
    assert "knhkd.api.http" in loaded and "quart" in loaded  # it did import the edge
    assert _forbidden(loaded) == []


def test_the_check_sees_the_daemon_s_imports() -> None:
    assert {"pyshacl", "rdflib", "knhkd.loop.daemon"} <= set(
        _forbidden(_loaded_by("knhkd.loop.daemon"))
    )
