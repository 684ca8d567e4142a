"""Authentication and authorization at the HTTP door.

One ``before_request`` hook (registered by ``create_app`` after the edge's
Host/Origin checks) resolves who is asking into ``quart.g.principal`` and
checks the permission the route needs, from the one table below
(``ROUTE_PERMISSIONS``, by endpoint name; README "Authentication" shows it).

Guarantees:
- A route missing from the table is refused to everyone (403): a new route
  must be given a permission before anyone can call it
  (tests/integration/test_authz.py holds the table to the app's url_map).
  ``PUBLIC`` routes (``/health``, ``/ready``) are answered without asking.
- With ``[[auth.issuers]]`` configured, every other request needs
  ``Authorization: Bearer <JWT>`` of a configured issuer
  (knhkd/auth/tokens.py): none, or one that does not verify, is 401
  ``unauthorized`` with an RFC 6750 ``WWW-Authenticate: Bearer`` challenge
  (``error="invalid_token"`` and the reason when a token was given). A token
  naming an unknown key makes one refresh of its issuer's keys (on a worker
  thread, one at a time per issuer, at most once per ``jwks_min_refresh_s``)
  before the 401.
- A request without an Authorization header over a connection whose
  verified client certificate matches ``[[http.tls.client_principals]]``
  (knhkd/auth/tls.py) is the principal ``mtls#<subject>`` with that entry's
  roles; a bearer token, when given (and issuers are configured), decides
  instead. With client certificates required and principals mapped,
  authentication is on even without issuers: a request that is neither a
  mapped certificate nor a valid token is 401.
- Without issuers or required mapped client certificates, authentication is
  off: every other caller is the principal ``anonymous`` holding
  ``auth.anonymous_permissions`` (an Authorization header is then ignored),
  and config.py has already refused a non-loopback ``http.bind``.
- An authenticated principal without the route's permission is 403
  ``forbidden`` (``error="insufficient_scope"`` when tokens are checked); a
  principal over its rate limit is 429 with ``Retry-After``
  (knhkd/auth/ratelimit.py), counted before the permission check so refused
  requests spend the budget too.
- Every decision goes through ``on_decision``: it logs to ``knhkd.access``
  (refusals and allowed mutations at info, allowed reads and ingest at
  debug: an info line per ingested request would cost more than the check)
  and appends every one but an allowed read to the audit trail
  (``Daemon.audit``, loop/auditor.py).

Must never: log or answer with a token or key material (reasons are fixed
texts of knhkd/auth/tokens.py); block the event loop on a key fetch.
"""

from __future__ import annotations

import logging
import time
from collections.abc import MutableMapping
from typing import Any, Final, Literal

import trio
from quart import g, request
from quart_trio import QuartTrio

from knhkd.api.context import Front
from knhkd.api.guards import close_if_body_unread
from knhkd.api.routes.base import current_principal as current_principal  # noqa: PLC0414
from knhkd.api.routes.base import front
from knhkd.auth.jwks import IssuerKeys
from knhkd.auth.ratelimit import RateLimiter, SharedBuckets
from knhkd.auth.roles import anonymous
from knhkd.auth.tls import client_principal
from knhkd.auth.tokens import REALM, UNKNOWN_KEY, KeyNeeded, Verifier, refused
from knhkd.config import AuthConfig, Config, TlsConfig
from knhkd.errors import Forbidden, TooManyRequests, Unauthorized
from knhkd.model import AuditRecord, Permission, Principal

log = logging.getLogger("knhkd.auth")
access = logging.getLogger("knhkd.access")

PUBLIC: Final = "PUBLIC"
Need = Permission | Literal["PUBLIC"]

