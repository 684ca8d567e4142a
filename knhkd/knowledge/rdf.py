"""RDF terms and graphs: strict parsing, one canonical form, content addressing.

Guarantees:
- ``parse_term`` accepts exactly one N-Triples term (RDF 1.1 grammar, blank-node
  labels restricted to ASCII) and rejects everything else, including IRIs that
  are relative or contain characters RFC 3987 forbids, with ``TermError``.
- Terms are normalised once, on the way in, so that equal RDF terms are equal
  Python objects: a literal typed ``xsd:string`` becomes a simple literal (RDF
  1.1 makes them the same term) and language tags are lower-cased (they are
  case-insensitive). rdflib additionally normalises the lexical form of
  well-typed literals (``"01"^^xsd:integer`` is ``"1"``).
- ``canonical_ntriples`` is a function of the graph's RDF content only: the
  same for any triple order, any blank-node labels, any process and any
  ``PYTHONHASHSEED``. Blank nodes are relabelled by
  ``rdflib.compare.to_canonical_graph`` (hash-based labels); each triple is one
  line, ``\\n``-terminated, lines sorted by code point (which is UTF-8 byte order)
  and duplicates dropped. Literals are escaped as RDF Dataset Canonicalization
  (RDFC-1.0) prescribes: ``\\" \\\\ \\n \\r \\t \\b \\f`` as ECHAR, other control
  characters as ``\\u00XX`` with upper-case hex, everything else verbatim.
- ``content_id`` / ``content_hash`` are SHA-256 in lower-case hex.
- ``apply_delta`` never mutates its input graph; ``DeltaView`` reads the same
  result through the parent without copying it.
- ``diff_ntriples`` of two snapshots' canonical texts is (removed, added),
  each sorted; applying it as a ΔΣ to the first gives the second.

Must never: read files other than those a loader is explicitly given, read a
clock, or resolve a relative IRI against anything (the result would depend on
the working directory).
"""

from __future__ import annotations

import hashlib
import re
from collections.abc import Iterable, Iterator, Mapping
from pathlib import Path
from typing import Any

import msgspec
import rdflib
import rdflib.exceptions
from rdflib import BNode, Graph, Literal, URIRef
from rdflib.compare import to_canonical_graph
from rdflib.namespace import RDF, XSD
from rdflib.term import Node

from knhkd.model import SECTORS, Delta, Triple

KNHK = rdflib.Namespace("urn:knhk:ontology#")


class KnowledgeError(Exception):
    """Knowledge that cannot be used: malformed, inconsistent, or refused."""


class TermError(KnowledgeError):
    """Text that is not a well-formed RDF term, or a term in a position it cannot hold."""


class DeltaError(KnowledgeError):
    """A ΔΣ that does not apply to the graph it names as its parent."""


# --------------------------------------------------------------------------- #
# N-Triples term grammar (RDF 1.1 N-Triples, §7)
# --------------------------------------------------------------------------- #

_HEX = r"[0-9A-Fa-f]"
_UCHAR = rf"\\u{_HEX}{{4}}|\\U{_HEX}{{8}}"
_IRIREF = rf"<(?:[^\x00-\x20<>\"{{}}|^`\\]|{_UCHAR})*>"
_BNODE_LABEL = r"[A-Za-z0-9_](?:[A-Za-z0-9_.\-]*[A-Za-z0-9_\-])?"
_STRING = rf"\"(?:[^\"\\\n\r]|\\[tbnrf\"'\\]|{_UCHAR})*\""
_LANGTAG = r"@[A-Za-z]+(?:-[A-Za-z0-9]+)*"
_TERM = rf"{_IRIREF}|_:{_BNODE_LABEL}|{_STRING}(?:\^\^{_IRIREF}|{_LANGTAG})?"

_TERM_RE = re.compile(
    rf"(?P<iri>{_IRIREF})"
    rf"|_:(?P<bnode>{_BNODE_LABEL})"
    rf"|(?P<string>{_STRING})(?:\^\^(?P<datatype>{_IRIREF})|@(?P<lang>{_LANGTAG[1:]}))?"
)
_LINE_RE = re.compile(rf"[ \t]*({_TERM})[ \t]*({_TERM})[ \t]*({_TERM})[ \t]*\.[ \t]*(?:#.*)?")
_SKIP_LINE_RE = re.compile(r"[ \t]*(?:#.*)?")
_ESCAPE_RE = re.compile(rf"\\(?:u({_HEX}{{4}})|U({_HEX}{{8}})|(.))", re.DOTALL)
_ECHAR = {"t": "\t", "b": "\b", "n": "\n", "r": "\r", "f": "\f", '"': '"', "'": "'", "\\": "\\"}

