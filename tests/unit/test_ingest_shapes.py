"""knhkd.monitor.shapes: loading the sectors' shapes, RDF payloads, the errors
a rejected request gets, and the gate's batching."""

from __future__ import annotations

import shutil
from collections import Counter
from pathlib import Path
from typing import Any

import msgspec
import pytest
import trio

from knhkd.loop.shapes_gate import ShapesGate
from knhkd.model import SECTORS, ObservationIn, RdfPayload
from knhkd.monitor.shapes import (
    ObservationGate,
    PayloadError,
    ShaclRejected,
    ShapesError,
    load_observation_shapes,
    payload_triples,
)

REPO = Path(__file__).resolve().parents[2]
# rdflib's JSON-LD parser uses its own deprecated ConjunctiveGraph.
pytestmark = pytest.mark.filterwarnings("ignore::DeprecationWarning")
SHIPPED = REPO / "conf" / "shapes" / "observations"
SH = "http://www.w3.org/ns/shacl#"

# What the other tests, the benches and the README post: they must stay valid.
EXISTING = [
    b'{"event_type":"transaction.execute","value":{"amount":50000},"sector":"finance","metadata":{}}',
    b'{"event_type":"transaction.execute","value":{"amount":1},"sector":"finance"}',
    b'{"event_type":"transaction.execute","value":{"amount":5},"sector":"finance",'
    b'"metadata":{"terminal_id":"T-9"}}',
    b'{"event_type":"line.tick","value":{"n":0},"sector":"manufacturing","metadata":{}}',
    b'{"event_type":"sensor.read","value":1,"sector":"manufacturing"}',
    b'{"event_type":"bulk.load","value":"xxxx","sector":"generic"}',
    b'{"event_type":"bench.tick","value":{"n":1},"sector":"generic","metadata":{}}',
]


class _Count:
    def __init__(self, tally: Counter[str], sector: str) -> None:
        self.tally, self.sector = tally, sector

    def inc(self, n: int = 1) -> None:
        self.tally[self.sector] += n


def _gate(directory: Path = SHIPPED, inline: int = 64) -> tuple[ShapesGate, Counter[str]]:
    tally: Counter[str] = Counter()
    failures = {s: _Count(tally, s) for s in SECTORS}
    pure = ObservationGate(load_observation_shapes(directory))
    return ShapesGate(pure, failures, inline_max_items=lambda: inline), tally


def _item(raw: bytes | dict[str, Any]) -> ObservationIn:
    if isinstance(raw, dict):
        return msgspec.convert(raw, ObservationIn)
    return msgspec.json.decode(raw, type=ObservationIn)


@pytest.fixture(scope="module")
def gate() -> ObservationGate:
    return _gate()[0].gate


# --------------------------------------------------------------------------- #
# Loading
# --------------------------------------------------------------------------- #


def test_the_shipped_shapes_load_and_compile_fully() -> None:
    loaded = load_observation_shapes(SHIPPED)
    assert set(loaded) == set(SECTORS)
    for s in loaded.values():
        assert s.compiled.fully_compiled, (s.sector, s.compiled.fallback)
        assert len(s.digest) == 64
    assert loaded["generic"].compiled.shape_count == 0 and loaded["generic"].compiled.empty
    assert not loaded["finance"].compiled.empty


def _copy(tmp_path: Path) -> Path:
    d = tmp_path / "observations"
    shutil.copytree(SHIPPED, d)
    return d


def test_a_missing_sector_file_is_named(tmp_path: Path) -> None:
    d = _copy(tmp_path)
    (d / "logistics.ttl").unlink()
    with pytest.raises(ShapesError, match=r"logistics\.ttl: missing"):
        load_observation_shapes(d)


def test_a_file_of_no_sector_is_named(tmp_path: Path) -> None:
    d = _copy(tmp_path)
    (d / "finanse.ttl").write_text("")
    with pytest.raises(ShapesError, match=r"finanse\.ttl: not a sector"):
        load_observation_shapes(d)


@pytest.mark.parametrize(
    "text",
    [
        "@prefix sh: <http://www.w3.org/ns/shacl#> . <urn:s> sh:targetNode <urn:a> ; sh:minCount",
        "@prefix sh: <http://www.w3.org/ns/shacl#> .\n"
        "<urn:s> sh:targetNode <urn:a> ; sh:minCount 1 .",
        "<relative> <urn:p> <urn:o> .",
    ],
)
def test_a_broken_file_is_named(tmp_path: Path, text: str) -> None:
    d = _copy(tmp_path)
    (d / "healthcare.ttl").write_text(text)
    with pytest.raises(ShapesError, match=r"healthcare\.ttl"):
        load_observation_shapes(d)


