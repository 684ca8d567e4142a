"""Guard relaxation: the one place that decides when a guard may be off.

``GuardRelaxations`` owns every relaxation record and is the only code that
changes one (in the manner of python-tuf's ``TrustedMetadataSet``: each step is
a method that either applies entirely or raises its own exception and changes
nothing). Each step returns the ``RelaxationEvent`` records the runtime turns
into receipts; each event carries the relaxation record after the step, which
the runtime stores (LMDB, keyed by relaxation id) in the same transaction. The
set is rebuilt from the stored records with ``GuardRelaxations(guards, rules,
records)``.

States and steps::

    (none) ──request──▶ requested ──approve──▶ requested   approval_recorded
                        requested ──approve / activate / advance──▶ approved
                        approved  ──activate──▶ active     window [now, now + window)
                        active    ──advance, window over──▶ ended (window_closed)
    requested, approved ──advance, request expired──▶ ended (expired)
    requested, approved, active ──revoke──▶ ended (revoked)

Rules:
1. Only a guard of the guard set can be relaxed (``UnknownGuard``), never an
   immutable one (``ImmutableGuard``).
2. A guard has at most one open (requested, approved or active) relaxation
   (``RelaxationOpen``).
3. Every step taken by a person names them (``MissingIdentity``): the name of
   the authenticated principal who takes it (``issuer#subject``; the API
   refuses a body naming anyone else), so rule 4 compares principals.
4. The requester may not approve their own request (``SelfApproval``); an
   approver counts once (``DuplicateApproval``); an approved, active or ended
   relaxation takes no more approvals (``AlreadyApproved``, ``RelaxationEnded``).
5. A request is *approved* once ``quorum`` distinct approvers have approved it
   AND ``min_review`` has passed since it was requested (both by criticality:
   Critical 3 / 24 h, High 2 / 12 h, Medium 1 / 1 h, Low 1 / none by default).
   Approvals given before the review time is over count; the request turns
   approved at the first step (approve, activate, advance) at which both hold.
6. A request must be activated before ``expires_at`` (request time + 7 days by
   default). From then on approve and activate raise ``RequestExpired`` and
   ``advance`` ends it as expired.
7. ``activate`` needs an approved request: ``NotApproved`` while the quorum is
   short, ``NotYetReviewable`` while the review time is not over,
   ``AlreadyActive`` when it is active.
8. The guard is relaxed exactly while ``activated_at <= now < active_until``
   of an active record (``is_relaxing``), whether or not ``advance`` has yet
   recorded the window's close: after the window the guard is back on.
9. ``revoke`` ends an open relaxation at once; ``AlreadyRevoked`` if it was
   revoked, ``RelaxationEnded`` if it ended otherwise (including by time not
   yet recorded by ``advance``).
10. No step may be dated before the relaxation's latest step (``Retrocausal``).
11. Quorum, review time, expiry and window are frozen into the record when it
    is requested; a configuration reload does not change an open request.
12. A relaxation's id is the SHA-256 of (guard, requester, reason, request
    time); requesting the same twice at the same instant is ``RelaxationOpen``.

Must never: read a clock (``now_ns`` is given), change a record on a refusal,
or relax a guard outside an activation window.
"""

from __future__ import annotations

from collections.abc import Iterable
from datetime import UTC, datetime

import msgspec

from knhkd.config import GovernanceConfig, QuorumConfig
from knhkd.errors import Conflict, Invalid, NotFound
from knhkd.governance.files import GovernanceError
from knhkd.governance.guards import GuardSet
from knhkd.knowledge.rdf import content_hash
from knhkd.model import Approval, Relaxation, RelaxationEvent, RelaxationStep

_ID_DOMAIN = "knhkd/relaxation/v1"
_NS_PER_HOUR = 3_600_000_000_000


