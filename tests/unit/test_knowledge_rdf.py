"""knhkd.knowledge.rdf: terms, canonical form, content ids, deltas, loaders."""

from __future__ import annotations

import os
import random
import subprocess
import sys
from pathlib import Path

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from rdflib import BNode, Graph, Literal, URIRef

from knhkd.knowledge.rdf import (
    KNHK,
    DeltaError,
    KnowledgeError,
    TermError,
    apply_delta,
    canonical_ntriples,
    content_id,
    from_rdflib,
    graph_from_ntriples,
    load_ontology,
    parse_term,
    sector_schema,
    to_rdflib,
)
from knhkd.model import Delta, Triple

REPO = Path(__file__).resolve().parents[2]
XSD_STRING = URIRef("http://www.w3.org/2001/XMLSchema#string")

SAMPLE = """\
<urn:ex:a> <urn:ex:p> "x" .
<urn:ex:a> <urn:ex:q> _:n1 .
_:n1 <urn:ex:r> "line\\nbreak \\"quoted\\" tab\\t"@en .
_:n1 <urn:ex:r> _:n2 .
_:n2 <urn:ex:s> "42"^^<http://www.w3.org/2001/XMLSchema#integer> .
_:n2 <urn:ex:s> "caf\\u00E9" .
"""


def _relabel_and_shuffle(text: str, seed: int) -> str:
    rnd = random.Random(seed)
    lines = text.splitlines()
    rnd.shuffle(lines)
    out = "\n".join(lines) + "\n"
    for old, new in (("_:n1", "_:zz9"), ("_:n2", "_:b0x")):
        out = out.replace(old, new)
    return out


# --------------------------------------------------------------------------- #
# parse_term
# --------------------------------------------------------------------------- #


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("<http://example.org/a>", URIRef("http://example.org/a")),
        ("<urn:knhk:x>", URIRef("urn:knhk:x")),
        ("<http://example.org/\\u0061>", URIRef("http://example.org/a")),
        ("_:b0", BNode("b0")),
        ('"plain"', Literal("plain")),
        ('"chat"@FR-be', Literal("chat", lang="fr-be")),
        ('"1"^^<http://www.w3.org/2001/XMLSchema#integer>', Literal(1)),
        ('"s"^^<http://www.w3.org/2001/XMLSchema#string>', Literal("s")),
        ('"a\\"b\\\\c\\n"', Literal('a"b\\c\n')),
    ],
)
def test_parse_term_accepts_ntriples_terms(text: str, expected: object) -> None:
    assert parse_term(text) == expected


@pytest.mark.parametrize(
    "text",
    [
        "<relative/iri>",  # no scheme
        "<http://exa mple.org/>",  # space
        "<http://example.org/{x}>",
        "<http://example.org/a|b>",
        "<http://example.org/^>",
        "<http://example.org/`>",
        '<http://example.org/">',
        "<http://example.org/\\u0020>",  # an escaped space is still a space
        "<>",
        "http://example.org/a",  # not bracketed
        "<http://example.org/a",
        "_:",
        "_:ends.with.dot.",
        '"unterminated',
        '"x"@',
        '"x"^^<not-absolute>',
        '"x"^^xsd:string',  # prefixed names are Turtle, not N-Triples
        '"\\uD800"',  # a surrogate is not a scalar value
        '"raw\nnewline"',
        " <http://example.org/a>",
        "<http://example.org/a> .",
        "",
        "42",
    ],
)
def test_parse_term_rejects_malformed(text: str) -> None:
    with pytest.raises(TermError):
        parse_term(text)


def test_term_error_is_a_knowledge_error() -> None:
    assert issubclass(TermError, KnowledgeError)
    assert issubclass(DeltaError, KnowledgeError)


def test_triple_positions_are_checked() -> None:
    with pytest.raises(TermError, match="subject"):
        to_rdflib(Triple('"lit"', "<urn:ex:p>", "<urn:ex:o>"))
    with pytest.raises(TermError, match="predicate"):
        to_rdflib(Triple("<urn:ex:s>", "_:b", "<urn:ex:o>"))


def test_rdflib_round_trip() -> None:
    t = Triple("<urn:ex:s>", "<urn:ex:p>", '"v\\u0001\\t"@en')
    assert from_rdflib(*to_rdflib(t)) == t
    with pytest.raises(TermError):
        from_rdflib(URIRef("urn:ex:s"), URIRef("urn:ex:p"), URIRef("not an iri"))


# --------------------------------------------------------------------------- #
# canonical form and content id
# --------------------------------------------------------------------------- #


