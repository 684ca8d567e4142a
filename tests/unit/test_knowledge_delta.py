"""knhkd.knowledge.rdf: DeltaView reads exactly apply_delta's result; the
snapshot diff is (removed, added), sorted, and applying it reproduces the target."""

from __future__ import annotations

import pytest
from hypothesis import given
from hypothesis import strategies as st
from rdflib import Graph

from knhkd.knowledge.rdf import (
    DeltaError,
    DeltaView,
    TermError,
    apply_delta,
    canonical_ntriples,
    diff_ntriples,
    graph_from_ntriples,
    parse_term,
)
from knhkd.model import Delta, Triple

subjects = st.sampled_from(["<urn:ex:a>", "<urn:ex:b>", "<urn:ex:c>"])
predicates = st.sampled_from(["<urn:ex:p>", "<urn:ex:q>"])
objects = st.sampled_from(
    ["<urn:ex:a>", "<urn:ex:c>", '"x"', '"x"@en', '"1"^^<http://www.w3.org/2001/XMLSchema#integer>',
     '"tab\\there"']
)
triples = st.builds(Triple, subjects, predicates, objects)
graphs = st.lists(triples, max_size=15, unique=True)


def _graph(ts: list[Triple]) -> Graph:
    return graph_from_ntriples("".join(f"{t.s} {t.p} {t.o} .\n" for t in ts))


@given(parent=graphs, data=st.data())
def test_the_view_is_the_applied_delta(parent: list[Triple], data: st.DataObject) -> None:
    g = _graph(parent)
    removed = data.draw(st.lists(st.sampled_from(parent), unique=True)) if parent else []
    added = data.draw(st.lists(triples, max_size=6))
    delta = Delta(remove=removed, add=added)
    view = DeltaView(g, delta)
    want = apply_delta(g, delta)
    assert set(view.triples((None, None, None))) == set(want)
    assert len(view) == len(want)
    for t in {*g, *want}:
        assert (t in view) == (t in want)
        s, p, o = t
        assert set(view.triples((s, None, None))) == set(want.triples((s, None, None)))
        assert set(view.objects(s, p)) == set(want.objects(s, p))
        assert set(view.subjects(p, o)) == set(want.subjects(p, o))
    assert set(view.gone) == set(g) - set(want)
    assert set(view.new) == set(want) - set(g)
    assert view.is_noop == (set(g) == set(want))
    assert set(view.graph()) == set(want)
    assert len(g) == len(parent)  # the parent is not touched


def test_the_view_refuses_what_apply_delta_refuses() -> None:
    g = _graph([Triple("<urn:ex:a>", "<urn:ex:p>", '"x"')])
    with pytest.raises(DeltaError, match="not in the parent"):
        DeltaView(g, Delta(remove=[Triple("<urn:ex:a>", "<urn:ex:p>", '"y"')]))
    with pytest.raises(TermError):
        DeltaView(g, Delta(add=[Triple("<urn:ex:a>", '"lit"', '"y"')]))


def test_removed_then_added_is_no_change() -> None:
    t = Triple("<urn:ex:a>", "<urn:ex:p>", '"x"')
    view = DeltaView(_graph([t]), Delta(remove=[t], add=[t]))
    assert view.is_noop and view.gone == () and view.new == () and len(view) == 1


@given(a=graphs, b=graphs)
def test_the_diff_of_two_snapshots(a: list[Triple], b: list[Triple]) -> None:
    ga, gb = _graph(a), _graph(b)
    before, after = canonical_ntriples(ga), canonical_ntriples(gb)
    removed, added = diff_ntriples(before, after)
    assert removed == sorted(removed) and added == sorted(added)
    assert {_nodes(t) for t in removed} == set(ga) - set(gb)
    assert {_nodes(t) for t in added} == set(gb) - set(ga)
    # Applying the diff as a ΔΣ to the first gives the second.
    assert canonical_ntriples(apply_delta(ga, Delta(remove=removed, add=added))) == after
    assert diff_ntriples(after, after) == ([], [])


def _nodes(t: Triple) -> tuple[object, object, object]:
    return parse_term(t.s), parse_term(t.p), parse_term(t.o)


def test_a_malformed_line_is_refused() -> None:
    with pytest.raises(TermError):
        diff_ntriples("", "<urn:ex:a> <urn:ex:p> nonsense .\n")
