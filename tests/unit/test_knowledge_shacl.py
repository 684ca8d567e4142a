"""knhkd.knowledge.shacl: loading shapes and reporting violations; the default
knowledge in conf/ loads, and genesis conforms to its own shapes."""

from __future__ import annotations

from pathlib import Path

import pytest
from rdflib import Graph

from knhkd.knowledge.rdf import (
    KNHK,
    canonical_ntriples,
    graph_from_ntriples,
    load_ontology,
    sector_schema,
)
from knhkd.knowledge.shacl import Shapes, ShapesError, Violation

REPO = Path(__file__).resolve().parents[2]

SHAPES = """\
@prefix sh: <http://www.w3.org/ns/shacl#> .
@prefix xsd: <http://www.w3.org/2001/XMLSchema#> .
@prefix ex: <urn:ex#> .

ex:PersonShape a sh:NodeShape ;
    sh:targetClass ex:Person ;
    sh:property [ sh:path ex:name ; sh:minCount 1 ; sh:maxCount 1 ; sh:datatype xsd:string ] ;
    sh:property [ sh:path ex:age ; sh:datatype xsd:integer ; sh:minInclusive 0 ] ;
    sh:property [ sh:path ( ex:address ex:city ) ; sh:minCount 1 ; sh:severity sh:Warning ;
                  sh:message "a person should have a city" ] ;
    sh:property [ sh:path ex:parent ; sh:node ex:NamedShape ] .

ex:NamedShape a sh:NodeShape ;
    sh:property [ sh:path ex:name ; sh:minCount 1 ] .
"""


@pytest.fixture(scope="module")
def shapes(tmp_path_factory: pytest.TempPathFactory) -> Shapes:
    d = tmp_path_factory.mktemp("shapes")
    (d / "person.ttl").write_text(SHAPES)
    return Shapes.load(d)


def _data(text: str) -> Graph:
    return graph_from_ntriples(text)


RDF_TYPE = "<http://www.w3.org/1999/02/22-rdf-syntax-ns#type>"


def test_conforming_data(shapes: Shapes) -> None:
    g = _data(
        f"<urn:ex#bob> {RDF_TYPE} <urn:ex#Person> .\n"
        '<urn:ex#bob> <urn:ex#name> "Bob" .\n'
        "<urn:ex#bob> <urn:ex#address> _:a .\n"
        '_:a <urn:ex#city> "Paris" .\n'
    )
    before = canonical_ntriples(g)
    result = shapes.validate(g)
    assert result.conforms
    assert result.violations == []
    assert canonical_ntriples(g) == before


def test_violation_names_focus_path_and_constraint(shapes: Shapes) -> None:
    g = _data(
        f"<urn:ex#eve> {RDF_TYPE} <urn:ex#Person> .\n"
        '<urn:ex#eve> <urn:ex#age> "-3"^^<http://www.w3.org/2001/XMLSchema#integer> .\n'
    )
    result = shapes.validate(g)
    assert not result.conforms
    by_constraint = {v.constraint: v for v in result.violations}
    missing = by_constraint["<http://www.w3.org/ns/shacl#MinCountConstraintComponent>"]
    assert missing.focus_node == "<urn:ex#eve>"
    assert missing.severity in {"Violation", "Warning"}
    paths = {v.path for v in result.violations}
    assert "<urn:ex#name>" in paths
    assert "(<urn:ex#address>/<urn:ex#city>)" in paths  # sequence path written out
    negative = by_constraint["<http://www.w3.org/ns/shacl#MinInclusiveConstraintComponent>"]
    assert negative.path == "<urn:ex#age>" and negative.value.startswith('"-3"')
    assert "MinInclusive" in negative.describe() and "<urn:ex#eve>" in negative.describe()
    assert result.violations == sorted(result.violations)


def test_warnings_alone_conform(shapes: Shapes) -> None:
    g = _data(f'<urn:ex#ann> {RDF_TYPE} <urn:ex#Person> .\n<urn:ex#ann> <urn:ex#name> "Ann" .\n')
    result = shapes.validate(g)
    assert result.conforms
    assert [v.severity for v in result.violations] == ["Warning"]
    assert result.violations[0].message == "a person should have a city"


def test_nested_node_shapes_are_checked(shapes: Shapes) -> None:
    # pySHACL skips sh:node constraints under focus_nodes=; the plain call does not.
    g = _data(
        f"<urn:ex#kid> {RDF_TYPE} <urn:ex#Person> .\n"
        '<urn:ex#kid> <urn:ex#name> "Kid" .\n'
        "<urn:ex#kid> <urn:ex#address> _:a .\n"
        '_:a <urn:ex#city> "Oslo" .\n'
        "<urn:ex#kid> <urn:ex#parent> <urn:ex#nameless> .\n"
    )
    result = shapes.validate(g)
    assert not result.conforms
    # One result, on the person: the parent's missing name is its sh:detail
    # (pySHACL types it sh:ValidationResult too), not a result of its own.
    (v,) = result.violations
    assert v.constraint == "<http://www.w3.org/ns/shacl#NodeConstraintComponent>"
    assert (v.focus_node, v.value) == ("<urn:ex#kid>", "<urn:ex#nameless>")


def test_validation_is_repeatable(shapes: Shapes) -> None:
    g = _data(f"<urn:ex#x> {RDF_TYPE} <urn:ex#Person> .\n")
    first = shapes.validate(g)
    second = shapes.validate(g)
    assert first == second and not first.conforms