class RelaxationError(GovernanceError, Conflict):
    """A relaxation step the rules refuse. Nothing was changed.

    Each refusal is its own class, and its problem type is the class's name
    (``SelfApproval`` is ``urn:knhkd:problem:self-approval``); a refusal is a
    409 unless it subclasses another kind first (``UnknownGuard`` 404,
    ``MissingIdentity`` 422). The admin socket names the class too."""

    problem = "relaxation-error"
    title = "Relaxation refused"

    def __init_subclass__(cls) -> None:
        super().__init_subclass__()
        cls.problem = "".join(f"-{c.lower()}" if c.isupper() else c for c in cls.__name__)[1:]
        # Set on each class: a kind listed before RelaxationError has its own.
        cls.title = "Relaxation refused"

    def line(self) -> str:
        return f"{type(self).__name__}: {self}"


class UnknownGuard(NotFound, RelaxationError):
    pass


class ImmutableGuard(RelaxationError):
    pass


class RelaxationOpen(RelaxationError):
    pass


class UnknownRelaxation(NotFound, RelaxationError):
    pass


class MissingIdentity(Invalid, RelaxationError):
    pass


class SelfApproval(RelaxationError):
    pass


class DuplicateApproval(RelaxationError):
    pass


class AlreadyApproved(RelaxationError):
    pass


class RequestExpired(RelaxationError):
    pass


class NotApproved(RelaxationError):
    pass


class NotYetReviewable(RelaxationError):
    pass


class AlreadyActive(RelaxationError):
    pass


class AlreadyRevoked(RelaxationError):
    pass


class RelaxationEnded(RelaxationError):
    pass


class Retrocausal(RelaxationError):
    pass


