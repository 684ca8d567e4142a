"""The compiled validator on the W3C SHACL Core test suite
(tests/vectors/shacl-core, copied unmodified from w3c/data-shapes; see its
README.md for source and licence).

For every test: the compiled validator's ``conforms`` and results equal plain
``pyshacl.validate``'s on the same graphs (exactly: focus node, path,
component, severity, source shape, value, and messages where the shape has
sh:message), and equal the expected validation report (with blank nodes
compared as blank nodes, as the suite's isomorphism rule allows).

Tests whose shapes use something the compiler does not support would be
listed in ``UNSUPPORTED`` (they run through the pySHACL fallback, so only the
pySHACL equality is asserted); today every test compiles. ``PYSHACL_DEVIATES``
lists the tests where pySHACL itself disagrees with the expected report: there
the compiled validator follows pySHACL, the reference, and the test asserts
that the disagreement is still there (so the list cannot go stale).
"""

from __future__ import annotations

import logging
import warnings
from collections import Counter
from pathlib import Path
from typing import Any

import pytest
from rdflib import BNode, Graph, Namespace, URIRef
from rdflib.namespace import RDF

from knhkd.knowledge.shacl import CompiledShapes, DataGraph, Result, report_results
from tests.unit.shacl_gen import message_shapes, result_keys, run_pyshacl

ROOT = Path(__file__).resolve().parents[1] / "vectors" / "shacl-core"
MF = Namespace("http://www.w3.org/2001/sw/DataAccess/tests/test-manifest#")
SHT = Namespace("http://www.w3.org/ns/shacl-test#")

# test file (relative to ROOT) -> why only the pySHACL equality is asserted
UNSUPPORTED: dict[str, str] = {}
PYSHACL_DEVIATES: dict[str, str] = {
    "property/uniqueLang-002.ttl": (
        'sh:uniqueLang "1"^^xsd:boolean: the suite expects it ignored (only the '
        "literal true activates it), but rdflib normalises the lexical form to "
        '"true" while parsing, so neither pySHACL nor the compiled validator can '
        "tell it apart; both report a violation"
    ),
}


def _parse(path: Path) -> Graph:
    g = Graph()
    g.parse(path, format="turtle", publicID=path.resolve().as_uri())
    return g


def _test_files(manifest: Path) -> list[Path]:
    out: list[Path] = []
    for inc in _parse(manifest).objects(None, MF.include):
        path = Path(str(inc).removeprefix("file://"))
        out.extend(_test_files(path) if path.name == "manifest.ttl" else [path])
    return out


FILES = sorted(_test_files(ROOT / "manifest.ttl"))


def test_the_suite_is_complete() -> None:
    # 98 tests in 121 files (README.md of the vectors).
    assert len(list(ROOT.rglob("*.ttl"))) == 121
    assert len(FILES) == 98


def _anonymous(key: tuple[Any, ...]) -> tuple[Any, ...]:
    return tuple("_:" if isinstance(x, BNode) else x for x in key)


def _expected(results: list[Result]) -> Counter[tuple[Any, ...]]:
    return Counter(_anonymous(r.key()) for r in results)


# Some tests hold ill-typed literals on purpose; rdflib warns while parsing them.
@pytest.mark.filterwarnings("ignore::UserWarning")
@pytest.mark.parametrize("path", FILES, ids=[str(f.relative_to(ROOT)) for f in FILES])
def test_w3c_core(path: Path) -> None:
    name = str(path.relative_to(ROOT))
    manifest = _parse(path)
    (test,) = list(manifest.subjects(RDF.type, SHT.Validate))
    action = manifest.value(test, MF.action)

    def load(role: URIRef) -> Graph:
        iri = manifest.value(action, role)
        target = Path(str(iri).removeprefix("file://"))
        # "<>": the test file itself (the same blank nodes as its expected report).
        return manifest if target == path.resolve() else _parse(target)

    data = load(SHT.dataGraph)
    shapes = Graph()
    shapes += load(SHT.shapesGraph)  # a copy: nothing may change the test's graphs
    expected, expected_conforms = report_results(manifest, manifest.value(test, MF.result))

    compiled = CompiledShapes.compile(shapes)
    assert compiled.fully_compiled == (name not in UNSUPPORTED), compiled.fallback
    logging.disable(logging.CRITICAL)
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            mine = compiled.validate(DataGraph.from_graph(data), lambda: data)
    finally:
        logging.disable(logging.NOTSET)
    reference = run_pyshacl(data, shapes)
    assert not isinstance(reference, str), reference

    msg = message_shapes(shapes)
    assert mine.conforms == reference[0]
    assert result_keys(mine.results, msg) == result_keys(reference[1], msg)

    matches_expected = mine.conforms == expected_conforms and _expected(mine.results) == _expected(
        expected
    )
    if name in PYSHACL_DEVIATES:
        assert not matches_expected, f"{name} now matches the expected report: update the list"
    elif name not in UNSUPPORTED:
        assert matches_expected, (
            f"expected {expected_conforms}, {_expected(expected)}; "
            f"got {mine.conforms}, {_expected(mine.results)}"
        )


def test_messages_of_the_suite() -> None:
    """misc/message-001: the shape's sh:message is the result's message."""
    path = ROOT / "misc" / "message-001.ttl"
    g = _parse(path)
    shapes = Graph()
    shapes += g
    v = CompiledShapes.compile(shapes).validate(DataGraph.from_graph(g))
    texts: set[str] = set()
    for r in v.results:
        texts.update(r.messages)
    assert texts == {"Test message"}
