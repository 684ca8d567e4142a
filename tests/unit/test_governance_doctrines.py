"""knhkd.governance.doctrines: loading doctrine files, dates in effect, every
constraint kind, signers, and the doctrine set's digest."""

from __future__ import annotations

import shutil
from datetime import UTC, datetime
from pathlib import Path

import pytest
from hypothesis import given
from hypothesis import strategies as st
from rdflib import Graph

from knhkd.governance.doctrines import (
    DoctrineSet,
    DoctrineSubject,
    in_window,
    judge,
    load_doctrines,
)
from knhkd.governance.files import GovernanceError, GovernanceFileError
from knhkd.governance.signers import SignerError, parse_signer, parse_signers
from knhkd.knowledge.rdf import DeltaView, load_ontology
from knhkd.knowledge.shacl import ShaclChecker
from knhkd.model import (
    WEEKDAYS,
    Delta,
    Doctrine,
    Proposal,
    ProposalIn,
    TimeWindow,
    Triple,
)
from knhkd.plan.proposals import make_proposal

REPO = Path(__file__).resolve().parents[2]
K = "urn:knhk:ontology#"
RDF_TYPE = "<http://www.w3.org/1999/02/22-rdf-syntax-ns#type>"


def ns(*args: int) -> int:
    """UTC wall time as nanoseconds."""
    return int(datetime(*args, tzinfo=UTC).timestamp()) * 1_000_000_000


# A Wednesday, inside every shipped doctrine's effective period.
WED_NOON = ns(2025, 6, 11, 12, 0)


@pytest.fixture(scope="module")
def parent() -> Graph:
    return load_ontology(REPO / "conf" / "ontology")


def _write(d: Path, name: str, text: str) -> Path:
    d.mkdir(parents=True, exist_ok=True)
    f = d / name
    f.write_text(text)
    return f


def _proposal(sector: str = "finance", signers: list[str] | None = None,
              resources: dict[str, float] | None = None,
              delta: Delta | None = None) -> Proposal:
    return make_proposal(
        ProposalIn(sector=sector, description="t", delta=delta or Delta(),  # type: ignore[arg-type]
                   signers=signers or [], resources=resources or {}),
        "p", WED_NOON,
    )


def _judge(ds: DoctrineSet, doctrine_id: str, proposal: Proposal, parent: Graph,
           now_ns: int = WED_NOON) -> tuple[bool, str]:
    (d,) = [x for x in ds.doctrines if x.id == doctrine_id]
    subject = DoctrineSubject(
        proposal=proposal,
        signers=tuple(parse_signers(proposal.signers)),
        view=DeltaView(parent, proposal.delta),
        now_ns=now_ns,
        shacl=ShaclChecker(),
    )
    f = judge(d, subject, ds)
    return f.holds, f.message


@pytest.fixture(scope="module")
def shipped() -> DoctrineSet:
    return load_doctrines(REPO / "conf" / "doctrines")


def test_the_shipped_doctrines_hold_the_five_examples(shipped: DoctrineSet) -> None:
    ids = {d.id: d for d in shipped.doctrines}
    for want, sector in [
        ("FIN-APPROVAL-001", "finance"), ("FIN-BUDGET-001", "finance"),
        ("HIPAA-PROTOCOL-001", "healthcare"), ("ISO9001-QUALITY-001", "manufacturing"),
        ("LOG-DELIVERY-SLA-001", "logistics"),
    ]:
        assert ids[want].sector == sector
    assert ids["LOG-DELIVERY-SLA-001"].enforcement == "warning"
    assert len(shipped.digest) == 64


# --------------------------------------------------------------------------- #
# constraint kinds
# --------------------------------------------------------------------------- #


def test_approval_chain(shipped: DoctrineSet, parent: Graph) -> None:
    ok = _proposal(signers=["alice:controller@finance", "bob:auditor@compliance"])
    assert _judge(shipped, "FIN-APPROVAL-001", ok, parent)[0]
    one_person = _proposal(signers=["alice@finance", "alice@compliance"])
    holds, why = _judge(shipped, "FIN-APPROVAL-001", one_person, parent)
    assert not holds and "1 distinct signer(s), 2 required" in why
    no_compliance = _proposal(signers=["alice@finance", "carol@finance"])
    holds, why = _judge(shipped, "FIN-APPROVAL-001", no_compliance, parent)
    assert not holds and "no signer from compliance" in why
    assert not _judge(shipped, "FIN-APPROVAL-001", _proposal(), parent)[0]