@pytest.mark.parametrize(
    "shape",
    [
        'sh:property [ sh:path ex:p ; sh:minCount "x" ] .',  # not an integer
        'sh:property [ sh:path ex:p ; sh:pattern "(" ] .',  # not a regular expression
    ],
)
def test_unusable_shapes_are_rejected_at_load(tmp_path: Path, shape: str) -> None:
    (tmp_path / "bad.ttl").write_text(
        "@prefix sh: <http://www.w3.org/ns/shacl#> .\n@prefix ex: <urn:ex#> .\n"
        "ex:S a sh:NodeShape ; sh:targetClass ex:C ;\n" + shape
    )
    with pytest.raises(ShapesError):
        Shapes.load(tmp_path)


def test_violation_ordering_is_total() -> None:
    a = Violation("<urn:a>", "<urn:p>", "<urn:c>", "m", "Violation")
    b = Violation("<urn:a>", "<urn:q>", "<urn:c>", "m", "Violation")
    assert sorted([b, a]) == [a, b]


# --------------------------------------------------------------------------- #
# The default knowledge shipped in conf/
# --------------------------------------------------------------------------- #


@pytest.fixture(scope="module")
def default_shapes() -> Shapes:
    return Shapes.load(REPO / "conf" / "shapes")


def test_shapes_digest_is_a_content_address(default_shapes: Shapes, tmp_path: Path) -> None:
    assert len(default_shapes.digest) == 64
    assert Shapes.load(REPO / "conf" / "shapes").digest == default_shapes.digest
    (tmp_path / "s.ttl").write_text(SHAPES)
    assert Shapes.load(tmp_path).digest != default_shapes.digest


def test_default_ontology_conforms_to_default_shapes(default_shapes: Shapes) -> None:
    g = load_ontology(REPO / "conf" / "ontology")
    result = default_shapes.validate(g)
    assert result.conforms, [v.describe() for v in result.violations]
    assert result.violations == []


def test_default_ontology_declares_domains_and_ranges() -> None:
    from rdflib.namespace import OWL, RDF, RDFS

    g = load_ontology(REPO / "conf" / "ontology")
    props = set(g.subjects(RDF.type, RDF.Property))
    for name in (
        "sector",
        "eventType",
        "maxEvents",
        "windowSeconds",
        "keyName",
        "account_id",
        "transaction_id",
        "amount",
    ):
        assert KNHK[name] in props, name
    for prop in props:
        assert len(set(g.objects(prop, RDFS.domain))) == 1, prop
        assert len(set(g.objects(prop, RDFS.range))) == 1, prop
    classes = set(g.subjects(RDF.type, OWL.Class))
    for name in (
        "Observation",
        "Sector",
        "Policy",
        "RateLimitPolicy",
        "MetadataKey",
        "Account",
        "Transaction",
    ):
        assert KNHK[name] in classes, name
    assert {s for s in g.subjects(RDF.type, KNHK.Sector)} == {
        KNHK[s] for s in ("finance", "healthcare", "manufacturing", "logistics", "generic")
    }


def test_default_schema_covers_realistic_metadata() -> None:
    schema = sector_schema(load_ontology(REPO / "conf" / "ontology"))
    assert {"account_id", "transaction_id", "currency", "channel", "source"} <= schema["finance"]
    assert {"patient_id", "encounter_id", "source"} <= schema["healthcare"]
    assert {"line_id", "station_id", "batch_id", "source"} <= schema["manufacturing"]
    assert {"shipment_id", "carrier", "route_id", "source"} <= schema["logistics"]


def test_default_shapes_reject_a_bad_policy(default_shapes: Shapes) -> None:
    g = load_ontology(REPO / "conf" / "ontology")
    g += graph_from_ntriples(
        f"<urn:knhk:policy:x> {RDF_TYPE} <urn:knhk:ontology#RateLimitPolicy> .\n"
        "<urn:knhk:policy:x> <urn:knhk:ontology#maxEvents> "
        '"0"^^<http://www.w3.org/2001/XMLSchema#integer> .\n'
        "<urn:knhk:policy:x> <urn:knhk:ontology#sector> <urn:knhk:ontology#mars> .\n"
        f"<urn:knhk:schema:finance:bad> {RDF_TYPE} <urn:knhk:ontology#MetadataKey> .\n"
        '<urn:knhk:schema:finance:bad> <urn:knhk:ontology#keyName> "has space" .\n'
        "<urn:knhk:schema:finance:bad> <urn:knhk:ontology#sector> "
        "<urn:knhk:ontology#finance> .\n"
    )
    result = default_shapes.validate(g)
    assert not result.conforms
    found = {(v.path, v.constraint.rpartition("#")[2]) for v in result.violations}
    assert ("<urn:knhk:ontology#eventType>", "MinCountConstraintComponent>") in found
    assert ("<urn:knhk:ontology#windowSeconds>", "MinCountConstraintComponent>") in found
    assert ("<urn:knhk:ontology#maxEvents>", "MinInclusiveConstraintComponent>") in found
    assert ("<urn:knhk:ontology#sector>", "InConstraintComponent>") in found
    assert ("<urn:knhk:ontology#keyName>", "PatternConstraintComponent>") in found
