"""The data-graph view the compiled SHACL checks read.

Guarantees: a ``DataGraph`` is an immutable index of a data graph (subject ->
predicate -> distinct objects) whose answers equal rdflib's on the same
triples, in rdflib's order where order shows (``transitive_subjects``,
``transitive_objects``); inverse indexes are built on first use, per
predicate.

Must never: import anything of the package above it, copy the triples into an
rdflib graph unless asked (``to_rdflib``), or change after construction
(besides its memo of inverse indexes).
"""

from __future__ import annotations

from collections.abc import Collection, Iterable, Iterator

from rdflib import Graph
from rdflib.term import Node

_EMPTY: tuple[Node, ...] = ()
Triple = tuple[Node, Node, Node]


class DataGraph:
    """An immutable in-memory index of a data graph.

    ``spo`` maps subject -> predicate -> the distinct objects (any sized
    collection: dict keys when duplicates had to be dropped, a tuple when the
    builder knew there were none). Inverse indexes are built on first use."""

    __slots__ = ("_pos", "_spo")

    def __init__(self, spo: dict[Node, dict[Node, Collection[Node]]]) -> None:
        self._spo = spo
        self._pos: dict[Node, dict[Node, list[Node]]] = {}

    @classmethod
    def from_triples(cls, triples: Iterable[Triple]) -> DataGraph:
        spo: dict[Node, dict[Node, dict[Node, None]]] = {}
        for s, p, o in triples:
            po = spo.get(s)
            if po is None:
                spo[s] = {p: {o: None}}
                continue
            objs = po.get(p)
            if objs is None:
                po[p] = {o: None}
            else:
                objs[o] = None
        return cls({s: {p: objs.keys() for p, objs in po.items()} for s, po in spo.items()})

    @classmethod
    def from_graph(cls, graph: Graph) -> DataGraph:
        return cls.from_triples(graph)

    def triples(self) -> Iterator[Triple]:
        for s, po in self._spo.items():
            for p, objs in po.items():
                for o in objs:
                    yield s, p, o

    def to_rdflib(self) -> Graph:
        g = Graph()
        for t in self.triples():
            g.add(t)
        return g

    def __len__(self) -> int:
        return sum(len(objs) for po in self._spo.values() for objs in po.values())

    def objects(self, s: Node, p: Node) -> Collection[Node]:
        po = self._spo.get(s)
        if po is None:
            return _EMPTY
        return po.get(p, _EMPTY)

    def predicate_objects(self, s: Node) -> Iterator[tuple[Node, Node]]:
        po = self._spo.get(s)
        if po is None:
            return
        for p, objs in po.items():
            for o in objs:
                yield p, o

    def _inverse(self, p: Node) -> dict[Node, list[Node]]:
        # Per predicate, on first use: focus nodes need rdf:type's inverse,
        # rarely anything else, so indexing every triple would be wasted.
        pos = self._pos
        inv = pos.get(p)
        if inv is None:
            inv = {}
            for s, po in self._spo.items():
                objs = po.get(p)
                if objs:
                    for o in objs:
                        found = inv.get(o)
                        if found is None:
                            inv[o] = [s]
                        else:
                            found.append(s)
            pos[p] = inv
        return inv

    def subjects(self, p: Node, o: Node) -> Collection[Node]:
        return self._inverse(p).get(o, _EMPTY)

    def subject_objects(self, p: Node) -> list[tuple[Node, Node]]:
        return [(s, o) for o, subjects in self._inverse(p).items() for s in subjects]

    def transitive_subjects(self, p: Node, o: Node) -> list[Node]:
        """rdflib's ``transitive_subjects``: ``o`` first, then depth first."""
        if not self._inverse(p):
            return [o]
        seen: dict[Node, None] = {}

        def walk(node: Node) -> None:
            if node in seen:
                return
            seen[node] = None
            for s in self.subjects(p, node):
                walk(s)

        walk(o)
        return list(seen)

    def transitive_objects(self, s: Node, p: Node) -> list[Node]:
        """rdflib's ``transitive_objects``: ``s`` first, then depth first."""
        seen: dict[Node, None] = {}

        def walk(node: Node) -> None:
            if node in seen:
                return
            seen[node] = None
            for o in self.objects(node, p):
                walk(o)

        walk(s)
        return list(seen)