def test_segregation_of_duties(shipped: DoctrineSet, parent: Graph) -> None:
    two_people = _proposal("healthcare", ["dana:doctor@clinic", "eve:billing@office"])
    assert _judge(shipped, "HIPAA-PROTOCOL-001", two_people, parent)[0]
    one_person = _proposal("healthcare", ["dana:doctor@clinic", "dana:billing@office"])
    holds, why = _judge(shipped, "HIPAA-PROTOCOL-001", one_person, parent)
    assert not holds and "dana holds incompatible roles billing, doctor" in why
    other_set = _proposal("healthcare", ["fay:patient", "fay:administrator"])
    assert not _judge(shipped, "HIPAA-PROTOCOL-001", other_set, parent)[0]
    across_sets = _proposal("healthcare", ["gus:doctor", "gus:patient"])
    assert _judge(shipped, "HIPAA-PROTOCOL-001", across_sets, parent)[0]


def test_resource_limit(shipped: DoctrineSet, parent: Graph) -> None:
    assert _judge(shipped, "FIN-BUDGET-001", _proposal(resources={"transaction_amount": 1e6}),
                  parent)[0]
    holds, why = _judge(shipped, "FIN-BUDGET-001",
                        _proposal(resources={"transaction_amount": 1_000_001}), parent)
    assert not holds and "transaction_amount" in why
    # An absent resource passes.
    assert _judge(shipped, "FIN-BUDGET-001", _proposal(), parent)[0]
    assert not _judge(shipped, "ISO9001-QUALITY-001",
                      _proposal("manufacturing", resources={"defect_rate": 0.002}), parent)[0]
    assert _judge(shipped, "ISO9001-QUALITY-001",
                  _proposal("manufacturing", resources={"defect_rate": 0.001}), parent)[0]


def test_time_window(shipped: DoctrineSet, parent: Graph) -> None:
    p = _proposal("logistics")
    assert _judge(shipped, "LOG-DELIVERY-SLA-001", p, parent, ns(2025, 6, 11, 6, 0))[0]
    assert not _judge(shipped, "LOG-DELIVERY-SLA-001", p, parent, ns(2025, 6, 11, 22, 0))[0]
    assert not _judge(shipped, "LOG-DELIVERY-SLA-001", p, parent, ns(2025, 6, 11, 5, 59))[0]
    holds, why = _judge(shipped, "LOG-DELIVERY-SLA-001", p, parent, ns(2025, 6, 14, 12, 0))
    assert not holds and "Sat 12:00 UTC" in why  # a Saturday


def test_time_windows_wrap_past_midnight_and_belong_to_the_opening_day() -> None:
    night = TimeWindow(start_hour=22, end_hour=6, days=["fri"])
    assert in_window(night, ns(2025, 6, 13, 22, 0))  # Friday 22:00
    assert in_window(night, ns(2025, 6, 14, 5, 59))  # Saturday 05:59, Friday's night
    assert not in_window(night, ns(2025, 6, 14, 6, 0))
    assert not in_window(night, ns(2025, 6, 13, 5, 0))  # Friday 05:00 is Thursday's night
    assert not in_window(night, ns(2025, 6, 14, 22, 30))  # Saturday's night is not listed


@given(start=st.integers(0, 23), end=st.integers(0, 23), minute=st.integers(0, 7 * 24 * 60 - 1))
def test_a_window_and_its_complement_cover_every_instant_once(
    start: int, end: int, minute: int
) -> None:
    if start == end:
        return
    every_day = list(WEEKDAYS)
    w = TimeWindow(start_hour=start, end_hour=end, days=every_day)
    rest = TimeWindow(start_hour=end, end_hour=start, days=every_day)
    t = ns(2025, 6, 9) + minute * 60 * 1_000_000_000  # a week from a Monday
    assert in_window(w, t) != in_window(rest, t)


def test_schema_doctrines_are_real_shacl(shipped: DoctrineSet, parent: Graph) -> None:
    acct = "<urn:knhk:account:1>"
    good = Delta(add=[Triple(acct, RDF_TYPE, f"<{K}Account>"),
                      Triple(acct, f"<{K}account_id>", '"A-1"')])
    assert _judge(shipped, "FIN-SCHEMA-001", _proposal(delta=good), parent)[0]
    bad = Delta(add=[Triple(acct, RDF_TYPE, f"<{K}Account>")])
    holds, why = _judge(shipped, "FIN-SCHEMA-001", _proposal(delta=bad), parent)
    assert not holds and "account_id" in why and acct in why


