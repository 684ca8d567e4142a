"""Socket activation: listening sockets handed down by systemd (sd_listen_fds).

The protocol (sd_listen_fds(3)): ``$LISTEN_PID`` is this process's pid,
``$LISTEN_FDS`` the number of sockets passed from fd 3 on, and
``$LISTEN_FDNAMES`` their names, colon-separated (``FileDescriptorName=`` of
the socket unit; ``knhkd.socket`` names them ``http`` and ``admin``).

Guarantees:
- Read once per process; the variables are then removed from the
  environment and the fds marked close-on-exec, so no child of the daemon
  takes them for its own (sd_listen_fds' ``unset_environment``).
- Variables meant for another process (``$LISTEN_PID`` not ours) are ignored,
  as systemd's own implementation does.
- The configuration is held to the sockets actually served: the command
  line makes ``http.bind`` the inherited address (``bind_of``), so a socket
  unit listening beyond loopback needs ``[[auth.issuers]]`` like a bind would.
- An fd named neither ``http`` nor ``admin`` is refused with
  ``ActivationError`` naming it: serving a socket the operator did not mean
  for HTTP, or leaving it unserved, would be a silent misconfiguration.

Must never: close a socket's listening state for the other holders: the
caller closes only its own descriptor; systemd (or whichever parent passed
it) keeps the socket listening across restarts, so connections wait in its
backlog instead of being refused.
"""

from __future__ import annotations

import functools
import os
import socket
from collections.abc import MutableMapping

from knhkd.config import is_loopback

SD_LISTEN_FDS_START = 3
NAMES = ("http", "admin")


class ActivationError(Exception):
    """The inherited sockets cannot be used as given."""


def parse(env: MutableMapping[str, str], pid: int) -> dict[str, list[socket.socket]]:
    """The sockets ``env`` passes to process ``pid``, by name; the variables
    are removed from ``env``."""
    listen_pid = env.pop("LISTEN_PID", "")
    count = env.pop("LISTEN_FDS", "")
    names_var = env.pop("LISTEN_FDNAMES", "")
    if not count or listen_pid != str(pid):
        return {}
    try:
        n = int(count)
    except ValueError:
        raise ActivationError(f"LISTEN_FDS={count!r} is not a number") from None
    names = names_var.split(":") if names_var else []
    if names and len(names) != n:
        raise ActivationError(f"LISTEN_FDNAMES names {len(names)} sockets, LISTEN_FDS={n}")
    out: dict[str, list[socket.socket]] = {}
    for i in range(n):
        fd = SD_LISTEN_FDS_START + i
        name = names[i] if names else "http"
        if name not in NAMES:
            raise ActivationError(
                f"inherited fd {fd} is named {name!r}; knhkd serves only "
                f"FileDescriptorName={' or '.join(NAMES)}"
            )
        try:
            os.set_inheritable(fd, False)
            sock = socket.socket(fileno=fd)
        except OSError as exc:
            raise ActivationError(f"inherited fd {fd} ({name}): {exc.strerror}") from None
        if sock.type != socket.SOCK_STREAM:
            raise ActivationError(f"inherited fd {fd} ({name}) is not a stream socket")
        out.setdefault(name, []).append(sock)
    return out


def bind_of(socks: list[socket.socket]) -> str | None:
    """``HOST:PORT`` the configuration must assume for these HTTP sockets
    (``http.bind``: the loopback-only rule without authentication, the
    ``Host`` check): the first not on loopback if any, else the first."""
    binds = []
    for sock in socks:
        if sock.family not in (socket.AF_INET, socket.AF_INET6):
            raise ActivationError(f"inherited fd {sock.fileno()} (http) is not a TCP socket")
        host, port = sock.getsockname()[:2]
        binds.append((host, f"[{host}]:{port}" if ":" in host else f"{host}:{port}"))
    for host, bind in binds:
        if not is_loopback(host):
            return bind
    return binds[0][1] if binds else None


@functools.cache
def inherit() -> dict[str, list[socket.socket]]:
    """The sockets systemd passed to this process, by name, read from the
    environment once; ``ActivationError`` if they cannot be used. The command
    line calls it before start-up touches anything, so that a bad hand-over
    is exit 2."""
    return parse(os.environ, os.getpid())


def take(name: str) -> list[socket.socket]:
    """The listening sockets systemd passed under ``name`` (empty: none, bind
    as configured)."""
    return inherit().pop(name, [])