# Route (endpoint name) → the permission it needs. The README's table is this one.
ROUTE_PERMISSIONS: dict[str, Need] = {
    "health.health": PUBLIC,
    "health.ready": PUBLIC,
    # The API's description is no secret: a client reads it before it has a token.
    "openapi.openapi_json": PUBLIC,
    "health.metrics": "READ_METRICS",
    "observations.ingest": "INGEST",
    "observations.get_observation": "READ_OBSERVATIONS",
    "patterns.list_patterns": "READ_OBSERVATIONS",
    "patterns.detect": "DETECT_PATTERNS",
    "snapshots.list_snapshots": "READ_SNAPSHOTS",
    "snapshots.current_snapshot": "READ_SNAPSHOTS",
    "snapshots.snapshot_diff": "READ_SNAPSHOTS",
    "snapshots.rollback": "PROMOTE_SNAPSHOTS",
    "proposals.get_proposal": "READ_SNAPSHOTS",
    "proposals.submit_proposal": "GENERATE_PROPOSALS",
    "proposals.validate_proposal": "VALIDATE_PROPOSALS",
    "proposals.promote_proposal": "PROMOTE_SNAPSHOTS",
    "proposals.sign_proposal": "GOVERN",
    "governance.guards": "READ_SNAPSHOTS",
    "governance.doctrines": "READ_SNAPSHOTS",
    "governance.get_relaxation": "READ_SNAPSHOTS",
    "governance.request_relaxation": "GOVERN",
    "governance.approve_relaxation": "GOVERN",
    "governance.activate_relaxation": "GOVERN",
    "governance.revoke_relaxation": "GOVERN",
    "receipts.list_receipts": "READ_RECEIPTS",
    "receipts.latest_checkpoint": "READ_RECEIPTS",
    "receipts.inclusion_proof": "READ_RECEIPTS",
    "receipts.consistency_proof": "READ_RECEIPTS",
    "cycle.run_cycle": "EXECUTE_MAPE_K",
    # Erasure destroys data: administrators only, as ``knhkctl erase``.
    "privacy.erase": "ALL",
    # POST /api/v1/_noop (http.noop_endpoint, bench/ only): ingest's baseline.
    "bench.noop": "INGEST",
}

_QUIET: frozenset[Need] = frozenset({"INGEST", PUBLIC})


async def on_decision(
    to: Front,
    principal: Principal | None,
    route: str,
    decision: Literal["allow", "deny"],
    reason: str,
    *,
    peer: str = "",
) -> None:
    """Every authentication and authorization decision of the HTTP door.

    ``principal`` is None when no one was authenticated; ``route`` is
    ``METHOD /rule``; ``reason`` a fixed text (never a token). Logged to
    ``knhkd.access``, and appended to ``to``'s audit trail (``Front.audit``:
    queued for the auditor's group commit, no fsync of its own) unless it is
    an allowed read (GET): those are too many to receipt each, and a read of
    healthcare observations is audited by its route with its justification.
    So the trail holds every failed authentication (event ``authn``), every
    refusal, and every allowed request to a route that changes something
    (event ``authz``; an allowed request implies its authentication
    succeeded).
    """
    who = principal.name if principal is not None else "-"
    read = route.startswith("GET ") or route.startswith("HEAD ")
    quiet = decision == "allow" and (read or reason in _QUIET)
    level = logging.DEBUG if quiet else logging.INFO
    if access.isEnabledFor(level):
        access.log(level, "%s %s by %s from %s: %s", decision, route, who, peer or "-", reason)
    if decision == "allow" and read:
        return
    await to.audit(
        AuditRecord(
            event="authn" if principal is None else "authz",
            principal=who,
            route=route,
            decision=decision,
            reason=reason,
            peer=peer,
        )
    )


def bearer(header: str | None) -> str:
    """The token of an ``Authorization: Bearer`` header (RFC 6750 §2.1)."""
    if not header:
        raise Unauthorized("this route needs a bearer token (Authorization: Bearer <JWT>)")
    scheme, _, token = header.strip().partition(" ")
    token = token.strip()
    if scheme.lower() != "bearer" or not token or " " in token:
        raise Unauthorized(
            "the Authorization header is not 'Bearer <JWT>'",
            challenge=f'{REALM}, error="invalid_request"',
        )
    return token


