"""Bearer-token costs (issue 11 item 12): JWT verifications per second,
cached vs uncached, in-process; and durable single-observation ingest with
JWT on vs off through the real daemon, in one run.

1. In-process (knhkd/auth/tokens.py ``Verifier``, one Ed25519 issuer made
   here): ``uncached`` verifies N distinct tokens (each a signature check and
   the claims checks), ``cached`` the same token again and again (a SHA-256
   and a dictionary lookup).
2. Three daemons (``knhkd run``, fresh temporary data directories,
   127.0.0.1): one with authentication off (callers are ``anonymous``, who
   may ingest), one trusting the issuer through a JWKS file, and one doing
   the same over HTTPS (``[http.tls]``, TLS 1.3, an EC P-256 certificate of a
   CA made here); ``bench/loadgen.py`` closed loop on ``POST
   /api/v1/observations`` (one observation per request, durable before the
   201, keep-alive connections: handshakes are not in the measured window)
   against each in turn, ``--rounds`` times, the second and third with
   ``Authorization: Bearer <producer token>``. The ratios JWT/off and
   TLS+JWT/off (goal ≥ 0.85) are medians over rounds.

Figures, not a test: nothing is asserted about time; exit 0 unless a phase
could not run (2). Traffic goes to loopback only; the daemons are stopped
and their directories removed whatever happens.
"""

from __future__ import annotations

import argparse
import contextlib
import http.client
import json
import ssl
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from contextlib import ExitStack, contextmanager
from pathlib import Path
from typing import Any

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))
sys.path.insert(0, str(HERE.parent))

import ingest  # noqa: E402  (bench/ingest.py: daemon start/stop and the load generator)

from knhkd import config  # noqa: E402
from knhkd.auth.jwks import IssuerKeys  # noqa: E402
from knhkd.auth.tokens import Verifier  # noqa: E402
from tests.integration.issuer import Issuer  # noqa: E402
from tests.integration.test_tls import _name, issue, make_ca  # noqa: E402


def verifications(n: int, tmp: Path) -> dict[str, float]:
    iss = Issuer()
    jwks = iss.write_jwks(tmp / "jwks.json")
    cfg = config.build(
        {
            "auth": {
                "issuers": [
                    {"issuer": iss.name, "audiences": ["knhkd-api"], "jwks_file": str(jwks)}
                ]
            }
        },
        env={},
    ).auth
    keys = IssuerKeys(cfg.issuers[0])
    keys.refresh(time.monotonic())
    tokens = [iss.token("producer", sub=f"p{i}") for i in range(n)]
    verifier = Verifier(cfg, {iss.name: keys})
    now = time.time()
    t0 = time.perf_counter()
    for token in tokens:
        verifier.verify(token, now)
    uncached = n / (time.perf_counter() - t0)
    one = tokens[0]
    reps = n * 50
    t0 = time.perf_counter()
    for _ in range(reps):
        verifier.verify(one, now)
    cached = reps / (time.perf_counter() - t0)
    return {"uncached_per_s": round(uncached), "cached_per_s": round(cached)}


def _wait_ready_https(
    proc: subprocess.Popen[bytes], port: int, ctx: ssl.SSLContext, timeout: float, log: Path
) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise ingest.BenchError(f"daemon exited with {proc.returncode}:\n{log.read_text()}")
        with contextlib.suppress(OSError, http.client.HTTPException):
            conn = http.client.HTTPSConnection("127.0.0.1", port, context=ctx, timeout=1.0)
            try:
                conn.request("GET", "/ready")
                if conn.getresponse().status == 200:
                    return
            finally:
                conn.close()
        time.sleep(0.1)
    raise ingest.BenchError(f"HTTPS daemon not ready after {timeout:.0f} s")


@contextmanager
def daemon(
    args: argparse.Namespace,
    extra: str,
    tmp: Path,
    name: str,
    tls: ssl.SSLContext | None = None,
) -> Iterator[tuple[int, Any]]:
    conf = tmp / f"{name}.toml"
    conf.write_text(extra, encoding="utf-8")
    port = ingest.free_port()
    cmd = [
        *ingest.daemon_command(args), "run",
        "--config", str(conf),
        "--data-dir", str(tmp / f"data-{name}"),
        "--http-bind", f"127.0.0.1:{port}",
    ]  # fmt: skip
    log_path = tmp / f"{name}.log"
    with log_path.open("wb") as log:
        proc = subprocess.Popen(cmd, cwd=ingest.REPO, stdout=log, stderr=subprocess.STDOUT)
        try:
            if tls is None:
                ingest._wait_ready(proc, port, args.start_timeout, log_path)
            else:
                _wait_ready_https(proc, port, tls, args.start_timeout, log_path)
            yield port, proc
        finally:
            ingest.stop(proc, args.stop_timeout)


