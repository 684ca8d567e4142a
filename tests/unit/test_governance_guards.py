"""knhkd.governance.guards: guard files, what trips a guard, the digest."""

from __future__ import annotations

from pathlib import Path

import pytest
from rdflib import URIRef
from rdflib.namespace import OWL, RDF, RDFS

from knhkd.governance.files import GovernanceFileError
from knhkd.governance.guards import GuardSet, load_guards, trips
from knhkd.model import Guard

REPO = Path(__file__).resolve().parents[2]
K = "urn:knhk:ontology#"
ACCOUNT = URIRef(K + "Account")
ACCOUNT_ID = URIRef(K + "account_id")


@pytest.fixture(scope="module")
def shipped() -> GuardSet:
    return load_guards(REPO / "conf" / "guards")


def test_the_finance_core_guard_is_shipped(shipped: GuardSet) -> None:
    g = shipped.get("finance-core")
    assert g is not None and g.criticality == "critical" and not g.immutable
    assert set(g.protected_classes) == {K + "Account", K + "Transaction"}
    assert set(g.protected_properties) == {K + "account_id", K + "transaction_id"}
    assert g.max_run_length == 8
    core = shipped.get("knhk-core")
    assert core is not None and core.immutable


def test_removing_a_protected_item_in_any_position_trips(shipped: GuardSet) -> None:
    acct = URIRef("urn:knhk:account:1")
    cases = [
        ((ACCOUNT, RDF.type, OWL.Class), ACCOUNT),  # the declaration
        ((ACCOUNT, RDFS.label, URIRef("urn:x")), ACCOUNT),  # anything about it
        ((acct, RDF.type, ACCOUNT), ACCOUNT),  # typing an instance
        ((acct, ACCOUNT_ID, URIRef("urn:x")), ACCOUNT_ID),  # using the property
        ((URIRef(K + "Savings"), RDFS.subClassOf, ACCOUNT), ACCOUNT),  # a reference
    ]
    for t, named in cases:
        (trip,) = trips(shipped, [t], 0)
        assert trip.guard.id == "finance-core" and trip.removed == (str(named),)
        assert f"removes protected <{named}>" in trip.describe()


def test_unprotected_removals_and_short_runs_do_not_trip(shipped: GuardSet) -> None:
    assert trips(shipped, [(URIRef(K + "RateLimitPolicy"), RDF.type, OWL.Class)], 8) == []


def test_max_run_length(shipped: GuardSet) -> None:
    (trip,) = trips(shipped, [], 9)
    assert trip.guard.id == "finance-core" and trip.run_length == 9
    assert "estimated_ticks 9 exceeds max run length 8" in trip.describe()


def _write(tmp: Path, text: str, name: str = "g.toml") -> Path:
    f = tmp / name
    f.write_text(text)
    return f


GUARD = '''
[[guard]]
id = "g"
name = "g"
criticality = "high"
protected_classes = ["urn:ex:A"]
'''


@pytest.mark.parametrize(
    ("text", "key"),
    [
        (GUARD.replace('"high"', '"severe"'), "guard[0].criticality"),
        (GUARD + "immutable = 1\n", "guard[0].immutable"),
        (GUARD + 'colour = "red"\n', "guard[0].colour"),
        (GUARD.replace('"urn:ex:A"', '"relative/iri"'), "guard[0].protected_classes[0]"),
        (GUARD.replace('protected_classes = ["urn:ex:A"]', 'protected_properties = ["urn:a b"]'),
         "guard[0].protected_properties[0]"),
        (GUARD.replace('protected_classes = ["urn:ex:A"]', ""), "guard[0]"),
        (GUARD + "max_run_length = -1\n", "guard[0].max_run_length"),
        ('[[guards]]\nid = "x"\n', "guards"),
    ],
)
def test_file_errors_name_the_file_and_key(tmp_path: Path, text: str, key: str) -> None:
    f = _write(tmp_path, text)
    with pytest.raises(GovernanceFileError) as info:
        load_guards(tmp_path)
    assert info.value.path == f and info.value.key == key


def test_guard_ids_are_unique_across_files(tmp_path: Path) -> None:
    _write(tmp_path, GUARD, "a.toml")
    b = _write(tmp_path, GUARD, "b.toml")
    with pytest.raises(GovernanceFileError) as info:
        load_guards(tmp_path)
    assert info.value.path == b and info.value.key == "guard[0].id"


def test_the_digest_follows_the_content_not_the_order() -> None:
    a = Guard(id="a", name="a", criticality="low", protected_classes=["urn:ex:A"])
    b = Guard(id="b", name="b", criticality="low", protected_classes=["urn:ex:B"])
    assert GuardSet((a, b)).digest == GuardSet((b, a)).digest
    b2 = Guard(id="b", name="b", criticality="high", protected_classes=["urn:ex:B"])
    assert GuardSet((a, b)).digest != GuardSet((a, b2)).digest
    assert GuardSet().digest != GuardSet((a,)).digest
