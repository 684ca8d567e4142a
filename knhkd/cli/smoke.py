"""``knhkctl smoke``: the post-deployment checks of seed §7.4 against a running
daemon, in order: health, ready, one ingest, one cycle, verify-chain, a
checkpoint, a metrics scrape.

HTTP steps go to ``--url`` with the bearer token of ``--token-file`` or
``$KNHKCTL_TOKEN`` (when the daemon checks tokens it needs INGEST,
EXECUTE_MAPE_K and READ_METRICS: roles operator and producer); verify-chain
and the checkpoint go over the admin socket (they have no HTTP route).

Guarantees: each step's result is printed as it finishes; the first failing
step stops the run and is named on the last line (and stderr); exit 0 all
passed, 1 a step failed, 2 unusable options. The one observation it ingests
(``knhkctl.smoke`` in ``--sector``) and the cycle it runs are real: they are
stored and receipted like any other.

Must never: print or log the token; import knhkctl (the caller passes the
admin transport and the output function, so the cli modules stay acyclic).
"""

from __future__ import annotations

import argparse
import json
import os
import ssl
import sys
import urllib.error
import urllib.request
from collections.abc import Callable
from pathlib import Path
from typing import Any

Admin = Callable[[str, dict[str, Any]], Any]
Out = Callable[[argparse.Namespace, Any, Any], None]

STEPS = ("health", "ready", "ingest", "cycle", "verify-chain", "checkpoint", "metrics")


class StepFailed(Exception):
    """A step's one-line reason."""


def add_parser(sub: Any) -> argparse.ArgumentParser:
    sp: argparse.ArgumentParser = sub.add_parser(
        "smoke", help="post-deployment checks against a running daemon (exit 1 names the step)"
    )
    sp.add_argument(
        "--url",
        default=os.environ.get("KNHKCTL_URL", "http://127.0.0.1:8080"),
        help="the daemon's HTTP base URL (default: $KNHKCTL_URL or http://127.0.0.1:8080)",
    )
    sp.add_argument(
        "--token-file", help="a file holding the bearer token (default: $KNHKCTL_TOKEN)"
    )
    sp.add_argument("--cacert", help="CA bundle for an https URL with a private CA")
    sp.add_argument("--sector", default="generic", help="sector of the one observation")
    return sp


class _Http:
    def __init__(self, args: argparse.Namespace, token: str | None) -> None:
        self.base = args.url.rstrip("/")
        self.timeout = args.timeout
        self.token = token
        self.ctx = ssl.create_default_context(cafile=args.cacert) if args.cacert else None

    def __call__(self, method: str, path: str, body: Any = None) -> tuple[int, bytes]:
        headers = {"Accept": "application/json"}
        data = None
        if body is not None:
            data = json.dumps(body).encode()
            headers["Content-Type"] = "application/json"
        if self.token:
            headers["Authorization"] = f"Bearer {self.token}"
        req = urllib.request.Request(self.base + path, data, headers, method=method)
        try:
            with urllib.request.urlopen(req, timeout=self.timeout, context=self.ctx) as resp:
                return int(resp.status), bytes(resp.read())
        except urllib.error.HTTPError as exc:
            return int(exc.code), bytes(exc.read())
        except urllib.error.URLError as exc:
            raise StepFailed(f"{method} {self.base}{path}: {exc.reason}") from None
        except (OSError, ValueError) as exc:
            raise StepFailed(f"{method} {self.base}{path}: {exc}") from None

    def json(self, method: str, path: str, want: int, body: Any = None) -> Any:
        status, raw = self(method, path, body)
        try:
            doc = json.loads(raw) if raw else None
        except ValueError:
            doc = None
        if status != want:
            raise StepFailed(f"{method} {path}: {status} {_why(doc, raw)}")
        return doc


def _why(doc: Any, raw: bytes) -> str:
    """The one line of an answer that explains it: a problem's title and
    detail, a health document's degraded dependencies, or the text."""
    if isinstance(doc, dict):
        if "title" in doc or "detail" in doc:
            return f"{doc.get('title', '')}: {doc.get('detail', '')}".strip(": ")
        deps = doc.get("dependencies")
        if isinstance(deps, dict):
            bad = {k: v for k, v in deps.items() if v != "healthy"}
            return f"{doc.get('status')} {json.dumps(bad)}"
        if "refused" in doc:
            return f"writes refused: {json.dumps(doc['refused'])}"
    return raw[:200].decode(errors="replace").strip()


