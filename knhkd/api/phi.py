"""Reads of protected health information (seed §6.2): a healthcare
observation is answered only with a justification, to a fresh token, and
every answered read goes through ``on_phi_access``.

Guarantees:
- A read of a ``healthcare`` observation needs the header named by
  ``auth.phi_justification_header`` (default ``X-Access-Justification``),
  1-512 characters after trimming: missing, empty or longer is 403
  ``justification-required``, authentication on or off (``anonymous`` too).
- With tokens, one issued (``iat``) more than ``auth.phi_max_token_age_s``
  ago (default 900) is 401 ``token-too-old`` with a ``WWW-Authenticate:
  Bearer … error="invalid_token"`` challenge: a fresh token is the remedy,
  so it is an authentication failure, not a lack of permission.
- Every answered read calls ``on_phi_access`` (principal, observation id,
  justification) before the content leaves, which appends it to the audit
  trail (event ``phi_read``, sector healthcare, the justification and the
  observation id in ``detail``); a read whose audit record cannot be queued
  is refused (503), never answered unaudited. Refusals are logged by
  ``knhkd.access`` as denies and audited too.

Must never: log or pass on the observation's content; answer a healthcare
observation past a refusal.
"""

from __future__ import annotations

import logging
import time

from quart import has_request_context, request

from knhkd.api.context import daemon
from knhkd.auth.tokens import REALM
from knhkd.config import AuthConfig
from knhkd.errors import Forbidden, Unauthorized, Unavailable
from knhkd.model import AuditDecision, AuditRecord, Observation, Principal

access = logging.getLogger("knhkd.access")

MAX_JUSTIFICATION = 512
PHI_SECTORS = frozenset({"healthcare"})


class JustificationRequired(Forbidden):
    problem = "justification-required"
    title = "Justification required"


class TokenTooOld(Unauthorized):
    problem = "token-too-old"
    title = "Token too old"


class AuditUnavailable(Unavailable):
    problem = "audit-unavailable"
    title = "Audit trail unavailable"
    retry_after = 1


def _audit(
    principal: Principal, observation_id: str, decision: AuditDecision, reason: str, why: str
) -> bool:
    detail = {"observation_id": observation_id}
    if why:
        detail["justification"] = why
    return daemon().audit_nowait(
        AuditRecord(
            event="phi_read",
            principal=principal.name,
            route=f"GET /api/v1/observations/{observation_id}",
            decision=decision,
            reason=reason,
            peer=request.remote_addr or "" if has_request_context() else "",
            sector="healthcare",
            detail=detail,
        )
    )


def on_phi_access(principal: Principal, observation_id: str, justification: str) -> None:
    """Every read of a healthcare observation that is answered: logged, and
    appended to the audit trail (``Daemon.audit_nowait``); raises
    ``AuditUnavailable`` (503) when the record cannot be queued, so the
    content never leaves unaudited. Never given the observation's content."""
    access.info(
        "allow phi read of observation %s by %s: %r", observation_id, principal.name, justification
    )
    if not _audit(principal, observation_id, "allow", "justified", justification):
        raise AuditUnavailable("the audit trail cannot take the record of this read now")


def check_phi_read(
    cfg: AuthConfig,
    principal: Principal,
    observation: Observation,
    justification: str | None,
    now: float | None = None,
) -> None:
    """Refuse (raise) or record (``on_phi_access``) a read of ``observation``;
    nothing for another sector's."""
    if observation.sector not in PHI_SECTORS:
        return
    now = time.time() if now is None else now
    if principal.issued_at is not None and now - principal.issued_at > cfg.phi_max_token_age_s:
        access.info(
            "deny phi read of observation %s by %s: token older than %gs",
            observation.id, principal.name, cfg.phi_max_token_age_s,
        )
        _audit(principal, observation.id, "deny", "token too old", "")
        raise TokenTooOld(
            f"healthcare observations are read with a token at most "
            f"{cfg.phi_max_token_age_s:g} s old (auth.phi_max_token_age_s): get a fresh one",
            challenge=f'{REALM}, error="invalid_token", '
            f'error_description="token too old for healthcare reads"',
        )
    text = (justification or "").strip()
    if not 0 < len(text) <= MAX_JUSTIFICATION:
        access.info(
            "deny phi read of observation %s by %s: no valid justification",
            observation.id, principal.name,
        )
        _audit(principal, observation.id, "deny", "no valid justification", "")
        raise JustificationRequired(
            f"reading a healthcare observation needs a {cfg.phi_justification_header} "
            f"header of 1-{MAX_JUSTIFICATION} characters saying why"
        )
    on_phi_access(principal, observation.id, text)