# An absolute IRI: a scheme, then nothing RFC 3987 forbids in any component.
_ABSOLUTE_IRI_RE = re.compile(r"[A-Za-z][A-Za-z0-9+.\-]*:[^\x00-\x20<>\"{}|^`\\]*")
_BNODE_LABEL_RE = re.compile(_BNODE_LABEL)

_RDF_LANGSTRING = URIRef("http://www.w3.org/1999/02/22-rdf-syntax-ns#langString")

# RDFC-1.0 string escaping, as a translation table built once.
_LITERAL_ESCAPES: dict[int, str] = {c: f"\\u{c:04X}" for c in [*range(0x20), 0x7F]}
_LITERAL_ESCAPES.update(
    {ord(k): v for k, v in {
        "\b": "\\b", "\t": "\\t", "\n": "\\n", "\f": "\\f", "\r": "\\r",
        '"': '\\"', "\\": "\\\\",
    }.items()}
)

# Turtle files are parsed against a base that makes relative IRIs fail to
# resolve (rdflib needs a '/' after the scheme), instead of silently resolving
# them against the working directory.
_NO_BASE = "urn:knhk:relative-iri-not-allowed:"


def _unescape(body: str) -> str:
    def one(m: re.Match[str]) -> str:
        if m.group(3) is not None:
            return _ECHAR[m.group(3)]
        cp = int(m.group(1) or m.group(2), 16)
        if cp > 0x10FFFF or 0xD800 <= cp <= 0xDFFF:
            raise TermError(f"escape \\u{cp:X} is not a Unicode scalar value")
        return chr(cp)

    return _ESCAPE_RE.sub(one, body)


def _check_iri(iri: str) -> URIRef:
    if not _ABSOLUTE_IRI_RE.fullmatch(iri):
        raise TermError(f"not an absolute IRI: {iri!r}")
    return URIRef(iri)


def _check_unicode(lexical: str) -> None:
    # Python strings may hold lone surrogates; UTF-8 (and so hashing) cannot.
    try:
        lexical.encode("utf-8")
    except UnicodeEncodeError:
        raise TermError(f"literal is not valid Unicode: {lexical!r}") from None


def _literal(lexical: str, datatype: str | None, lang: str | None) -> Literal:
    _check_unicode(lexical)
    if lang is not None:
        return Literal(lexical, lang=lang.lower())
    if datatype is None or datatype == str(XSD.string):
        return Literal(lexical)
    if datatype == str(_RDF_LANGSTRING):
        raise TermError("rdf:langString literal without a language tag")
    return Literal(lexical, datatype=_check_iri(datatype))


def parse_term(text: str) -> Node:
    """One N-Triples term: ``<iri>``, ``_:label``, ``"lex"``, ``"lex"@lang``, ``"lex"^^<dt>``."""
    m = _TERM_RE.fullmatch(text)
    if m is None:
        raise TermError(f"not an N-Triples term: {text[:200]!r}")
    if m["iri"] is not None:
        return _check_iri(_unescape(m["iri"][1:-1]))
    if m["bnode"] is not None:
        return BNode(m["bnode"])
    datatype = _unescape(m["datatype"][1:-1]) if m["datatype"] is not None else None
    return _literal(_unescape(m["string"][1:-1]), datatype, m["lang"])


def _node_nt(t: Node) -> str:
    if isinstance(t, URIRef):
        return f"<{_check_iri(str(t))}>"
    if isinstance(t, BNode):
        if not _BNODE_LABEL_RE.fullmatch(str(t)):
            raise TermError(f"blank-node label cannot be written as N-Triples: {str(t)!r}")
        return f"_:{t}"
    if isinstance(t, Literal):
        # The same normalisation as _literal, without building a new Literal.
        lexical = str(t)
        _check_unicode(lexical)
        text = '"' + lexical.translate(_LITERAL_ESCAPES) + '"'
        if t.language is not None:
            return f"{text}@{t.language.lower()}"
        if t.datatype is None or t.datatype == XSD.string:
            return text
        if t.datatype == _RDF_LANGSTRING:
            raise TermError("rdf:langString literal without a language tag")
        return f"{text}^^<{_check_iri(str(t.datatype))}>"
    raise TermError(f"not an RDF term: {t!r}")