class AuthState:
    """The verifier, key sets and buckets of one ``[auth]`` configuration."""

    def __init__(
        self, cfg: AuthConfig, tls: TlsConfig | None = None, buckets: SharedBuckets | None = None
    ) -> None:
        self.cfg = cfg
        self.tls = tls if tls is not None else TlsConfig()
        # Authentication is on (config.Config.auth_enabled's rule).
        self.required = bool(cfg.issuers) or self.tls.mapped_client_cert_required
        self.keys = {i.issuer: IssuerKeys(i) for i in cfg.issuers}
        now = time.monotonic()
        for keys in self.keys.values():
            if keys.cfg.jwks_file:  # a small local file: read it now
                keys.refresh(now)
        self.verifier = Verifier(cfg, self.keys)
        self.limiter = RateLimiter(cfg.rate_limit, buckets)
        self.anonymous = anonymous(cfg)
        self._locks = {issuer: trio.Lock() for issuer in self.keys}

    async def authenticate(self, header: str | None, tls: Any = None) -> Principal:
        """Who is asking: by bearer token, else by client certificate
        (``tls``: the connection's ASGI tls extension), else anonymous while
        authentication is off."""
        if not (header and self.cfg.issuers) and isinstance(tls, dict):
            subject = tls.get("client_cert_name")
            if subject and self.tls.client_principals:
                found_cert = client_principal(
                    self.tls.client_principals, subject, tls.get("client_cert_cn") or ""
                )
                if found_cert is not None:
                    return found_cert
        if not self.required:
            return self.anonymous
        if not self.cfg.issuers:
            raise Unauthorized(
                "this route needs a client certificate mapped to a principal "
                "([[http.tls.client_principals]])"
            )
        token = bearer(header)
        for keys in self.keys.values():
            if keys.stale(time.monotonic()):
                await self.refresh(keys.cfg.issuer)
        found = self.verifier.verify(token, time.time())
        if isinstance(found, KeyNeeded) and await self.refresh(found.issuer):
            found = self.verifier.verify(token, time.time())
        if isinstance(found, KeyNeeded):
            raise refused(UNKNOWN_KEY)
        return found

    async def refresh(self, issuer: str) -> bool:
        """Refresh one issuer's keys (one at a time, rate-limited); True iff
        they changed since the caller looked."""
        keys = self.keys[issuer]
        before = keys.digest
        async with self._locks[issuer]:
            if keys.digest != before:  # refreshed while we waited
                return True
            now = time.monotonic()
            if not keys.may_refresh(now):
                return False
            changed = await trio.to_thread.run_sync(keys.refresh, now)
        if changed:
            self.verifier.forget()
        return changed


STATE_KEY = "KNHKD_AUTH"
# Where a holder keeps the rate-limit buckets its daemon's processes share
# (``share_buckets``); without it, the process's own.
BUCKETS_KEY = "KNHKD_RATE_BUCKETS"


def state_of(holder: MutableMapping[str, Any], cfg: Config) -> AuthState:
    """The state for the configuration in force, kept in ``holder`` under
    ``STATE_KEY`` (the app's config; api/edge.py's own mapping); rebuilt when
    a reload changed ``[auth]`` or ``[http.tls]``."""
    auth, tls = cfg.auth, cfg.http.tls
    state = holder.get(STATE_KEY)
    if not isinstance(state, AuthState):
        state = AuthState(auth, tls, holder.get(BUCKETS_KEY))
        holder[STATE_KEY] = state
    elif state.cfg is not auth or state.tls is not tls:
        if state.cfg == auth and state.tls == tls:  # a reload that left them as they were
            state.cfg = auth
            state.tls = tls
        else:
            state = AuthState(auth, tls, holder.get(BUCKETS_KEY))
            holder[STATE_KEY] = state
            log.info("authentication configuration reloaded")
    return state


def share_buckets(holder: MutableMapping[str, Any], buckets: SharedBuckets) -> None:
    """Rate-limit ``holder``'s requests from ``buckets`` from now on (a
    daemon with HTTP workers: one table for all its processes)."""
    holder[BUCKETS_KEY] = buckets
    state = holder.get(STATE_KEY)
    if isinstance(state, AuthState):
        state.limiter = RateLimiter(state.cfg.rate_limit, buckets)