def ingest_on_off(args: argparse.Namespace, tmp: Path) -> dict[str, Any]:
    iss = Issuer()
    jwks = iss.write_jwks(tmp / "jwks-daemon.json")
    token = iss.token("producer", sub="bench-producer", exp=int(time.time()) + 3600)
    pki = tmp / "pki"
    pki.mkdir()
    ca = make_ca(pki, "bench CA")
    cert, key = issue(ca, pki, "server", _name("localhost"), server=True)
    ca_ctx = ssl.create_default_context(cafile=str(ca.pem))
    tls_conf = f'[http.tls]\ncertfile = "{cert}"\nkeyfile = "{key}"\n'
    auth = f"Authorization: Bearer {token}"
    rows: list[dict[str, Any]] = []
    with ExitStack() as stack:
        off_port, off = stack.enter_context(daemon(args, "", tmp, "off"))
        on_port, on = stack.enter_context(daemon(args, iss.config(jwks_file=jwks), tmp, "on"))
        tls_port, tls = stack.enter_context(
            daemon(args, iss.config(jwks_file=jwks) + tls_conf, tmp, "tls", ca_ctx)
        )
        for _ in range(args.rounds):
            a = ingest.loadgen("closed", off_port, ingest.INGEST_PATH, args, off.pid)
            b = ingest.loadgen(
                "closed", on_port, ingest.INGEST_PATH, args, on.pid, header=auth
            )
            c = _loadgen_https(tls_port, args, tls.pid, auth, ca.pem)
            rows.append({"off": a, "on": b, "tls": c})
    ratios = [r["on"]["ok_rps"] / r["off"]["ok_rps"] for r in rows]
    tls_ratios = [r["tls"]["ok_rps"] / r["off"]["ok_rps"] for r in rows]
    return {
        "rounds": [
            {
                "off_rps": round(r["off"]["ok_rps"]),
                "on_rps": round(r["on"]["ok_rps"]),
                "tls_rps": round(r["tls"]["ok_rps"]),
                "off_status": r["off"].get("status"),
                "on_status": r["on"].get("status"),
                "tls_status": r["tls"].get("status"),
            }
            for r in rows
        ],
        "ratio_median": round(statistics.median(ratios), 3),
        "tls_ratio_median": round(statistics.median(tls_ratios), 3),
    }


def _loadgen_https(
    port: int, args: argparse.Namespace, pid: int, header: str, cafile: Path
) -> Any:
    """``ingest.loadgen``'s closed loop, over HTTPS (its URL is http:// only)."""
    cmd = [
        sys.executable, str(ingest.LOADGEN), "closed",
        "--url", f"https://127.0.0.1:{port}{ingest.INGEST_PATH}",
        "--cafile", str(cafile),
        "--body", ingest.BODY,
        "--duration", str(args.duration),
        "--warmup", str(args.warmup),
        "--header", header,
        "--json",
    ]  # fmt: skip
    cpu: dict[str, Any] = {}
    with ingest.cpu_accounting(pid, cpu):
        done = subprocess.run(
            cmd, capture_output=True, text=True, timeout=args.duration + 90, check=False
        )
    if done.returncode != 0:
        raise ingest.BenchError(f"loadgen over HTTPS failed:\n{done.stderr.strip()}")
    summary: dict[str, Any] = json.loads(done.stdout)
    summary.update(cpu)
    return summary


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="bench/auth.py", description=__doc__.split("\n\n")[0])
    p.add_argument("--tokens", type=int, default=2000, help="distinct tokens verified uncached")
    p.add_argument("--duration", type=float, default=5.0)
    p.add_argument("--warmup", type=float, default=1.0)
    p.add_argument("--rounds", type=int, default=2)
    p.add_argument("--daemon-cmd", default="")
    p.add_argument("--start-timeout", type=float, default=60.0)
    p.add_argument("--stop-timeout", type=float, default=30.0)
    p.add_argument("--json", action="store_true")
    args = p.parse_args(argv)
    with tempfile.TemporaryDirectory(prefix="knhkd-bench-auth-") as t:
        tmp = Path(t)
        try:
            report = {
                "verify": verifications(args.tokens, tmp),
                "ingest": ingest_on_off(args, tmp),
            }
        except ingest.BenchError as exc:
            print(f"bench/auth.py: {exc}", file=sys.stderr)
            return 2
    if args.json:
        print(json.dumps(report, indent=2))
        return 0
    v, g = report["verify"], report["ingest"]
    print(f"JWT verifications/s (EdDSA, one core): uncached {v['uncached_per_s']:,}")
    print(f"                                       cached   {v['cached_per_s']:,}")
    for i, r in enumerate(g["rounds"], 1):
        print(
            f"round {i}: durable ingest, 1 obs/request: off {r['off_rps']:,} req/s, "
            f"JWT on {r['on_rps']:,} req/s, TLS 1.3 + JWT {r['tls_rps']:,} req/s  "
            f"(statuses off {r['off_status']}, on {r['on_status']}, tls {r['tls_status']})"
        )
    print(f"ratio JWT on / off (median): {g['ratio_median']}  (goal >= 0.85)")
    print(f"ratio TLS 1.3 + JWT / off (median): {g['tls_ratio_median']}  (goal >= 0.85)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
