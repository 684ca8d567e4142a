"""What a SHACL validation returns, in the two forms the package reports.

Guarantees: ``Violation``/``ShaclResult`` are the text form (every field is
text that does not depend on blank-node labels pySHACL invents; what
``Shapes.validate`` and the incremental certifier return, what receipts and
problem documents carry); ``Result``/``Validation`` are the term form the
compiled validator returns and a pySHACL report is read into for comparison.

Must never: import anything of the package; these are plain values.
"""

from __future__ import annotations

from dataclasses import dataclass

from rdflib import URIRef
from rdflib.term import Node


@dataclass(frozen=True, slots=True, order=True)
class Violation:
    """One SHACL validation result, as text. ``severity`` is the local name of
    the severity IRI: ``Violation``, ``Warning`` or ``Info``."""

    focus_node: str
    path: str
    constraint: str
    message: str
    severity: str
    value: str = ""

    def describe(self) -> str:
        value = f" (value {self.value})" if self.value else ""
        return (
            f"{self.severity} at {self.focus_node} path {self.path or '-'}: "
            f"{self.constraint}{value}: {self.message}"
        )


@dataclass(frozen=True, slots=True)
class ShaclResult:
    conforms: bool
    violations: list[Violation]


@dataclass(frozen=True, slots=True)
class Result:
    """One validation result, as pySHACL would put it in its report.

    ``path`` is the result path written as a SPARQL property path (``""`` when
    the result has none); ``path_node`` is the path term itself, in the graph
    it came from. ``messages`` are the ``sh:message`` texts of the source
    shape, or one generic text when it declares none (``generic`` is then
    true: pySHACL words its generic texts differently)."""

    focus: Node
    path: str
    component: URIRef
    severity: Node
    source_shape: Node
    value: Node | None
    messages: tuple[str, ...]
    generic: bool
    path_node: Node | None = None
    # The predicates of a predicate or sequence path, in order; () otherwise.
    steps: tuple[Node, ...] = ()

    def key(self) -> tuple[Node, str, URIRef, Node, Node, Node | None]:
        """What must equal pySHACL's: focus, path, component, severity,
        source shape, value."""
        return (self.focus, self.path, self.component, self.severity, self.source_shape, self.value)


@dataclass(frozen=True, slots=True)
class Validation:
    conforms: bool
    results: list[Result]
    # Top-level shapes that were handed to pySHACL (empty: all compiled).
    fallback_shapes: tuple[Node, ...] = ()