def _check_positions(s: Node, p: Node, o: Node) -> None:
    if not isinstance(s, URIRef | BNode):
        raise TermError(f"subject must be an IRI or blank node, got {s!r}")
    if not isinstance(p, URIRef):
        raise TermError(f"predicate must be an IRI, got {p!r}")
    if not isinstance(o, URIRef | BNode | Literal):
        raise TermError(f"object must be an RDF term, got {o!r}")


def to_rdflib(t: Triple) -> tuple[Node, Node, Node]:
    s, p, o = parse_term(t.s), parse_term(t.p), parse_term(t.o)
    _check_positions(s, p, o)
    return s, p, o


def from_rdflib(s: Node, p: Node, o: Node) -> Triple:
    _check_positions(s, p, o)
    return Triple(_node_nt(s), _node_nt(p), _node_nt(o))


def _normal(t: Node) -> Node:
    if isinstance(t, Literal) and (
        t.datatype == XSD.string or (t.language is not None and t.language != t.language.lower())
    ):
        return _literal(str(t), None if t.datatype is None else str(t.datatype), t.language)
    return t


def _add_normalised(target: Graph, triples: Iterable[tuple[Node, Node, Node]]) -> None:
    for s, p, o in triples:
        _check_positions(s, p, o)
        # Serialising validates every term, so a graph that loads is a graph
        # that can be snapshotted.
        _node_nt(s), _node_nt(p), _node_nt(o)
        target.add((s, p, _normal(o)))


# --------------------------------------------------------------------------- #
# Graphs
# --------------------------------------------------------------------------- #


def graph_from_ntriples(text: str) -> Graph:
    """Parse N-Triples strictly. Blank-node labels are kept as written, so a ΔΣ
    can name the blank nodes of a snapshot by their canonical labels."""
    g = Graph()
    for lineno, line in enumerate(text.splitlines(), start=1):
        m = _LINE_RE.fullmatch(line)
        if m is None:
            if _SKIP_LINE_RE.fullmatch(line):
                continue
            raise TermError(f"line {lineno}: not an N-Triples statement: {line[:200]!r}")
        try:
            s, p, o = parse_term(m[1]), parse_term(m[2]), parse_term(m[3])
            _check_positions(s, p, o)
        except TermError as exc:
            raise TermError(f"line {lineno}: {exc}") from None
        g.add((s, p, o))
    return g


def canonical_ntriples(g: Graph) -> str:
    """The canonical N-Triples text of ``g`` (see the module docstring)."""
    if any(_normal(o) is not o for o in g.objects()):
        normal = Graph()
        _add_normalised(normal, g)
        g = normal
    has_bnodes = any(isinstance(n, BNode) for n in g.all_nodes())
    # Without blank nodes the canonicaliser would only cost time.
    source: Iterable[tuple[Node, Node, Node]] = to_canonical_graph(g) if has_bnodes else g
    lines = {f"{_node_nt(s)} {_node_nt(p)} {_node_nt(o)} .\n" for s, p, o in source}
    return "".join(sorted(lines))


def content_id(canonical: str) -> str:
    return hashlib.sha256(canonical.encode("utf-8")).hexdigest()


_RECORD_ENCODER = msgspec.msgpack.Encoder(order="sorted")


def content_hash(domain: str, record: Any) -> str:
    """SHA-256 hex of ``domain``, a newline, and the MessagePack encoding of
    ``record`` with every map's keys sorted: the content address of a decision
    record. The domain keeps equal encodings of different kinds of record apart."""
    data = domain.encode("utf-8") + b"\n" + _RECORD_ENCODER.encode(record)
    return hashlib.sha256(data).hexdigest()


def load_ontology(directory: Path) -> Graph:
    """Every ``*.ttl`` file in ``directory``, in name order, merged into one graph.

    Raises ``KnowledgeError`` naming the file when one does not parse, holds a
    relative IRI, or holds a term that cannot be written as N-Triples."""
    if not directory.is_dir():
        raise KnowledgeError(f"{directory}: not a directory")
    files = sorted(directory.glob("*.ttl"), key=lambda f: f.name)
    if not files:
        raise KnowledgeError(f"{directory}: no *.ttl files")
    merged = Graph()
    for f in files:
        _parse_turtle_into(merged, f)
    return merged


