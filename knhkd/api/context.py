"""What a request handler reaches of the app it runs in: the daemon the app
serves, and the principal the request was made by.

Below every other module of api/ (routes, authn, phi import it, it imports
none of them), so the one accessor serves all of them without an import
cycle between siblings.

Guarantees: ``daemon()`` is the ``Daemon`` ``create_app`` put under
``DAEMON_KEY`` (a ``TypeError`` otherwise, never a wrong object);
``current_principal()`` is the principal api/authn.py's hook resolved (a
``TypeError`` on a public route, where none is).
"""

from __future__ import annotations

from quart import current_app, g

from knhkd.loop.daemon import Daemon
from knhkd.model import Principal

DAEMON_KEY = "KNHKD_DAEMON"


def daemon() -> Daemon:
    """The daemon the app serves (``create_app`` puts it in the app's config)."""
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
