"""knhkd.governance.relaxation: the guard-relaxation state machine.

Identity: approvers and requesters are names the caller declares (until
authentication, its own issue, lands); these tests exercise the rules about
distinct names, not who may claim a name.
"""

from __future__ import annotations

import msgspec
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from knhkd.config import GovernanceConfig
from knhkd.governance.guards import GuardSet
from knhkd.governance.relaxation import (
    AlreadyActive,
    AlreadyApproved,
    AlreadyRevoked,
    DuplicateApproval,
    GuardRelaxations,
    ImmutableGuard,
    MissingIdentity,
    NotApproved,
    NotYetReviewable,
    RelaxationEnded,
    RelaxationError,
    RelaxationOpen,
    RequestExpired,
    Retrocausal,
    SelfApproval,
    UnknownGuard,
    UnknownRelaxation,
    is_relaxing,
)
from knhkd.model import Criticality, Guard, Relaxation

H = 3_600_000_000_000
T0 = 1_750_000_000_000_000_000
RULES = GovernanceConfig()


def _guards() -> GuardSet:
    def g(gid: str, crit: Criticality, immutable: bool = False) -> Guard:
        return Guard(id=gid, name=gid, criticality=crit, immutable=immutable,
                     protected_classes=[f"urn:ex:{gid}"])

    return GuardSet((g("crit", "critical"), g("high", "high"), g("med", "medium"),
                     g("low", "low"), g("frozen", "critical", immutable=True)))


def _book() -> GuardRelaxations:
    return GuardRelaxations(_guards(), RULES)


def test_quorum_and_review_time_follow_criticality() -> None:
    book = _book()
    want = {"crit": (3, 24), "high": (2, 12), "med": (1, 1), "low": (1, 0)}
    for gid, (quorum, hours) in want.items():
        r = book.request(gid, "req", "why", T0).record
        assert (r.quorum, r.min_review_ns) == (quorum, hours * H)
        assert r.expires_at_ns == T0 + 7 * 24 * H and r.window_ns == 1 * H


def test_critical_path_request_approve_activate_expire() -> None:
    book = _book()
    ev = book.request("crit", "rita", "migrate accounts", T0)
    assert ev.step == "requested" and ev.actor == "rita" and ev.record.state == "requested"
    rid = ev.relaxation_id
    assert [e.step for e in book.approve(rid, "a1", T0 + 1 * H)] == ["approval_recorded"]
    assert [e.step for e in book.approve(rid, "a2", T0 + 2 * H)] == ["approval_recorded"]
    with pytest.raises(NotApproved):
        book.activate(rid, "rita", T0 + 25 * H)
    # Quorum reached before the 24 h review: still requested.
    assert [e.step for e in book.approve(rid, "a3", T0 + 3 * H)] == ["approval_recorded"]
    assert book.get(rid).state == "requested"
    with pytest.raises(NotYetReviewable):
        book.activate(rid, "rita", T0 + 23 * H)
    events = book.activate(rid, "rita", T0 + 24 * H)
    assert [e.step for e in events] == ["approved", "activated"]
    r = book.get(rid)
    assert r.state == "active" and r.approved_at_ns == T0 + 24 * H
    assert r.active_until_ns == T0 + 25 * H
    assert book.relaxed_guards(T0 + 24 * H) == {"crit"}
    assert book.relaxed_guards(T0 + 25 * H - 1) == {"crit"}
    # After the window the guard is back on, before advance records it.
    assert book.relaxed_guards(T0 + 25 * H) == frozenset()
    with pytest.raises(RelaxationEnded):
        book.revoke(rid, "rita", "late", T0 + 26 * H)
    (closed,) = book.advance(T0 + 26 * H)
    assert closed.step == "window_closed" and closed.actor == ""
    assert closed.record.state == "ended" and closed.record.ended_at_ns == T0 + 25 * H