async def authenticate_request(
    state: AuthState, to: Front, route: str, authorization: str | None, tls: Any, peer: str
) -> Principal:
    """Who sent a request to ``route`` (``METHOD /rule``): its principal, or
    ``Unauthorized`` once the refusal is decided (``on_decision``)."""
    try:
        return await state.authenticate(authorization, tls)
    except Unauthorized as exc:
        await on_decision(to, None, route, "deny", exc.detail, peer=peer)
        raise


async def permit(
    state: AuthState, to: Front, principal: Principal, need: Permission | None, route: str,
    peer: str,
) -> None:
    """Whether ``principal`` may call ``route`` now: its rate limit (429
    ``TooManyRequests``), then the permission the route needs (403
    ``Forbidden``; None: the route declares none), each decided through
    ``on_decision``, as is the allowance."""
    wait = state.limiter.take(principal, time.monotonic())
    if wait > 0:
        await on_decision(to, principal, route, "deny", "rate limited", peer=peer)
        raise TooManyRequests(
            f"{principal.name} is over its rate limit", retry_after=max(1, int(wait + 0.999))
        )
    if need is None or not principal.may(need):
        why = f"needs {need}" if need else "no permission is declared for this route"
        await on_decision(to, principal, route, "deny", why, peer=peer)
        raise _forbidden(principal, route, why, state.cfg)
    await on_decision(to, principal, route, "allow", need, peer=peer)


def install(app: QuartTrio, cfg: AuthConfig, tls: TlsConfig | None = None) -> None:
    """Register the hook (after the edge checks, before any route)."""
    state = AuthState(cfg, tls)
    app.config[STATE_KEY] = state
    _log_posture(state)

    @app.before_request
    async def _authorize() -> None:
        endpoint = request.endpoint
        if endpoint is None:  # no such route: Quart answers 404 or 405
            return
        need = ROUTE_PERMISSIONS.get(endpoint)
        if need == PUBLIC:
            return
        rule = request.url_rule.rule if request.url_rule is not None else request.path
        route = f"{request.method} {rule}"
        peer = request.remote_addr or ""
        to = front()
        state = state_of(app.config, to.cfg)
        try:
            principal = await authenticate_request(
                state,
                to,
                route,
                request.headers.get("Authorization"),
                request.scope.get("extensions", {}).get("tls"),
                peer,
            )
            g.principal = principal
            await permit(state, to, principal, need, route, peer)
        except REFUSALS:
            close_if_body_unread()
            raise


def _log_posture(state: AuthState) -> None:
    cfg = state.cfg
    if state.tls.client_principals:
        log.info(
            "client certificates map to principals (%d entries, client_cert = %s)",
            len(state.tls.client_principals),
            state.tls.client_cert,
        )
    if cfg.issuers:
        log.info(
            "authentication on: bearer tokens of %s",
            ", ".join(i.issuer for i in cfg.issuers),
        )
    elif state.required:
        log.info("authentication on: client certificates only (no [[auth.issuers]])")
    else:
        log.warning(
            "authentication is off (no [[auth.issuers]]): every HTTP caller is 'anonymous' with %s",
            ", ".join(cfg.anonymous_permissions) or "no permission",
        )


# What the door refuses a request with (a refused request's body is never read).
REFUSALS = (Unauthorized, TooManyRequests, Forbidden)


def _forbidden(principal: Principal, route: str, why: str, cfg: AuthConfig) -> Forbidden:
    detail = f"{principal.name} may not {route}: {why}"
    if not cfg.issuers and not principal.issuer:
        detail += (
            "; authentication is off, so every caller is 'anonymous' "
            "(configure [[auth.issuers]], or auth.anonymous_permissions)"
        )
    exc = Forbidden(detail)
    if cfg.issuers:
        exc.www_authenticate = f'{REALM}, error="insufficient_scope"'
    return exc