# --------------------------------------------------------------------------- #
# Verdicts and errors
# --------------------------------------------------------------------------- #


@pytest.mark.parametrize("raw", EXISTING)
def test_observations_of_the_other_tests_stay_valid(gate: ObservationGate, raw: bytes) -> None:
    assert gate.validate_item(_item(raw), 0, None) == []


def test_a_violation_names_field_focus_path_constraint_and_message(gate: ObservationGate) -> None:
    item = _item(
        b'{"event_type":"transaction.execute","sector":"finance",'
        b'"value":{"amount":-5},"metadata":{"currency":"EURO"}}'
    )
    errors = {e.field: e for e in gate.validate_item(item, 3, 3)}
    assert set(errors) == {"$.value.amount", "$.metadata.currency"}
    amount = errors["$.value.amount"]
    assert amount.index == 3
    assert amount.focus_node == "<urn:knhk:obs:pending:3>"
    assert amount.path == "(<urn:knhk:ontology#value>/<urn:knhk:value#amount>)"
    assert amount.constraint == SH + "MinInclusiveConstraintComponent"
    assert amount.severity == "Violation"
    assert amount.value == '"-5"^^<http://www.w3.org/2001/XMLSchema#integer>'
    assert "value.amount" in amount.message
    assert errors["$.metadata.currency"].constraint == SH + "PatternConstraintComponent"


@pytest.mark.parametrize(
    ("raw", "field", "constraint"),
    [
        (b'{"event_type":"admit","sector":"healthcare"}', "$.metadata.patient_id", "MinCount"),
        (
            b'{"event_type":"scan","sector":"logistics","metadata":{"shipment_id":"s-1"}}',
            "$.metadata.shipment_id",
            "MinLength",
        ),
        (
            b'{"event_type":"quality.inspect","sector":"manufacturing",'
            b'"value":{"defect_rate":2},"metadata":{"line_id":"L-1"}}',
            "$.value.defect_rate",
            "MaxInclusive",
        ),
        (
            b'{"event_type":"transaction.execute","sector":"finance","value":[{"amount":1},{}]}',
            "$.value",
            "MaxCount",
        ),
    ],
)
def test_sector_rules(gate: ObservationGate, raw: bytes, field: str, constraint: str) -> None:
    errors = gate.validate_item(_item(raw), 0, 0)
    assert (field, SH + constraint + "ConstraintComponent") in {
        (e.field, e.constraint) for e in errors
    }


def test_warnings_do_not_reject(tmp_path: Path) -> None:
    d = _copy(tmp_path)
    (d / "generic.ttl").write_text(
        "@prefix sh: <http://www.w3.org/ns/shacl#> .\n"
        "<urn:s> sh:targetClass <urn:knhk:ontology#Observation> ;"
        " sh:property [ sh:path <urn:knhk:meta#owner> ; sh:minCount 1 ;"
        " sh:severity sh:Warning ] .\n"
        "<urn:t> sh:targetClass <urn:knhk:ontology#Observation> ; sh:severity sh:Violation ;"
        " sh:property [ sh:path <urn:knhk:meta#kind> ; sh:maxCount 0 ] .\n"
    )
    gate = _gate(d)[0].gate
    assert gate.validate_item(_item({"event_type": "e", "sector": "generic"}), 0, 0) == []
    bad = {"event_type": "e", "sector": "generic", "metadata": {"kind": "x"}}
    assert [e.field for e in gate.validate_item(_item(bad), 0, 0)] == ["$.metadata.kind"]


# --------------------------------------------------------------------------- #
# RDF payloads
# --------------------------------------------------------------------------- #

TX = "<urn:knhk:ontology#Transaction>"
TXID = "<urn:knhk:ontology#transaction_id>"
AMOUNT = "<urn:knhk:ontology#amount>"


def _with_payload(fmt: str, data: str, sector: str = "finance") -> ObservationIn:
    return _item(
        {"event_type": "tx.described", "sector": sector, "rdf": {"format": fmt, "data": data}}
    )


def test_a_valid_turtle_payload(gate: ObservationGate) -> None:
    item = _with_payload("turtle", f'<urn:ex:t1> a {TX} ; {TXID} "T-1" ; {AMOUNT} 10.5 .')
    assert gate.validate_item(item, 0, None) == []