def _iso(ns: int) -> str:
    return datetime.fromtimestamp(ns // 1_000_000_000, tz=UTC).strftime("%Y-%m-%dT%H:%M:%SZ")


def is_relaxing(r: Relaxation, now_ns: int) -> bool:
    """True exactly while ``r`` keeps its guard off (rule 8)."""
    return (
        r.state == "active"
        and r.activated_at_ns is not None
        and r.active_until_ns is not None
        and r.activated_at_ns <= now_ns < r.active_until_ns
    )


def relaxed_guards(records: Iterable[Relaxation], now_ns: int) -> frozenset[str]:
    return frozenset(r.guard_id for r in records if is_relaxing(r, now_ns))


def _quorum_reached_at(r: Relaxation) -> int | None:
    """When the request first met both conditions of rule 5, or None."""
    if len(r.approvals) < r.quorum:
        return None
    quorum_at = sorted(a.at_ns for a in r.approvals)[r.quorum - 1]
    return max(quorum_at, r.requested_at_ns + r.min_review_ns)


class GuardRelaxations:
    """Every guard relaxation, and the only code that changes one."""

    def __init__(self, guards: GuardSet, rules: GovernanceConfig,
                 records: Iterable[Relaxation] = ()) -> None:
        self._guards = guards
        self._rules = rules
        self._records: dict[str, Relaxation] = {}
        open_guards: set[str] = set()
        for r in records:
            if r.id in self._records:
                raise RelaxationError(f"relaxation {r.id[:16]} is stored twice")
            if r.state != "ended":
                if r.guard_id in open_guards:
                    raise RelaxationError(f"guard {r.guard_id} has two open relaxations")
                open_guards.add(r.guard_id)
            self._records[r.id] = r

    # ---- reads ------------------------------------------------------------ #

    @property
    def guards(self) -> GuardSet:
        return self._guards

    def replace_guards(self, guards: GuardSet) -> None:
        """A reloaded guard set. Records of guards it no longer has stay, inert."""
        self._guards = guards

    def records(self) -> list[Relaxation]:
        return sorted(self._records.values(), key=lambda r: (r.requested_at_ns, r.id))

    def get(self, relaxation_id: str) -> Relaxation:
        r = self._records.get(relaxation_id)
        if r is None:
            raise UnknownRelaxation(f"no relaxation {relaxation_id!r}")
        return r

    def relaxed_guards(self, now_ns: int) -> frozenset[str]:
        return relaxed_guards(self._records.values(), now_ns)

    # ---- steps ------------------------------------------------------------ #

    def request(self, guard_id: str, requester: str, reason: str,
                now_ns: int) -> RelaxationEvent:
        _identity(requester, "requester")
        guard = self._guards.get(guard_id)
        if guard is None:
            raise UnknownGuard(f"no guard {guard_id!r}")
        if guard.immutable:
            raise ImmutableGuard(f"guard {guard_id} is immutable and cannot be relaxed")
        for r in self._records.values():
            if r.guard_id == guard_id and r.state != "ended":
                raise RelaxationOpen(
                    f"guard {guard_id} already has relaxation {r.id[:16]} ({r.state})"
                )
        table: QuorumConfig = getattr(self._rules, guard.criticality)
        rid = content_hash(_ID_DOMAIN, {
            "guard_id": guard_id, "requester": requester, "reason": reason,
            "requested_at_ns": now_ns,
        })
        if rid in self._records:
            raise RelaxationOpen(f"relaxation {rid[:16]} was already requested")
        record = Relaxation(
            id=rid,
            guard_id=guard_id,
            criticality=guard.criticality,
            requester=requester,
            reason=reason,
            requested_at_ns=now_ns,
            quorum=table.quorum,
            min_review_ns=round(table.min_review_h * _NS_PER_HOUR),
            expires_at_ns=now_ns + round(self._rules.request_expiry_h * _NS_PER_HOUR),
            window_ns=round(self._rules.activation_window_h * _NS_PER_HOUR),
            updated_at_ns=now_ns,
        )
        self._records[rid] = record
        return self._event("requested", record, requester, now_ns,
                           f"{guard.criticality}: {record.quorum} approver(s), review "
                           f"{table.min_review_h:g} h, expires {_iso(record.expires_at_ns)}")

    def approve(self, relaxation_id: str, approver: str, now_ns: int) -> list[RelaxationEvent]:
        _identity(approver, "approver")
        r = self._open(relaxation_id, now_ns)
        if r.state != "requested":
            raise AlreadyApproved(f"relaxation {r.id[:16]} is already {r.state}")
        if now_ns >= r.expires_at_ns:
            raise RequestExpired(f"relaxation {r.id[:16]} expired at {_iso(r.expires_at_ns)}")
        if approver == r.requester:
            raise SelfApproval(f"{approver} requested relaxation {r.id[:16]} and may not "
                               "approve it")
        if any(a.approver == approver for a in r.approvals):
            raise DuplicateApproval(f"{approver} has already approved relaxation {r.id[:16]}")
        r = msgspec.structs.replace(
            r, approvals=(*r.approvals, Approval(approver, now_ns)), updated_at_ns=now_ns
        )
        events = [self._commit("approval_recorded", r, approver, now_ns,
                               f"{len(r.approvals)} of {r.quorum} approval(s)")]
        approved = self._approve_if_due(r, approver, now_ns)
        if approved is not None:
            events.append(approved)
        return events

    def activate(self, relaxation_id: str, actor: str, now_ns: int) -> list[RelaxationEvent]:
        _identity(actor, "actor")
        r = self._open(relaxation_id, now_ns)
        if r.state == "active":
            raise AlreadyActive(f"relaxation {r.id[:16]} is active until "
                                f"{_iso(r.active_until_ns or 0)}")
        if now_ns >= r.expires_at_ns:
            raise RequestExpired(f"relaxation {r.id[:16]} expired at {_iso(r.expires_at_ns)}")
        events = []
        if r.state == "requested":
            if len(r.approvals) < r.quorum:
                raise NotApproved(f"relaxation {r.id[:16]} has {len(r.approvals)} of "
                                  f"{r.quorum} approval(s)")
            reviewable = r.requested_at_ns + r.min_review_ns
            if now_ns < reviewable:
                raise NotYetReviewable(f"relaxation {r.id[:16]} is under review until "
                                       f"{_iso(reviewable)}")
            approved = self._approve_if_due(r, actor, now_ns)
            assert approved is not None  # both conditions were just checked
            events.append(approved)
            r = approved.record
        r = msgspec.structs.replace(
            r, state="active", activated_at_ns=now_ns, active_until_ns=now_ns + r.window_ns,
            updated_at_ns=now_ns,
        )
        events.append(self._commit("activated", r, actor, now_ns,
                                   f"guard {r.guard_id} off until {_iso(now_ns + r.window_ns)}"))
        return events

    def revoke(self, relaxation_id: str, actor: str, reason: str,
               now_ns: int) -> RelaxationEvent:
        _identity(actor, "actor")
        r = self._open(relaxation_id, now_ns)
        r = msgspec.structs.replace(
            r, state="ended", end_reason="revoked", ended_at_ns=now_ns, ended_by=actor,
            end_detail=reason, updated_at_ns=now_ns,
        )
        return self._commit("revoked", r, actor, now_ns, reason or "revoked")

    def advance(self, now_ns: int) -> list[RelaxationEvent]:
        """Record the transitions time alone makes (rules 5, 6, 8)."""
        for r in self._records.values():
            if r.state != "ended" and now_ns < r.updated_at_ns:
                raise Retrocausal(f"advance to {now_ns} is before relaxation {r.id[:16]}'s "
                                  f"latest step at {r.updated_at_ns}")
        events = []
        for r in self.records():
            if r.state == "ended":
                continue
            if r.state == "active" and r.active_until_ns is not None:
                if now_ns >= r.active_until_ns:
                    events.append(self._end(r, "window_closed", r.active_until_ns, now_ns))
                continue
            if now_ns >= r.expires_at_ns:
                events.append(self._end(r, "expired", r.expires_at_ns, now_ns))
                continue
            if r.state == "requested":
                approved = self._approve_if_due(r, "", now_ns)
                if approved is not None:
                    events.append(approved)
        return events

    # ---- internals -------------------------------------------------------- #

    def _open(self, relaxation_id: str, now_ns: int) -> Relaxation:
        """The record, if a person may still act on it at ``now_ns``."""
        r = self.get(relaxation_id)
        if now_ns < r.updated_at_ns:
            raise Retrocausal(f"{now_ns} is before relaxation {r.id[:16]}'s latest step at "
                              f"{r.updated_at_ns}")
        if r.state == "ended":
            if r.end_reason == "revoked":
                raise AlreadyRevoked(f"relaxation {r.id[:16]} was revoked by {r.ended_by}")
            raise RelaxationEnded(f"relaxation {r.id[:16]} ended ({r.end_reason})")
        if r.state == "active" and r.active_until_ns is not None and now_ns >= r.active_until_ns:
            raise RelaxationEnded(f"relaxation {r.id[:16]}'s window closed at "
                                  f"{_iso(r.active_until_ns)}")
        return r

    def _approve_if_due(self, r: Relaxation, actor: str, now_ns: int) -> RelaxationEvent | None:
        at = _quorum_reached_at(r)
        if r.state != "requested" or at is None or now_ns < at:
            return None
        r = msgspec.structs.replace(r, state="approved", approved_at_ns=at, updated_at_ns=now_ns)
        approvers = ", ".join(a.approver for a in r.approvals)
        return self._commit("approved", r, actor, now_ns, f"approved by {approvers}")

    def _end(self, r: Relaxation, reason: str, at_ns: int, now_ns: int) -> RelaxationEvent:
        step: RelaxationStep = "window_closed" if reason == "window_closed" else "expired"
        r = msgspec.structs.replace(
            r, state="ended", end_reason=step, ended_at_ns=at_ns, updated_at_ns=now_ns
        )
        return self._commit(step, r, "", now_ns, f"{step.replace('_', ' ')} at {_iso(at_ns)}")

    def _commit(self, step: RelaxationStep, r: Relaxation, actor: str, now_ns: int,
                detail: str) -> RelaxationEvent:
        self._records[r.id] = r
        return self._event(step, r, actor, now_ns, detail)

    @staticmethod
    def _event(step: RelaxationStep, r: Relaxation, actor: str, now_ns: int,
               detail: str) -> RelaxationEvent:
        return RelaxationEvent(step=step, relaxation_id=r.id, guard_id=r.guard_id,
                               actor=actor, at_ns=now_ns, detail=detail, record=r)


def _identity(who: str, role: str) -> None:
    if not who.strip():
        raise MissingIdentity(f"the {role} must be named")
