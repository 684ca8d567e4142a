"""Memory under slow uploads (``python bench/slow_uploads.py``): the resident
memory of ``knhkd run`` while many connections each hold an unfinished
request body, and after they close.

Each connection sends ``POST /api/v1/observations`` with a ``Content-Length``
one byte more than the body it then sends, so no request ever completes: the
daemon holds whatever it buffers for them until they close. All from one
client process over raw non-blocking sockets on 127.0.0.1. Printed: RSS at
baseline, its peak while the uploads are held, and after they close; how many
connections the daemon accepted and answered (413/503 are answers); and
whether a normal request (``GET /health``) was answered during the flood.

Guarantees: the daemon runs on 127.0.0.1 with its data in a temporary
directory, removed whatever happens; it is stopped (SIGTERM, then SIGKILL);
every phase has a deadline. Linux only (/proc). Exit status 0, or 2 when the
bench could not run.
"""

from __future__ import annotations

import argparse
import errno
import json
import selectors
import signal
import socket
import subprocess
import sys
import tempfile
import threading
import time
import urllib.request
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
CHUNK = 64 * 1024


def rss_mib(pid: int) -> float:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) / 1024
    raise RuntimeError("no VmRSS")


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def probe(port: int, timeout: float) -> float | None:
    """Seconds a ``GET /health`` took, or None if it was not answered in time."""
    t0 = time.monotonic()
    try:
        with urllib.request.urlopen(f"http://127.0.0.1:{port}/health", timeout=timeout) as r:
            r.read()
    except urllib.error.HTTPError:
        pass  # degraded is still an answer
    except OSError:
        return None
    return time.monotonic() - t0


class Upload:
    def __init__(self, port: int, body_bytes: int) -> None:
        self.sock = socket.socket()
        self.sock.setblocking(False)
        err = self.sock.connect_ex(("127.0.0.1", port))
        if err not in (0, errno.EINPROGRESS):
            raise OSError(err, "connect")
        head = (
            "POST /api/v1/observations HTTP/1.1\r\nHost: 127.0.0.1\r\n"
            f"Content-Type: application/json\r\nContent-Length: {body_bytes + 1}\r\n\r\n"
        ).encode()
        self.pending = memoryview(head + b" " * body_bytes)
        self.answered = b""
        self.closed = False

    def pump(self) -> None:
        """Send what the socket takes now; read an early answer if there is one."""
        if self.closed:
            return
        try:
            while self.pending:
                n = self.sock.send(self.pending[:CHUNK])
                self.pending = self.pending[n:]
        except BlockingIOError:
            pass
        except OSError:
            self.closed = True
            return
        try:
            data = self.sock.recv(4096)
            self.answered += data
            if not data:
                self.closed = True
        except BlockingIOError:
            pass
        except OSError:
            self.closed = True


def run(args: argparse.Namespace, port: int, pid: int) -> dict[str, object]:
    out: dict[str, object] = {"connections": args.connections, "body_bytes": args.body_bytes}
    time.sleep(args.settle)
    out["rss_baseline_mib"] = round(rss_mib(pid), 1)
    uploads = [Upload(port, args.body_bytes) for _ in range(args.connections)]
    peak = rss_mib(pid)
    deadline = time.monotonic() + args.upload_s
    sel = selectors.DefaultSelector()
    for u in uploads:
        sel.register(u.sock, selectors.EVENT_WRITE | selectors.EVENT_READ, u)
    while time.monotonic() < deadline and any(u.pending and not u.closed for u in uploads):
        for key, _ in sel.select(timeout=0.1):
            key.data.pump()
        peak = max(peak, rss_mib(pid))
    out["upload_phase_s"] = round(args.upload_s - max(0.0, deadline - time.monotonic()), 1)
    out["uploads_fully_sent"] = sum(1 for u in uploads if not u.pending and not u.closed)
    # Hold them: the daemon now buffers everything it has read of them.
    hold_end = time.monotonic() + args.hold_s
    answered_in: list[float | None] = []
    prober = threading.Thread(
        target=lambda: answered_in.append(probe(port, args.probe_timeout_s)), daemon=True
    )
    prober.start()
    while time.monotonic() < hold_end or prober.is_alive():
        for key, _ in sel.select(timeout=0.1):
            key.data.pump()
        peak = max(peak, rss_mib(pid))
    out["rss_peak_mib"] = round(peak, 1)
    # A normal request during the flood: it may wait for a connection slot.
    out["health_during_flood_s"] = None if answered_in[0] is None else round(answered_in[0], 3)
    statuses: dict[str, int] = {}
    for u in uploads:
        status = u.answered.split(b" ", 2)[1].decode() if u.answered.count(b" ") >= 2 else "none"
        statuses[status] = statuses.get(status, 0) + 1
    out["answers_while_held"] = statuses
    sel.close()
    for u in uploads:
        u.sock.close()
    # Memory the daemon gives back after its clients leave: sampled over a
    # bounded wait, the last figure reported (and the lowest, for the spread).
    after: list[float] = []
    end = time.monotonic() + args.after_s
    while time.monotonic() < end:
        time.sleep(0.5)
        after.append(rss_mib(pid))
    out["open_fds_after_close"] = len(list(Path(f"/proc/{pid}/fd").iterdir()))
    out["rss_after_close_mib"] = round(after[-1], 1)
    out["rss_after_close_min_mib"] = round(min(after), 1)
    out["health_after_s"] = probe(port, args.probe_timeout_s)
    return out


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(
        prog="bench/slow_uploads.py", description=__doc__.split("\n\n")[0]
    )
    p.add_argument("--connections", type=int, default=1000)
    p.add_argument("--body-bytes", type=int, default=1_000_000, help="sent of each body")
    p.add_argument("--upload-s", type=float, default=30.0, help="deadline to send the bodies")
    p.add_argument("--hold-s", type=float, default=5.0, help="seconds the bodies are held")
    p.add_argument("--after-s", type=float, default=10.0, help="seconds watched after close")
    p.add_argument("--settle", type=float, default=3.0, help="seconds after ready, first")
    p.add_argument("--probe-timeout-s", type=float, default=10.0)
    p.add_argument("--config", help="a knhkd.toml for the daemon (default: none)")
    p.add_argument("--json", action="store_true", help="one JSON object")
    args = p.parse_args(argv)
    port = free_port()
    with tempfile.TemporaryDirectory(prefix="knhkd-slow-") as tmp:
        cmd = [sys.executable, "-m", "knhkd.cli.knhkd", "run", "--data-dir", tmp,
               "--http-bind", f"127.0.0.1:{port}"]  # fmt: skip
        if args.config:
            cmd += ["--config", args.config]
        log = Path(tmp) / "daemon.log"
        with log.open("wb") as log_f:
            proc = subprocess.Popen(cmd, stdout=log_f, stderr=subprocess.STDOUT, cwd=str(REPO))
        try:
            deadline = time.monotonic() + 60
            while probe(port, 2) is None:
                if proc.poll() is not None or time.monotonic() > deadline:
                    print("bench/slow_uploads.py: knhkd did not start", file=sys.stderr)
                    print(log.read_text(errors="replace")[-2000:], file=sys.stderr)
                    return 2
                time.sleep(0.1)
            out = run(args, port, proc.pid)
        finally:
            proc.send_signal(signal.SIGTERM)
            try:
                out_rc: int | None = proc.wait(timeout=60)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait()
                out_rc = None
    out["exit_status"] = out_rc
    if args.json:
        print(json.dumps(out))
    else:
        for k, v in out.items():
            print(f"{k:>26}: {v}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