def test_a_relaxation_cannot_be_approved_twice_by_the_same_approver() -> None:
    book = _book()
    rid = book.request("high", "rita", "why", T0).relaxation_id
    book.approve(rid, "alice", T0 + 1)
    before = book.get(rid)
    with pytest.raises(DuplicateApproval):
        book.approve(rid, "alice", T0 + 2)
    assert book.get(rid) == before  # a refusal changes nothing


def test_the_requester_may_not_approve_their_own_request() -> None:
    book = _book()
    rid = book.request("low", "rita", "why", T0).relaxation_id
    with pytest.raises(SelfApproval):
        book.approve(rid, "rita", T0 + 1)


def test_low_criticality_needs_one_approval_and_no_review() -> None:
    book = _book()
    rid = book.request("low", "rita", "why", T0).relaxation_id
    assert [e.step for e in book.approve(rid, "alice", T0)] == ["approval_recorded", "approved"]
    with pytest.raises(AlreadyApproved):
        book.approve(rid, "bob", T0 + 1)
    assert [e.step for e in book.activate(rid, "rita", T0 + 2)] == ["activated"]
    with pytest.raises(AlreadyActive):
        book.activate(rid, "rita", T0 + 3)


def test_advance_approves_once_the_review_time_is_over() -> None:
    book = _book()
    rid = book.request("med", "rita", "why", T0).relaxation_id
    book.approve(rid, "alice", T0 + 1)
    assert book.advance(T0 + H - 1) == []
    (ev,) = book.advance(T0 + H)
    assert ev.step == "approved" and ev.record.approved_at_ns == T0 + H


def test_requests_expire_after_seven_days() -> None:
    book = _book()
    rid = book.request("high", "rita", "why", T0).relaxation_id
    book.approve(rid, "alice", T0 + 1)
    week = T0 + 7 * 24 * H
    with pytest.raises(RequestExpired):
        book.approve(rid, "bob", week)
    with pytest.raises(RequestExpired):
        book.activate(rid, "rita", week)
    (ev,) = book.advance(week)
    assert ev.step == "expired" and ev.record.end_reason == "expired"
    # Ended: a new request for the guard may be made.
    assert book.request("high", "rita", "again", week + 1).record.state == "requested"


def test_approved_but_never_activated_also_expires() -> None:
    book = _book()
    rid = book.request("low", "rita", "why", T0).relaxation_id
    book.approve(rid, "alice", T0)
    (ev,) = book.advance(T0 + 7 * 24 * H)
    assert ev.step == "expired"


def test_revocation() -> None:
    book = _book()
    rid = book.request("low", "rita", "why", T0).relaxation_id
    book.approve(rid, "alice", T0)
    book.activate(rid, "rita", T0 + 1)
    assert book.relaxed_guards(T0 + 2) == {"low"}
    ev = book.revoke(rid, "sec-officer", "incident 42", T0 + 3)
    assert ev.step == "revoked" and ev.record.ended_by == "sec-officer"
    assert ev.record.end_detail == "incident 42"
    assert book.relaxed_guards(T0 + 4) == frozenset()
    with pytest.raises(AlreadyRevoked):
        book.revoke(rid, "sec-officer", "again", T0 + 5)
    with pytest.raises(AlreadyRevoked):
        book.approve(rid, "bob", T0 + 5)


def test_refusals() -> None:
    book = _book()
    with pytest.raises(ImmutableGuard):
        book.request("frozen", "rita", "why", T0)
    with pytest.raises(UnknownGuard):
        book.request("nope", "rita", "why", T0)
    with pytest.raises(MissingIdentity):
        book.request("low", " ", "why", T0)
    rid = book.request("low", "rita", "why", T0).relaxation_id
    with pytest.raises(RelaxationOpen):
        book.request("low", "bob", "other", T0 + 1)
    with pytest.raises(MissingIdentity):
        book.approve(rid, "", T0 + 1)
    with pytest.raises(UnknownRelaxation):
        book.approve("f" * 64, "bob", T0 + 1)
    book.approve(rid, "bob", T0 + 10)
    with pytest.raises(Retrocausal):
        book.activate(rid, "rita", T0 + 5)