def load_turtle(path: Path) -> Graph:
    """One Turtle file, with the checks of ``load_ontology`` (errors name the file)."""
    g = Graph()
    _parse_turtle_into(g, path)
    return g


def _parse_turtle_into(target: Graph, f: Path) -> None:
    part = Graph()
    try:
        part.parse(data=f.read_text(encoding="utf-8"), format="turtle", publicID=_NO_BASE)
        _add_normalised(target, part)
    # rdflib's Turtle parser raises IndexError on some truncated input.
    except (
        SyntaxError, ValueError, LookupError, OSError, rdflib.exceptions.Error, TermError
    ) as exc:
        raise KnowledgeError(f"{f}: {type(exc).__name__}: {exc}") from exc


def apply_delta(g: Graph, delta: Delta) -> Graph:
    """A new graph: ``g`` minus ``delta.remove``, then plus ``delta.add``.

    Raises ``DeltaError`` when a removed triple is not in ``g``, ``TermError``
    when a triple of the delta is not well formed."""
    removals, additions = _parse_delta(g, delta)
    out = Graph()
    out += g
    for r in removals:
        out.remove(r)
    for a in additions:
        out.add(a)
    return out


NodeTriple = tuple[Node, Node, Node]
NodePattern = tuple[Node | None, Node | None, Node | None]


def _parse_delta(g: Graph, delta: Delta) -> tuple[list[NodeTriple], list[NodeTriple]]:
    removals = [to_rdflib(t) for t in delta.remove]
    additions = [to_rdflib(t) for t in delta.add]
    absent = [t for t, r in zip(delta.remove, removals, strict=True) if r not in g]
    if absent:
        shown = "; ".join(f"{t.s} {t.p} {t.o}" for t in absent[:5])
        more = f" (and {len(absent) - 5} more)" if len(absent) > 5 else ""
        raise DeltaError(f"{len(absent)} removed triple(s) not in the parent: {shown}{more}")
    return removals, additions


class DeltaView:
    """The parent with a ΔΣ applied, read through without copying the parent.

    Copying an rdflib graph costs ~40 µs per triple (0.4 s for 10 k triples),
    so validation reads the result through this view instead; ``graph()``
    materialises it (the same content as ``apply_delta``) when a consumer
    needs a real ``Graph``.

    Guarantees: the triples of the view are exactly those of
    ``apply_delta(parent, delta)``; ``gone`` (removed, not re-added) and
    ``new`` (added, not already in the parent) are exactly the triples whose
    presence differs between parent and result, in delta order. Construction
    raises what ``apply_delta`` raises.

    Must never: mutate the parent. The parent must not be mutated while a view
    over it is in use (snapshots' graphs never are).
    """

    __slots__ = (
        "_by_o", "_by_p", "_by_s", "_gone_set", "_graph", "_new_set", "added", "gone", "new",
        "parent", "removed",
    )

    def __init__(self, parent: Graph, delta: Delta) -> None:
        removals, additions = _parse_delta(parent, delta)
        self.parent = parent
        # Distinct, in delta order.
        self.removed: tuple[NodeTriple, ...] = tuple(dict.fromkeys(removals))
        self.added: tuple[NodeTriple, ...] = tuple(dict.fromkeys(additions))
        added = set(self.added)
        self.gone: tuple[NodeTriple, ...] = tuple(r for r in self.removed if r not in added)
        self.new: tuple[NodeTriple, ...] = tuple(a for a in self.added if a not in parent)
        self._gone_set = frozenset(self.gone)
        # The new triples are few: plain dicts answer patterns over them ~10x
        # faster than an rdflib graph would.
        self._new_set = frozenset(self.new)
        self._by_s: dict[Node, list[NodeTriple]] = {}
        self._by_p: dict[Node, list[NodeTriple]] = {}
        self._by_o: dict[Node, list[NodeTriple]] = {}
        for t in self.new:
            self._by_s.setdefault(t[0], []).append(t)
            self._by_p.setdefault(t[1], []).append(t)
            self._by_o.setdefault(t[2], []).append(t)
        self._graph: Graph | None = None

    def __len__(self) -> int:
        return len(self.parent) - len(self.gone) + len(self.new)

    def __contains__(self, t: NodeTriple) -> bool:
        return t in self._new_set or (t not in self._gone_set and t in self.parent)

    @property
    def is_noop(self) -> bool:
        """True when the result has exactly the parent's content."""
        return not self.gone and not self.new

    def _new_matching(self, pattern: NodePattern) -> list[NodeTriple]:
        if not self.new:
            return []
        s, p, o = pattern
        if s is not None:
            candidates = self._by_s.get(s, [])
        elif o is not None:
            candidates = self._by_o.get(o, [])
        elif p is not None:
            candidates = self._by_p.get(p, [])
        else:
            return list(self.new)
        return [
            t for t in candidates
            if (s is None or t[0] == s) and (p is None or t[1] == p) and (o is None or t[2] == o)
        ]

    def triples(self, pattern: NodePattern) -> Iterator[NodeTriple]:
        gone = self._gone_set
        for t in self.parent.triples(pattern):
            if t not in gone:
                yield t
        yield from self._new_matching(pattern)

    def union_triples(self, pattern: NodePattern) -> Iterator[NodeTriple]:
        """Triples of the parent or the result (each once)."""
        yield from self.parent.triples(pattern)
        yield from self._new_matching(pattern)

    def objects(self, s: Node, p: Node) -> Iterator[Node]:
        for _, _, o in self.triples((s, p, None)):
            yield o

    def subjects(self, p: Node, o: Node) -> Iterator[Node]:
        for s, _, _ in self.triples((None, p, o)):
            yield s

    def graph(self) -> Graph:
        """The result as a new ``Graph`` (built once, then shared: do not mutate it)."""
        if self._graph is None:
            out = Graph()
            out += self.parent
            for t in self.gone:
                out.remove(t)
            for t in self.new:
                out.add(t)
            self._graph = out
        return self._graph


