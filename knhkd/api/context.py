"""What a request handler reaches of the app it runs in: the front the app
serves (``Front``: the daemon itself, or a worker's stand-in for it), the
daemon for the routes only the daemon serves, and the principal the request
was made by.

Below every other module of api/ (routes, authn, phi import it, it imports
none of them), so the one accessor serves all of them without an import
cycle between siblings.

Guarantees: ``Front`` is all the edge (the app's hooks, guards,
authentication, ``POST /api/v1/observations``, Hypercorn's configuration)
asks of "the daemon"; ``loop.daemon.Daemon`` and api/worker.py's
``WorkerFront`` both satisfy it structurally (mypy checks both where they are
handed to ``create_app``). ``front()`` is what ``create_app`` put under
``DAEMON_KEY`` (a ``TypeError`` unless it has ``Front``'s members);
``daemon()`` is that object only when it is a ``Daemon`` (a ``TypeError``
otherwise, never a wrong object: a route a worker forwards never runs there).
``current_principal()`` is the principal api/authn.py's hook resolved (a
``TypeError`` on a public route, where none is).

Must never import ``knhkd.loop`` at import time: a worker process imports
this module and runs no part of the loop (api/worker.py).
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Protocol, cast, runtime_checkable

from quart import current_app, g

from knhkd.config import Config
from knhkd.model import AuditRecord, Principal
from knhkd.monitor.decode import Decoded

if TYPE_CHECKING:
    from knhkd.loop.daemon import Daemon

DAEMON_KEY = "KNHKD_DAEMON"
# Classes already found to be a Front: a runtime protocol check tests every
# member, and front() runs several times per request.
_FRONTS: set[type] = set()


@runtime_checkable
class Front(Protocol):
    """What the HTTP edge needs of the daemon behind it."""

    @property
    def cfg(self) -> Config: ...

    def check_accepting(self) -> None:
        """Raise a 503 ``draining`` problem once shutdown has begun."""

    async def audit(self, record: AuditRecord) -> None:
        """Append an authentication or authorization decision to the audit trail."""

    async def ingest(self, decoded: Decoded) -> list[str]:
        """The ids of ``decoded``'s observations once durably committed."""

    def count_response(self, status: int, route: str = "", seconds: float | None = None) -> None:
        """Count an answer (and time it, per route template, when ``seconds``)."""

    def count_refused(self, reason: str, n: int = 1) -> None:
        """Count requests refused before a route ran (``too_large``, ``invalid`` …)."""


def front() -> Front:
    """The front the app serves (``create_app`` puts it in the app's config)."""
    found = current_app.config[DAEMON_KEY]
    if type(found) not in _FRONTS:
        if not isinstance(found, Front):
            raise TypeError(f"app config {DAEMON_KEY} holds {type(found).__name__}, not a Front")
        _FRONTS.add(type(found))
    return cast(Front, found)


def daemon() -> Daemon:
    """The daemon the app serves, for the routes only the daemon serves."""
    from knhkd.loop.daemon import Daemon  # loaded already wherever a Daemon runs

    found = current_app.config[DAEMON_KEY]
    if not isinstance(found, Daemon):
        raise TypeError(f"app config {DAEMON_KEY} holds {type(found).__name__}, not a Daemon")
    return found


def current_principal() -> Principal:
    """Who is asking: the principal api/authn.py's hook resolved (set for
    every non-public route; a ``TypeError`` on a public one)."""
    found = g.get("principal")
    if not isinstance(found, Principal):
        raise TypeError("no principal: the route is public or the hook did not run")
    return found
