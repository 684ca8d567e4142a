"""The HTTP routes, one module per resource, each a quart Blueprint of named
module-level handlers: start at a path's module to find what answers it.

Every handler reaches the daemon through ``base.daemon()`` and calls only its
facade; an error it does not handle itself propagates and is answered by kind
(api/problems.py).
"""