def _line_triple(line: str) -> Triple:
    m = _LINE_RE.fullmatch(line)
    if m is None:
        raise TermError(f"not an N-Triples statement: {line[:200]!r}")
    s, p, o = parse_term(m[1]), parse_term(m[2]), parse_term(m[3])
    return from_rdflib(s, p, _normal(o))


def _statements(text: str) -> set[str]:
    return {
        line.strip()
        for line in text.splitlines()
        if line.strip() and not line.lstrip().startswith("#")
    }


def diff_ntriples(before: str, after: str) -> tuple[list[Triple], list[Triple]]:
    """(removed, added): the triples of ``before`` not in ``after`` and those of
    ``after`` not in ``before``, each list sorted.

    Both texts are canonical N-Triples (snapshot records), so equal triples are
    equal lines and only the differing lines are parsed. Blank nodes carry each
    snapshot's canonical labels, so a blank node whose label changed shows as
    removed and added. Raises ``TermError`` on a differing line that is not an
    N-Triples statement."""
    old, new = _statements(before), _statements(after)
    removed = {_line_triple(line) for line in old - new}
    added = {_line_triple(line) for line in new - old}
    # Two spellings of one triple (possible only in non-canonical text) cancel.
    return sorted(removed - added), sorted(added - removed)


# --------------------------------------------------------------------------- #
# Vocabulary the decision layer reads
# --------------------------------------------------------------------------- #

SECTOR_IRIS: Mapping[str, URIRef] = {name: KNHK[name] for name in SECTORS}
_SECTOR_BY_IRI: Mapping[URIRef, str] = {iri: name for name, iri in SECTOR_IRIS.items()}


def sector_schema(g: Graph) -> dict[str, frozenset[str]]:
    """The metadata keys each sector allows: the ``knhk:keyName`` of every
    ``knhk:MetadataKey`` resource, under each ``knhk:sector`` it names. Every
    known sector is present (possibly with no keys, meaning none is allowed)."""
    keys: dict[str, set[str]] = {name: set() for name in SECTORS}
    for res in g.subjects(RDF.type, KNHK.MetadataKey):
        names = [str(n) for n in g.objects(res, KNHK.keyName) if isinstance(n, Literal)]
        for sector in g.objects(res, KNHK.sector):
            name = _SECTOR_BY_IRI.get(sector) if isinstance(sector, URIRef) else None
            if name is not None:
                keys[name].update(names)
    return {name: frozenset(v) for name, v in keys.items()}