def test_canonical_form_ignores_order_and_blank_node_labels() -> None:
    base = canonical_ntriples(graph_from_ntriples(SAMPLE))
    for seed in range(5):
        other = canonical_ntriples(graph_from_ntriples(_relabel_and_shuffle(SAMPLE, seed)))
        assert other == base
    assert content_id(base) == content_id(
        canonical_ntriples(graph_from_ntriples(_relabel_and_shuffle(SAMPLE, 99)))
    )


def test_canonical_form_is_sorted_and_newline_terminated() -> None:
    text = canonical_ntriples(graph_from_ntriples(SAMPLE))
    lines = text.split("\n")
    assert lines[-1] == ""
    assert lines[:-1] == sorted(lines[:-1])
    assert len(lines) - 1 == 6
    assert "_:n1" not in text  # relabelled canonically


def test_canonical_form_distinguishes_different_graphs() -> None:
    a = canonical_ntriples(graph_from_ntriples(SAMPLE))
    b = canonical_ntriples(graph_from_ntriples(SAMPLE.replace('"x"', '"y"')))
    assert content_id(a) != content_id(b)
    # Two disjoint 3-cycles are not a 6-cycle.
    two = "".join(f"_:{a} <urn:ex:p> _:{b} .\n" for a, b in ["ab", "bc", "ca", "de", "ef", "fd"])
    six = "".join(f"_:n{i} <urn:ex:p> _:n{(i + 1) % 6} .\n" for i in range(6))
    assert canonical_ntriples(graph_from_ntriples(two)) != canonical_ntriples(
        graph_from_ntriples(six)
    )


def test_literal_escaping_is_deterministic() -> None:
    g = Graph()
    s, p = URIRef("urn:ex:s"), URIRef("urn:ex:p")
    g.add((s, p, Literal('q"b\\s\nr\rt\tb\bf\f\x01\x7f é')))
    g.add((s, p, Literal("typed", datatype=XSD_STRING)))  # same term as "typed"
    g.add((s, p, Literal("typed")))
    g.add((s, p, Literal("hi", lang="EN")))
    text = canonical_ntriples(g)
    assert text == (
        '<urn:ex:s> <urn:ex:p> "hi"@en .\n'
        '<urn:ex:s> <urn:ex:p> "q\\"b\\\\s\\nr\\rt\\tb\\bf\\f\\u0001\\u007F é" .\n'
        '<urn:ex:s> <urn:ex:p> "typed" .\n'
    )
    assert canonical_ntriples(graph_from_ntriples(text)) == text


_TERMS = st.sampled_from(["<urn:ex:a>", "<urn:ex:b>", '"1"', '"x"@en'])


@settings(max_examples=40, deadline=None)
@given(
    edges=st.lists(
        st.tuples(
            st.integers(0, 4),
            st.sampled_from(["<urn:ex:p>", "<urn:ex:q>"]),
            st.one_of(st.integers(0, 4), _TERMS),
        ),
        min_size=1,
        max_size=10,
    ),
    perm=st.permutations(range(5)),
    rnd=st.randoms(use_true_random=False),
)
def test_canonical_id_invariant_under_relabelling(
    edges: list[tuple[int, str, int | str]], perm: list[int], rnd: random.Random
) -> None:
    def doc(label: str, mapping: list[int], shuffle: bool) -> str:
        lines = [
            f"_:{label}{mapping[s]} {p} "
            + (f"_:{label}{mapping[o]}" if isinstance(o, int) else o)
            + " ."
            for s, p, o in edges
        ]
        if shuffle:
            rnd.shuffle(lines)
        return "\n".join(lines) + "\n"

    first = canonical_ntriples(graph_from_ntriples(doc("b", list(range(5)), False)))
    second = canonical_ntriples(graph_from_ntriples(doc("other", perm, True)))
    assert first == second


def test_content_id_is_stable_across_processes() -> None:
    script = (
        "import sys\n"
        "from knhkd.knowledge.rdf import canonical_ntriples, content_id, graph_from_ntriples\n"
        "print(content_id(canonical_ntriples(graph_from_ntriples(sys.stdin.read()))))\n"
    )
    ids = set()
    for seed, text in (("0", SAMPLE), ("12345", _relabel_and_shuffle(SAMPLE, 3))):
        env = {**os.environ, "PYTHONHASHSEED": seed}
        out = subprocess.run(
            [sys.executable, "-c", script],
            input=text,
            capture_output=True,
            text=True,
            env=env,
            check=True,
            cwd=REPO,
        )
        ids.add(out.stdout.strip())
    ids.add(content_id(canonical_ntriples(graph_from_ntriples(SAMPLE))))
    assert len(ids) == 1
    (only,) = ids
    assert len(only) == 64 and int(only, 16) >= 0