def test_payload_nodes_are_validated_and_reported_against_the_payload(
    gate: ObservationGate,
) -> None:
    item = _with_payload("turtle", f"[] a {TX} ; {AMOUNT} -1 .")
    errors = gate.validate_item(item, 4, 4)
    assert {e.field for e in errors} == {"$.rdf.data"}
    assert {e.focus_node for e in errors} == {"_:p4b0"}
    assert {e.constraint for e in errors} == {
        SH + "MinCountConstraintComponent",
        SH + "MinInclusiveConstraintComponent",
    }


def test_the_payload_can_speak_about_the_observation(gate: ObservationGate) -> None:
    item = _with_payload("turtle", '<urn:knhk:obs:this> <urn:knhk:meta#currency> "euro" .')
    (error,) = gate.validate_item(item, 2, 2)
    assert error.focus_node == "<urn:knhk:obs:pending:2>"
    assert error.field == "$.metadata.currency"


def test_a_json_ld_payload(gate: ObservationGate) -> None:
    doc = (
        '{"@context": {"k": "urn:knhk:ontology#"}, "@id": "urn:ex:t", "@type": "k:Transaction",'
        ' "k:transaction_id": "T-1", "k:amount": -2}'
    )
    errors = gate.validate_item(_with_payload("json-ld", doc), 0, 0)
    assert [(e.focus_node, e.field) for e in errors] == [("<urn:ex:t>", "$.rdf.data")]


@pytest.mark.parametrize(
    ("fmt", "data", "message"),
    [
        ("turtle", "<urn:a> <urn:p> .", "does not parse"),
        ("turtle", "<rel> <urn:p> 1 .", "relative IRI"),
        ("json-ld", '{"@id": "rel", "urn:p": 1}', "relative IRI"),
        ("json-ld", "{nope", "not JSON"),
        ("json-ld", "0", "object or array"),
        ("json-ld", '"x"', "object or array"),
        ("json-ld", "null", "object or array"),
        ("json-ld", '{"@context": "http://example.org/ctx", "@id": "urn:a"}', "remote"),
        ("json-ld", '{"@context": ["http://example.org/ctx"], "@id": "urn:a"}', "remote"),
        ("json-ld", '{"@context": {"@import": "http://example.org/c"}, "@id": "urn:a"}', "remote"),
        ("json-ld", '{"@graph": [{"@context": "http://x.org/c", "@id": "urn:a"}]}', "remote"),
    ],
)
def test_unreadable_payloads_are_422_on_the_field(
    gate: ObservationGate, fmt: str, data: str, message: str
) -> None:
    with pytest.raises(PayloadError, match=message):
        payload_triples(RdfPayload(format=fmt, data=data), 0)  # type: ignore[arg-type]
    (error,) = gate.validate_item(_with_payload(fmt, data), 1, 1)
    assert error.field == "$.rdf.data" and error.index == 1 and message in error.message


def test_payload_size_is_bounded_by_the_model() -> None:
    raw = {"event_type": "e", "sector": "generic", "rdf": {"format": "turtle", "data": "x" * 65537}}
    with pytest.raises(msgspec.ValidationError, match=r"rdf\.data"):
        msgspec.convert(raw, ObservationIn)


# --------------------------------------------------------------------------- #
# The gate
# --------------------------------------------------------------------------- #

BAD = {"event_type": "admit", "sector": "healthcare", "metadata": {}}
GOOD = {"event_type": "admit", "sector": "healthcare", "metadata": {"patient_id": "P-1"}}


@pytest.mark.parametrize("inline", [64, 1])
def test_check_rejects_the_request_and_counts_offending_items(inline: int) -> None:
    gate, tally = _gate(inline=inline)
    items = [_item(GOOD), _item(BAD), _item(GOOD), _item(BAD), _item(EXISTING[0])]

    async def main() -> ShaclRejected:
        await gate.check([_item(GOOD)])
        with pytest.raises(ShaclRejected) as info:
            await gate.check(items)
        return info.value

    rejected = trio.run(main)
    assert [e.index for e in rejected.errors] == [1, 3]
    assert rejected.rejected == 2 and rejected.total == 5
    assert "2 of 5" in rejected.detail
    assert tally == Counter({"healthcare": 2})


def test_a_single_object_request_reports_no_index() -> None:
    gate, tally = _gate()

    async def main() -> None:
        with pytest.raises(ShaclRejected) as info:
            await gate.check([_item(BAD)], single=True)
        assert [e.index for e in info.value.errors] == [None]

    trio.run(main)
    assert tally == Counter({"healthcare": 1})