def test_custom_checks(tmp_path: Path, parent: Graph) -> None:
    _write(tmp_path, "generic.toml", """
[[doctrine]]
id = "SIZE"
name = "small"
enforcement = "advisory"
effective_date = 2024-01-01
[doctrine.constraint]
kind = "custom"
rule = "max_delta_triples"
params = { max = 1 }

[[doctrine]]
id = "NAMED"
name = "named"
enforcement = "advisory"
effective_date = 2024-01-01
[doctrine.constraint]
kind = "custom"
rule = "no_blank_nodes"
""")
    ds = load_doctrines(tmp_path)
    small = Delta(add=[Triple("<urn:ex:a>", "<urn:ex:p>", "<urn:ex:b>")])
    big = Delta(add=[*small.add, Triple("<urn:ex:a>", "<urn:ex:p>", "_:x")])
    assert _judge(ds, "SIZE", _proposal("generic", delta=small), parent)[0]
    assert not _judge(ds, "SIZE", _proposal("generic", delta=big), parent)[0]
    assert _judge(ds, "NAMED", _proposal("generic", delta=small), parent)[0]
    holds, why = _judge(ds, "NAMED", _proposal("generic", delta=big), parent)
    assert not holds and "_:x" in why


# --------------------------------------------------------------------------- #
# dates in effect
# --------------------------------------------------------------------------- #


def test_only_doctrines_of_the_sector_in_effect_apply(tmp_path: Path) -> None:
    _write(tmp_path, "finance.toml", """
[[doctrine]]
id = "OLD"
name = "old"
enforcement = "mandatory"
effective_date = 2020-01-01
expires = 2025-01-01
[doctrine.constraint]
kind = "resource_limit"
resource = "x"
max = 1.0

[[doctrine]]
id = "NEW"
name = "new"
enforcement = "mandatory"
effective_date = 2025-01-01
[doctrine.constraint]
kind = "resource_limit"
resource = "x"
max = 1.0
""")
    ds = load_doctrines(tmp_path)
    ids = lambda now: [d.id for d in ds.in_effect("finance", now)]  # noqa: E731
    assert ids(ns(2024, 12, 31, 23, 59)) == ["OLD"]
    assert ids(ns(2025, 1, 1, 0, 0)) == ["NEW"]  # expiry is exclusive, effect inclusive
    assert ids(ns(2019, 12, 31)) == []
    assert ds.in_effect("healthcare", ns(2025, 6, 1)) == []


# --------------------------------------------------------------------------- #
# files: errors name the file and the key
# --------------------------------------------------------------------------- #

HEAD = '''
[[doctrine]]
id = "D"
name = "d"
enforcement = "mandatory"
effective_date = 2024-01-01
'''


@pytest.mark.parametrize(
    ("text", "key"),
    [
        (HEAD + '[doctrine.constraint]\nkind = "approval_chain"\nrequired_signers = "2"\n',
         "doctrine[0].constraint.required_signers"),
        (HEAD + '[doctrine.constraint]\nkind = "nope"\n', "doctrine[0].constraint.kind"),
        (HEAD + 'colour = "red"\n[doctrine.constraint]\nkind = "resource_limit"\n'
         'resource = "x"\nmax = 1.0\n', "doctrine[0].colour"),
        (HEAD + '[doctrine.constraint]\nkind = "resource_limit"\nresource = "x"\nmax = 1.0\n'
         'extra = 1\n', "doctrine[0].constraint.extra"),
        (HEAD.replace('"mandatory"', '"Mandatory"') + '[doctrine.constraint]\n'
         'kind = "resource_limit"\nresource = "x"\nmax = 1.0\n', "doctrine[0].enforcement"),
        (HEAD + 'expires = 2023-01-01\n[doctrine.constraint]\nkind = "resource_limit"\n'
         'resource = "x"\nmax = 1.0\n', "doctrine[0].expires"),
        (HEAD + '[doctrine.constraint]\nkind = "time_window"\nstart_hour = 6\nend_hour = 6\n',
         "doctrine[0].constraint.end_hour"),
        (HEAD + '[doctrine.constraint]\nkind = "time_window"\nstart_hour = 6\nend_hour = 25\n',
         "doctrine[0].constraint.end_hour"),
        (HEAD + '[doctrine.constraint]\nkind = "time_window"\nstart_hour = 6\nend_hour = 9\n'
         'days = ["mon", "funday"]\n', "doctrine[0].constraint.days[1]"),
        (HEAD + '[doctrine.constraint]\nkind = "custom"\nrule = "no_such_check"\n',
         "doctrine[0].constraint.rule"),
        (HEAD + '[doctrine.constraint]\nkind = "custom"\nrule = "max_delta_triples"\n',
         "doctrine[0].constraint.params.max"),
        (HEAD + '[doctrine.constraint]\nkind = "custom"\nrule = "max_delta_triples"\n'
         'params = { max = 1, min = 0 }\n', "doctrine[0].constraint.params.min"),
        (HEAD + '[doctrine.constraint]\nkind = "schema"\nshapes = "missing.ttl"\n',
         "doctrine[0].constraint.shapes"),
        (HEAD + 'sector = "healthcare"\n[doctrine.constraint]\nkind = "resource_limit"\n'
         'resource = "x"\nmax = 1.0\n', "doctrine[0].sector"),
        ('[doctrines]\nx = 1\n', "doctrines"),
    ],
)
def test_file_errors_name_the_file_and_key(tmp_path: Path, text: str, key: str) -> None:
    f = _write(tmp_path, "finance.toml", text)
    with pytest.raises(GovernanceFileError) as info:
        load_doctrines(tmp_path)
    assert info.value.path == f and info.value.key == key
    assert str(info.value).startswith(f"{f}: {key}: ")