def test_graph_from_ntriples_rejects_bad_lines() -> None:
    assert len(graph_from_ntriples("# comment\n\n<urn:a> <urn:b> <urn:c> . # trailing\n")) == 1
    with pytest.raises(TermError, match="line 2"):
        graph_from_ntriples("<urn:a> <urn:b> <urn:c> .\n<urn:a> <urn:b> <bad> .\n")
    with pytest.raises(TermError, match="line 1"):
        graph_from_ntriples("<urn:a> <urn:b> <urn:c>\n")
    with pytest.raises(TermError):
        graph_from_ntriples('"lit" <urn:b> <urn:c> .\n')


# --------------------------------------------------------------------------- #
# apply_delta
# --------------------------------------------------------------------------- #

A = Triple("<urn:ex:s>", "<urn:ex:p>", '"a"')
B = Triple("<urn:ex:s>", "<urn:ex:p>", '"b"')


def test_apply_delta_removes_first_then_adds() -> None:
    g = graph_from_ntriples(f"{A.s} {A.p} {A.o} .\n")
    # The same triple removed and added survives: removals happen first.
    out = apply_delta(g, Delta(remove=[A], add=[A, B]))
    assert set(out) == {to_rdflib(A), to_rdflib(B)}
    out = apply_delta(g, Delta(remove=[A], add=[B]))
    assert set(out) == {to_rdflib(B)}
    assert set(g) == {to_rdflib(A)}, "the parent graph must not change"


def test_apply_delta_refuses_absent_removal() -> None:
    g = graph_from_ntriples(f"{A.s} {A.p} {A.o} .\n")
    with pytest.raises(DeltaError, match='"b"'):
        apply_delta(g, Delta(remove=[B]))
    with pytest.raises(TermError):
        apply_delta(g, Delta(add=[Triple("<urn:ex:s>", "<urn:ex:p>", "<no scheme>")]))


# --------------------------------------------------------------------------- #
# loaders and the sector schema
# --------------------------------------------------------------------------- #

TTL = """\
@prefix knhk: <urn:knhk:ontology#> .
<urn:knhk:schema:finance:k1> a knhk:MetadataKey ; knhk:keyName "k1" ; knhk:sector knhk:finance .
<urn:knhk:schema:x:k2> a knhk:MetadataKey ; knhk:keyName "k2" ;
    knhk:sector knhk:finance, knhk:logistics .
<urn:knhk:schema:x:k3> knhk:keyName "not-a-key-resource" ; knhk:sector knhk:finance .
"""


def test_load_ontology_merges_files_and_reads_the_schema(tmp_path: Path) -> None:
    (tmp_path / "b.ttl").write_text(TTL)
    (tmp_path / "a.ttl").write_text(
        "@prefix knhk: <urn:knhk:ontology#> .\nknhk:finance a knhk:Sector .\n"
    )
    (tmp_path / "ignored.txt").write_text("not turtle")
    g = load_ontology(tmp_path)
    assert (KNHK.finance, None, None) in g
    schema = sector_schema(g)
    assert schema["finance"] == {"k1", "k2"}
    assert schema["logistics"] == {"k2"}
    assert schema["healthcare"] == frozenset()
    assert set(schema) == {"finance", "healthcare", "manufacturing", "logistics", "generic"}


@pytest.mark.parametrize(
    ("content", "why"),
    [
        ("@prefix : <urn:x#> .\n:a :b :c", "syntax"),
        ("<urn:a> <urn:b> <relative> .\n", "relative IRI"),
        ("<urn:a> <urn:b> <http://exa mple/> .\n", "space in IRI"),
        ('<urn:a> <urn:b> "\\uD800" .\n', "lone surrogate"),
        ("@prefix : <urn:x#> .\n:a :b", "truncated"),
    ],
)
def test_load_ontology_names_the_bad_file(tmp_path: Path, content: str, why: str) -> None:
    (tmp_path / "00-good.ttl").write_text("<urn:a> <urn:b> <urn:c> .\n")
    (tmp_path / "10-bad.ttl").write_text(content)
    with pytest.raises(KnowledgeError, match=r"10-bad\.ttl"):
        load_ontology(tmp_path)


def test_load_ontology_needs_files(tmp_path: Path) -> None:
    with pytest.raises(KnowledgeError, match="no"):
        load_ontology(tmp_path)
    with pytest.raises(KnowledgeError, match="not a directory"):
        load_ontology(tmp_path / "missing")
