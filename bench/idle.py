"""What an idle daemon costs (``python bench/idle.py``): CPU time of ``knhkd run``
on the shipped defaults (the ring on, nothing appended, no HTTP traffic) over
a quiet spell, as a percentage of one core, from /proc/PID/stat.

An edge box runs the daemon around the clock, mostly idle: wake-ups there
are power and headroom taken from everything else on it.

Guarantees: the daemon runs on 127.0.0.1 with its data in a temporary
directory, removed whatever happens; it is stopped (SIGTERM, then SIGKILL).
Linux only (/proc). Exit status 0, or 2 when the bench could not run.
"""

from __future__ import annotations

import argparse
import os
import signal
import socket
import subprocess
import sys
import tempfile
import time
import urllib.request
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent


def cpu_ticks(pid: int) -> int:
    """utime + stime of ``pid``, in clock ticks."""
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return int(fields[11]) + int(fields[12])  # fields 14 and 15 of stat(5)


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="bench/idle.py", description=__doc__.split("\n\n")[0])
    p.add_argument("--seconds", type=float, default=20.0, help="length of the quiet spell")
    p.add_argument("--settle", type=float, default=5.0, help="seconds after ready, first")
    args = p.parse_args(argv)
    port = free_port()
    with tempfile.TemporaryDirectory(prefix="knhkd-idle-") as tmp:
        proc = subprocess.Popen(
            [sys.executable, "-m", "knhkd.cli.knhkd", "run", "--data-dir", tmp,
             "--http-bind", f"127.0.0.1:{port}"],
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
            cwd=str(REPO),  # the shipped conf/ is relative to the repository
        )  # fmt: skip
        try:
            deadline = time.monotonic() + 60
            while True:
                try:
                    with urllib.request.urlopen(f"http://127.0.0.1:{port}/ready", timeout=2):
                        break
                except OSError:
                    if proc.poll() is not None or time.monotonic() > deadline:
                        print("bench/idle.py: knhkd did not start", file=sys.stderr)
                        return 2
                    time.sleep(0.1)
            time.sleep(args.settle)
            hz = os.sysconf("SC_CLK_TCK")
            t0, c0 = time.monotonic(), cpu_ticks(proc.pid)
            time.sleep(args.seconds)
            t1, c1 = time.monotonic(), cpu_ticks(proc.pid)
        finally:
            proc.send_signal(signal.SIGTERM)
            try:
                proc.wait(timeout=30)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait()
    used = (c1 - c0) / hz
    print(
        f"idle knhkd run (defaults, ring on): {used:.2f} CPU-s in {t1 - t0:.1f} s "
        f"= {100 * used / (t1 - t0):.2f} % of one core"
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())