def test_records_persist_and_rebuild() -> None:
    book = _book()
    a = book.request("crit", "rita", "why", T0).relaxation_id
    book.approve(a, "x", T0 + 1)
    b = book.request("low", "rita", "why", T0).relaxation_id
    book.approve(b, "y", T0 + 2)
    book.activate(b, "rita", T0 + 3)
    stored = [msgspec.msgpack.encode(r) for r in book.records()]
    rebuilt = GuardRelaxations(
        _guards(), RULES, [msgspec.msgpack.decode(x, type=Relaxation) for x in stored]
    )
    assert rebuilt.records() == book.records()
    assert rebuilt.relaxed_guards(T0 + 4) == {"low"}
    with pytest.raises(DuplicateApproval):
        rebuilt.approve(a, "x", T0 + 5)
    # The rules frozen into a record survive a configuration change.
    strict = GovernanceConfig(critical=GovernanceConfig().critical.__class__(quorum=5))
    assert GuardRelaxations(_guards(), strict, book.records()).get(a).quorum == 3


def test_corrupt_record_sets_are_refused() -> None:
    book = _book()
    r = book.request("low", "rita", "why", T0).record
    with pytest.raises(RelaxationError):
        GuardRelaxations(_guards(), RULES, [r, r])
    twin = msgspec.structs.replace(r, id="other")
    with pytest.raises(RelaxationError):
        GuardRelaxations(_guards(), RULES, [r, twin])


# --------------------------------------------------------------------------- #
# laws, over random sequences of steps
# --------------------------------------------------------------------------- #

PEOPLE = ["rita", "a", "b", "c", "d"]
step = st.tuples(
    st.sampled_from(["approve", "activate", "revoke", "advance", "request"]),
    st.sampled_from(PEOPLE),
    st.integers(0, 30 * H),
)


@settings(max_examples=300, deadline=None)
@given(gid=st.sampled_from(["crit", "high", "med", "low"]), steps=st.lists(step, max_size=25))
def test_laws_of_the_state_machine(gid: str, steps: list[tuple[str, str, int]]) -> None:
    book = _book()
    now = T0
    rid = book.request(gid, "rita", "why", now).relaxation_id
    for kind, who, dt in steps:
        now += dt
        before = book.records()
        try:
            if kind == "approve":
                events = book.approve(rid, who, now)
            elif kind == "activate":
                events = book.activate(rid, who, now)
            elif kind == "revoke":
                events = [book.revoke(rid, who, "r", now)]
            elif kind == "advance":
                events = book.advance(now)
            else:
                ev = book.request(gid, who, "why", now)
                rid, events = ev.relaxation_id, [ev]
        except RelaxationError:
            assert book.records() == before  # refusals change nothing
            continue
        # Each event carries the record after its step: the last one, the stored record.
        last = {e.relaxation_id: e.record for e in events}
        for relaxation_id, record in last.items():
            assert record == book.get(relaxation_id)
        assert all(e.record.state != "requested" or e.step in ("requested", "approval_recorded")
                   for e in events)
        for r in book.records():
            approvers = [a.approver for a in r.approvals]
            assert len(set(approvers)) == len(approvers)
            assert r.requester not in approvers
            if r.approved_at_ns is not None:
                assert len(approvers) >= r.quorum
                assert r.approved_at_ns >= r.requested_at_ns + r.min_review_ns
            if is_relaxing(r, now):
                assert r.state == "active" and r.approved_at_ns is not None
                assert r.activated_at_ns is not None and r.activated_at_ns < r.expires_at_ns
                assert now < r.activated_at_ns + r.window_ns
        open_records = [r for r in book.records() if r.state != "ended"]
        assert len(open_records) <= 1  # one open relaxation per guard
        assert book.relaxed_guards(now) <= {gid}