def test_a_doctrine_file_is_named_after_a_sector(tmp_path: Path) -> None:
    f = _write(tmp_path, "banking.toml", "")
    with pytest.raises(GovernanceFileError) as info:
        load_doctrines(tmp_path)
    assert info.value.path == f


def test_doctrine_ids_are_unique_across_files(tmp_path: Path) -> None:
    body = HEAD + '[doctrine.constraint]\nkind = "resource_limit"\nresource = "x"\nmax = 1.0\n'
    _write(tmp_path, "finance.toml", body)
    g = _write(tmp_path, "generic.toml", body)
    with pytest.raises(GovernanceFileError) as info:
        load_doctrines(tmp_path)
    assert info.value.path == g and info.value.key == "doctrine[0].id"


def test_bad_toml_names_the_file(tmp_path: Path) -> None:
    f = _write(tmp_path, "finance.toml", "[[doctrine]\n")
    with pytest.raises(GovernanceFileError, match="not valid TOML") as info:
        load_doctrines(tmp_path)
    assert info.value.path == f


def test_an_unknown_configured_check_is_refused(tmp_path: Path) -> None:
    with pytest.raises(GovernanceError, match=r"governance\.custom_checks"):
        load_doctrines(tmp_path, enabled=["max_delta_triples", "astrology"])


def test_a_disabled_check_is_refused_at_load(tmp_path: Path) -> None:
    _write(tmp_path, "generic.toml", HEAD + '[doctrine.constraint]\nkind = "custom"\n'
           'rule = "no_blank_nodes"\n')
    assert load_doctrines(tmp_path).checks
    with pytest.raises(GovernanceFileError) as info:
        load_doctrines(tmp_path, enabled=["max_delta_triples"])
    assert info.value.key == "doctrine[0].constraint.rule"


# --------------------------------------------------------------------------- #
# digest
# --------------------------------------------------------------------------- #


def test_the_digest_changes_exactly_with_the_content(tmp_path: Path) -> None:
    src = REPO / "conf" / "doctrines"
    a, b = tmp_path / "a", tmp_path / "b"
    shutil.copytree(src, a)
    shutil.copytree(src, b)
    assert load_doctrines(a).digest == load_doctrines(b).digest
    # Comments and layout are not content.
    (b / "finance.toml").write_text("# reviewed\n" + (b / "finance.toml").read_text())
    assert load_doctrines(a).digest == load_doctrines(b).digest
    # A threshold is.
    text = (b / "finance.toml").read_text().replace("max = 1000000.0", "max = 999999.0")
    (b / "finance.toml").write_text(text)
    assert load_doctrines(a).digest != load_doctrines(b).digest
    # So is the content of a Schema doctrine's shapes file.
    shapes = a / "shapes" / "finance.ttl"
    before = load_doctrines(a).digest
    shapes.write_text(shapes.read_text().replace("sh:minLength 1", "sh:minLength 2", 1))
    assert load_doctrines(a).digest != before


def test_doctrine_records_round_trip_through_msgpack(shipped: DoctrineSet) -> None:
    import msgspec

    for d in shipped.doctrines:
        assert msgspec.msgpack.decode(msgspec.msgpack.encode(d), type=Doctrine) == d


# --------------------------------------------------------------------------- #
# signers
# --------------------------------------------------------------------------- #


def test_signers_are_name_role_at_unit() -> None:
    s = parse_signer("alice:cfo@finance")
    assert (s.name, s.role, s.unit) == ("alice", "cfo", "finance")
    assert parse_signer("bob").role is None and parse_signer("bob").unit is None
    assert parse_signer("carol@compliance").unit == "compliance"
    for bad in ("", "a b", "a:b:c", "a@b@c", ":role", "@unit"):
        with pytest.raises(SignerError):
            parse_signer(bad)
    with pytest.raises(SignerError, match="'x y'"):
        parse_signers(["alice", "x y"])


def test_proposal_input_rejects_malformed_signers() -> None:
    import msgspec

    raw = b'{"sector":"finance","description":"d","delta":{},"signers":["alice:cfo@finance"]}'
    assert msgspec.json.decode(raw, type=ProposalIn).signers == ["alice:cfo@finance"]
    with pytest.raises(msgspec.ValidationError):
        msgspec.json.decode(raw.replace(b"alice:cfo@finance", b"al ice"), type=ProposalIn)