def _steps(http: _Http, admin: Admin, sector: str) -> list[tuple[str, Callable[[], str]]]:
    def health() -> str:
        doc = http.json("GET", "/health", 200)
        return (
            f"{doc['status']}, up {doc['uptime_seconds']}s, authentication {doc['authentication']}"
        )

    def ready() -> str:
        http.json("GET", "/ready", 200)
        return "ready"

    def ingest() -> str:
        obs = {"event_type": "knhkctl.smoke", "value": 1, "sector": sector, "metadata": {}}
        doc = http.json("POST", "/api/v1/observations", 201, obs)
        return f"observation {doc['id']} durable"

    def cycle() -> str:
        doc = http.json("POST", "/api/v1/mape-k/execute", 200)
        if doc.get("outcome") == "failed":
            raise StepFailed(f"cycle {doc['id']} failed: {doc.get('detail', '')}")
        return (
            f"cycle {doc['id']} {doc['outcome']}: {doc['patterns_detected']} patterns, "
            f"{doc['proposals_generated']} proposals, {len(doc['receipt_ids'])} receipts"
        )

    def verify_chain() -> str:
        rep = admin("receipts.verify", {})
        bad = {
            k: rep[k]
            for k in ("signature_failures", "chain_breaks", "retrocausation_violations")
            if rep[k]
        }
        if bad or rep["verified_count"] != rep["total_count"]:
            raise StepFailed(f"chain COMPROMISED: {json.dumps(bad)[:300]}")
        return f"{rep['verified_count']} of {rep['total_count']} receipts verified"

    def checkpoint() -> str:
        note = admin("checkpoint.latest", {"issue": True})
        lines = str(note).splitlines()
        if len(lines) < 3 or not lines[1].isdigit():
            raise StepFailed(f"not a checkpoint: {lines[:1]}")
        return f"signed checkpoint of {lines[0]} at tree size {lines[1]}"

    def metrics() -> str:
        status, raw = http("GET", "/metrics")
        if status != 200:
            raise StepFailed(f"GET /metrics: {status} {_why(None, raw)}")
        samples = [ln for ln in raw.decode(errors="replace").splitlines() if ln.startswith("knhk_")]
        if not samples:
            raise StepFailed("GET /metrics: no knhk_ samples")
        return f"{len(samples)} knhk_ samples"

    return list(
        zip(STEPS, (health, ready, ingest, cycle, verify_chain, checkpoint, metrics), strict=True)
    )


def run_smoke(args: argparse.Namespace, admin: Admin, out: Out) -> int:
    token = os.environ.get("KNHKCTL_TOKEN") or None
    if args.token_file:
        try:
            token = Path(args.token_file).read_text().strip()
        except OSError as exc:
            print(f"knhkctl: smoke: --token-file: {exc.strerror}", file=sys.stderr)
            return 2
    http = _Http(args, token)
    table = args.format != "json"
    results: list[dict[str, Any]] = []
    failed: str | None = None
    for name, step in _steps(http, admin, args.sector):
        try:
            detail, ok = step(), True
        except StepFailed as exc:
            detail, ok = str(exc), False
        except Exception as exc:  # the admin transport's errors: name the step, not a trace
            detail, ok = f"{type(exc).__name__}: {exc}", False
        results.append({"step": name, "ok": ok, "detail": detail})
        if table:
            print(f"{'ok  ' if ok else 'FAIL'} {name}: {detail}", flush=True)
        if not ok:
            failed = name
            break
    summary = (
        f"smoke: all {len(STEPS)} steps passed"
        if failed is None
        else f"smoke: FAILED at step {failed!r}: {results[-1]['detail']}"
    )
    if table:
        print(summary)
    else:
        out(args, {"passed": failed is None, "failed_step": failed, "steps": results}, None)
    if failed is not None:
        print(f"knhkctl: {summary}", file=sys.stderr)
        return 1
    return 0
