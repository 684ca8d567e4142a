"""The plain pySHACL call, the daemon's loaded shapes, and reading pySHACL's reports.

Guarantees:
- ``plain_validate`` is the project's one ``pyshacl.validate`` call; every
  other module that needs pySHACL's verdict goes through it.
- ``Shapes.validate`` runs plain ``pyshacl.validate`` with no inference, no
  ``focus_nodes`` (pySHACL silently skips constraints reached through nested
  ``sh:node`` shapes when it is given), no JavaScript and no advanced
  features, against a fresh copy of the shapes graph (pySHACL adds triples to
  the shapes graph it is given), so results never depend on earlier calls.
- ``conforms`` is false exactly when a result has severity ``sh:Violation``;
  warnings and infos are reported in ``violations`` without breaking
  conformance.
- ``violations`` is sorted, and every field is text that does not depend on
  blank-node labels pySHACL invents (property paths are written out as SPARQL
  property-path expressions).
- ``Shapes.load`` rejects a shapes graph pySHACL cannot use, at load time
  rather than on the first proposal.

- ``violation``/``violations`` read a report into ``Violation`` text,
  ``report_results`` into compiled-validator ``Result`` terms; both print
  paths with ``paths.path_text``.

Must never: mutate the data graph or the loaded shapes graph, read files
other than those in the directory it is asked to load, or import the
compiler or the incremental certifier (they build on this module).
"""

from __future__ import annotations

import re
from pathlib import Path

import pyshacl
from pyshacl.errors import ReportableRuntimeError
from pyshacl.rdfutil.stringify import stringify_blank_node
from rdflib import BNode, Graph, Literal, URIRef
from rdflib.namespace import RDF, SH
from rdflib.term import Node

from knhkd.knowledge.rdf import canonical_ntriples, content_id, load_ontology
from knhkd.knowledge.shacl.errors import ShapesError
from knhkd.knowledge.shacl.paths import path_steps, path_text
from knhkd.knowledge.shacl.results import Result, ShaclResult, Violation
from knhkd.knowledge.shacl.terms import term_text


def forget_pyshacl_bnode_texts() -> None:
    """Empty pySHACL 0.40's memo of blank-node descriptions.

    ``stringify_blank_node`` memoises the text of a blank node under
    ``(id(graph), label)`` for the life of the process, so once a graph is
    freed, a new graph at the same address gets the old graph's description of
    a blank node with the same label in its messages. Emptying the memo before
    a validation makes its messages describe the graph validated."""
    cache = getattr(stringify_blank_node, "dict_cache", None)
    if isinstance(cache, dict):
        cache.clear()


def plain_validate(
    data: Graph, shapes_graph: Graph, *, allow_warnings: bool, meta_shacl: bool = False
) -> tuple[bool, Graph]:
    """The one plain ``pyshacl.validate`` call of the project: no inference,
    no ``focus_nodes`` (it skips nested shapes), no JavaScript, on a copy of
    the shapes graph (pySHACL adds triples to the one it is given), with the
    blank-node text memo cleared first. Returns (conforms, report graph)."""
    forget_pyshacl_bnode_texts()
    shapes = Graph()
    shapes += shapes_graph
    conforms, report, _text = pyshacl.validate(
        data,
        shacl_graph=shapes,
        inference="none",
        abort_on_first=False,
        allow_warnings=allow_warnings,
        allow_infos=allow_warnings,
        advanced=False,
        js=False,
        meta_shacl=meta_shacl,
    )
    if not isinstance(report, Graph):
        raise ShapesError(f"pySHACL returned a {type(report).__name__} report")
    return bool(conforms), report


def violation(report: Graph, r: Node) -> Violation:
    """One result node of a pySHACL report, as text."""
    path = report.value(r, SH.resultPath)
    severity = report.value(r, SH.resultSeverity)
    messages = sorted(str(m) for m in report.objects(r, SH.resultMessage))
    return Violation(
        focus_node=term_text(report.value(r, SH.focusNode)),
        path=path_text(report, path),
        constraint=term_text(report.value(r, SH.sourceConstraintComponent)),
        message="; ".join(messages),
        severity="" if severity is None else str(severity).rpartition("#")[2],
        value=term_text(report.value(r, SH.value)),
    )


def violations(report: Graph) -> list[Violation]:
    # The results are the report's sh:result values (SHACL 3.6.1); pySHACL also
    # types the nested sh:detail results of sh:node and friends as
    # sh:ValidationResult, but those explain a result, they are not results.
    return sorted(violation(report, r) for r in report.objects(None, SH.result))


class Shapes:
    """A loaded, checked shapes graph. ``digest`` is the SHA-256 of its
    canonical N-Triples: what a receipt records as the shapes it applied."""

    __slots__ = ("_graph", "digest")

    def __init__(self, graph: Graph) -> None:
        self._graph = graph
        self.digest = content_id(canonical_ntriples(graph))
        # pySHACL parses a shape's constraints only when the shape has a focus
        # node, so a broken shape would surface on the first proposal. Check
        # the shapes against SHACL-SHACL, and give every class target one
        # probe instance, so that it surfaces here instead.
        probe = Graph()
        targets = sorted({t for t in graph.objects(None, SH.targetClass) if isinstance(t, URIRef)})
        for i, cls in enumerate(targets):
            probe.add((BNode(f"probe{i}"), RDF.type, cls))
        try:
            self._run(probe, meta_shacl=True)
        except (ReportableRuntimeError, re.error) as exc:
            raise ShapesError(f"shapes graph is not usable: {exc}") from exc

    @classmethod
    def load(cls, directory: Path) -> Shapes:
        return cls(load_ontology(directory))

    def _run(self, data: Graph, *, meta_shacl: bool = False) -> ShaclResult:
        conforms, report = plain_validate(
            data, self._graph, allow_warnings=True, meta_shacl=meta_shacl
        )
        return ShaclResult(conforms=conforms, violations=violations(report))

    def validate(self, data: Graph) -> ShaclResult:
        try:
            return self._run(data)
        except (ReportableRuntimeError, re.error) as exc:
            raise ShapesError(f"SHACL validation failed to run: {exc}") from exc


def report_results(report: Graph, root: Node | None = None) -> tuple[list[Result], bool]:
    """The top-level results of a validation report (pySHACL's, or the
    expected report of a W3C test, rooted at ``root``) and its ``sh:conforms``;
    nested ``sh:detail`` results are not top-level."""
    if root is None:
        reports = list(report.subjects(RDF.type, SH.ValidationReport))
        if len(reports) != 1:
            raise ShapesError(f"expected one sh:ValidationReport, found {len(reports)}")
        root = reports[0]
    conforms_lit = report.value(root, SH.conforms)
    conforms = isinstance(conforms_lit, Literal) and bool(conforms_lit.value)
    out: list[Result] = []
    for r in report.objects(root, SH.result):
        focus = report.value(r, SH.focusNode)
        path = report.value(r, SH.resultPath)
        component = report.value(r, SH.sourceConstraintComponent)
        messages = tuple(sorted(str(m) for m in report.objects(r, SH.resultMessage)))
        assert focus is not None and isinstance(component, URIRef)
        out.append(
            Result(
                focus=focus,
                path=path_text(report, path),
                component=component,
                severity=report.value(r, SH.resultSeverity) or SH.Violation,
                source_shape=report.value(r, SH.sourceShape) or BNode(),
                value=report.value(r, SH.value),
                messages=messages,
                generic=False,
                path_node=path,
                steps=path_steps(report, path),
            )
        )
    return out, conforms

