"""systemd's readiness protocol (sd_notify), without a library.

Guarantees: a no-op when ``$NOTIFY_SOCKET`` is unset (not under systemd);
never raises (a broken notify socket must not take the daemon down); one
call is one datagram, so assignments given together (``READY=1`` and its
``STATUS=``) arrive together; ``RELOADING=1`` always carries
``MONOTONIC_USEC`` (sd_notify(3): systemd then tells this reload from an
earlier one).
Must never: block: the datagram is sent non-blocking.
"""

from __future__ import annotations

import os
import socket
import time


def notify(state: str) -> bool:
    path = os.environ.get("NOTIFY_SOCKET")
    if not path:
        return False
    if path.startswith("@"):
        path = "\0" + path[1:]  # abstract namespace
    try:
        with socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM | socket.SOCK_NONBLOCK) as sock:
            sock.sendto(state.encode(), path)
    except OSError:
        return False
    return True


def notifying() -> bool:
    """Whether a notify socket was given (else every ``notify`` is a no-op)."""
    return bool(os.environ.get("NOTIFY_SOCKET"))


def reloading(status: str) -> bool:
    """``RELOADING=1`` with the time it began on ``CLOCK_MONOTONIC``, in µs."""
    usec = time.clock_gettime_ns(time.CLOCK_MONOTONIC) // 1000
    return notify(f"RELOADING=1\nMONOTONIC_USEC={usec}\nSTATUS={status}")


def watchdog_interval_s() -> float | None:
    """Half of ``$WATCHDOG_USEC`` when systemd asked for keep-alives for us."""
    usec = os.environ.get("WATCHDOG_USEC")
    pid = os.environ.get("WATCHDOG_PID")
    if not usec or (pid and pid != str(os.getpid())):
        return None
    try:
        return int(usec) / 2e6
    except ValueError:
        return None
