"""SHACL at ingest: each observation is checked against its sector's shapes
before it is submitted for commit.

What is validated: for every item, its own data graph — the RDF view of the
observation (knhkd/knowledge/observation_rdf.py) plus, when the item carries an
``rdf`` payload, the payload's triples. In a payload, the IRI
``urn:knhk:obs:this`` names the observation itself and is replaced by the
item's placeholder subject, so a payload can add facts about the observation;
every other node of the payload is a focus node of whichever shapes target it
(e.g. finance's ``knhk:Transaction`` shape). Payload blank nodes are relabelled
``p{index}b{n}``. Items never share a graph, so one item cannot make another
valid or invalid.

Guarantees:
- Shapes are loaded once, at start-up, from one directory holding exactly one
  ``<sector>.ttl`` per sector; a missing sector file, a file named after no
  sector, or a file that does not parse or compile raises ``ShapesError``
  naming the file.
- Verdicts are those of plain ``pyshacl.validate`` (compiled checks,
  knhkd/knowledge/shacl/compiler.py, with pySHACL itself for shapes it does not
  compile).
- An item is rejected when any result has a severity other than ``sh:Warning``
  or ``sh:Info``, or when its payload does not parse (422 naming ``$.rdf.data``),
  or when a check cannot be evaluated on it. A request is accepted whole or not
  at all: ``ObservationGate.check`` raises ``ShaclRejected`` listing, for every
  offending item, its index, the JSON field, focus node, path, constraint,
  severity, value and message.
- ``rejection`` says, per sector, how many observations (not requests) a
  refusal rejects; ``needs_thread`` says which requests may take long enough
  (more than ``inline_max_items`` items, or any RDF payload) that the caller
  must not check them on its event loop.

Must never: store or acknowledge anything (the ingest actor does), block on
a lock or a thread (the loop's gate, ``loop/shapes_gate.py``, does), fetch a
remote JSON-LD context or resolve a relative IRI, or use pySHACL's
``focus_nodes``.
"""

from __future__ import annotations

import json
import logging
import re
from collections import Counter
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import rdflib.exceptions
from rdflib import BNode, Graph, URIRef
from rdflib.namespace import SH
from rdflib.term import Node

from knhkd.errors import Invalid
from knhkd.knowledge.observation_rdf import field_of, observation_graph, subject_of
from knhkd.knowledge.rdf import KnowledgeError, canonical_ntriples, content_id, from_rdflib
from knhkd.knowledge.shacl import (
    CompiledShapes,
    DataGraph,
    Result,
    ShaclRuntimeError,
    ShapesError,
    term_text,
)
from knhkd.model import SECTORS, FieldError, ObservationIn, RdfPayload, Sector

log = logging.getLogger("knhkd.shapes")

THIS = URIRef("urn:knhk:obs:this")
PAYLOAD_FIELD = "$.rdf.data"
# A payload is at most 64 KiB of text (model.RdfPayload); this bounds what it
# may expand to (a Turtle list or a JSON-LD document can be dense).
MAX_PAYLOAD_TRIPLES = 10_000
# Parsed against a base that cannot resolve a relative IRI (Turtle fails, see
# knowledge/rdf.py) or makes it recognisable (JSON-LD resolves against it).
_NO_BASE = "urn:knhk:relative-iri-not-allowed:"
_TOLERATED = frozenset({SH.Warning, SH.Info})
# How rdflib's Turtle parser says it met a relative IRI (see _NO_BASE).
_RELATIVE = re.compile(r"with relative '([^']*)'")
_RDF_PARSE_ERRORS = (
    SyntaxError,
    ValueError,
    LookupError,
    TypeError,
    AttributeError,
    rdflib.exceptions.Error,
)


class ShaclRejected(Invalid):
    """Observations of a request violate their sector's shapes; nothing is stored."""

    problem = "shacl-violation"
    title = "Observations violate their sector's shapes"

    def __init__(
        self,
        errors: list[FieldError],
        rejected: int,
        total: int,
        by_sector: Mapping[Sector, int] | None = None,
    ) -> None:
        super().__init__(
            f"{rejected} of {total} observation(s) violate their sector's shapes; none was stored",
            errors,
        )
        self.rejected = rejected
        self.total = total
        # Rejected observations (not requests) per sector, for the metrics.
        self.by_sector = dict(by_sector or {})


class PayloadError(Exception):
    """An RDF payload that cannot be read (the message says why)."""


# --------------------------------------------------------------------------- #
# Loading
# --------------------------------------------------------------------------- #


@dataclass(frozen=True)
class SectorShapes:
    sector: str
    path: Path
    compiled: CompiledShapes
    # SHA-256 of the canonical N-Triples: which shapes decided.
    digest: str


def load_observation_shapes(directory: Path) -> dict[str, SectorShapes]:
    """One compiled shapes graph per sector, from ``directory/<sector>.ttl``."""
    if not directory.is_dir():
        raise ShapesError(f"{directory}: not a directory")
    files = {f.stem: f for f in directory.glob("*.ttl")}
    unknown = sorted(set(files) - set(SECTORS))
    if unknown:
        raise ShapesError(
            f"{files[unknown[0]]}: not a sector's shapes file (one of "
            f"{', '.join(f'{s}.ttl' for s in SECTORS)})"
        )
    out: dict[str, SectorShapes] = {}
    for sector in SECTORS:
        path = files.get(sector)
        if path is None:
            raise ShapesError(f"{directory / (sector + '.ttl')}: missing (every sector has one)")
        graph = Graph()
        try:
            graph.parse(data=path.read_text(encoding="utf-8"), format="turtle", publicID=_NO_BASE)
            compiled = CompiledShapes.compile(graph)
            digest = content_id(canonical_ntriples(graph))
        # rdflib's Turtle parser raises IndexError on some truncated input.
        except (*_RDF_PARSE_ERRORS, IndexError, OSError, KnowledgeError) as exc:
            raise ShapesError(f"{path}: {type(exc).__name__}: {exc}") from exc
        for shape, why in compiled.fallback.items():
            log.warning(
                "%s: shape %s is validated by pySHACL, not compiled: %s",
                path,
                term_text(shape),
                why,
            )
        out[sector] = SectorShapes(sector, path, compiled, digest)
        log.info(
            "%s observation shapes: %d shapes from %s (sha256 %s), %d run by pySHACL",
            sector,
            compiled.shape_count,
            path,
            digest[:16],
            len(compiled.fallback),
        )
    return out


# --------------------------------------------------------------------------- #
# RDF payloads
# --------------------------------------------------------------------------- #


def _remote_context(doc: Any) -> bool:
    """True when a JSON-LD document refers to a context by IRI (which rdflib
    would fetch over the network)."""
    stack = [doc]
    while stack:
        x = stack.pop()
        if isinstance(x, list):
            stack.extend(x)
        elif isinstance(x, dict):
            for k, v in x.items():
                if k == "@import":
                    return True
                if k == "@context" and (
                    isinstance(v, str)
                    or (isinstance(v, list) and any(isinstance(c, str) for c in v))
                ):
                    return True
                stack.append(v)
    return False


def payload_triples(payload: RdfPayload, index: int) -> list[tuple[Node, Node, Node]]:
    """The payload's triples, ready to join the view of the item at ``index``."""
    graph = Graph()
    try:
        if payload.format == "json-ld":
            try:
                doc = json.loads(payload.data)
            except ValueError as exc:
                raise PayloadError(f"not JSON: {exc}") from None
            if not isinstance(doc, dict | list):
                # rdflib fails on a bare scalar with an UnboundLocalError
                # (found by tests/integration/test_fuzz.py): refused first.
                raise PayloadError("a JSON-LD document is a JSON object or array")
            if _remote_context(doc):
                raise PayloadError("remote JSON-LD contexts are not fetched; inline the context")
            graph.parse(data=payload.data, format="json-ld", base=_NO_BASE)
        else:
            graph.parse(data=payload.data, format="turtle", publicID=_NO_BASE)
    except PayloadError:
        raise
    except (*_RDF_PARSE_ERRORS, IndexError) as exc:
        relative = _RELATIVE.search(str(exc))
        if relative is not None:
            raise PayloadError(f"relative IRI {relative[1]!r}; use absolute IRIs") from None
        text = str(exc).strip().splitlines()
        raise PayloadError(
            f"{payload.format} does not parse: {text[-1] if text else exc}"
        ) from None
    if len(graph) > MAX_PAYLOAD_TRIPLES:
        raise PayloadError(f"{len(graph)} triples; at most {MAX_PAYLOAD_TRIPLES}")
    subject = subject_of(index)
    labels: dict[Node, BNode] = {}

    def term(t: Node) -> Node:
        if isinstance(t, BNode):
            label = labels.get(t)
            if label is None:
                label = labels[t] = BNode(f"p{index}b{len(labels)}")
            return label
        if isinstance(t, URIRef):
            if t == THIS:
                return subject
            if str(t).startswith(_NO_BASE):
                raise PayloadError(f"relative IRI {str(t)[len(_NO_BASE) :]!r}; use absolute IRIs")
        return t

    out: list[tuple[Node, Node, Node]] = []
    for s, p, o in graph:
        triple = (term(s), term(p), term(o))
        try:
            from_rdflib(*triple)  # absolute IRIs, valid Unicode, terms in their positions
        except KnowledgeError as exc:
            raise PayloadError(str(exc)) from None
        out.append(triple)
    return out


# --------------------------------------------------------------------------- #
# Validation
# --------------------------------------------------------------------------- #


def _severity_name(sev: Node) -> str:
    text = str(sev)
    return text.rpartition("#")[2] if text.startswith(str(SH)) else text


def _errors_for(
    item: ObservationIn,
    index: int,
    results: Sequence[Result],
    payload_nodes: set[Node],
    report_index: int | None,
) -> list[FieldError]:
    paths: dict[Node, str] = {}
    observation_graph(item, index, paths=paths)
    out = []
    for r in results:
        if r.focus in payload_nodes and r.focus not in paths:
            field = PAYLOAD_FIELD
        else:
            field = field_of(paths, r.focus, r.steps)
        out.append(
            FieldError(
                field=field,
                message="; ".join(r.messages),
                index=report_index,
                focus_node=term_text(r.focus),
                path=r.path or None,
                constraint=str(r.component),
                severity=_severity_name(r.severity),
                value=None if r.value is None else term_text(r.value),
            )
        )
    return out


class ObservationGate:
    """The per-sector shapes the ingest path checks observations against.

    Pure and thread-safe: ``loop/shapes_gate.py`` decides where a check runs
    (inline or on a worker thread) and counts the rejections."""

    def __init__(self, shapes: Mapping[str, SectorShapes]) -> None:
        self.shapes = dict(shapes)

    def validate_item(
        self, item: ObservationIn, index: int, report_index: int | None
    ) -> list[FieldError]:
        """The errors of one item (empty: accepted). CPU-bound; thread-safe."""
        compiled = self.shapes[item.sector].compiled
        payload_nodes: set[Node] = set()
        if item.rdf is None:
            if compiled.empty:
                return []  # e.g. the generic sector: nothing to build a view for
            data = observation_graph(item, index)
        else:
            try:
                extra = payload_triples(item.rdf, index)
            except PayloadError as exc:
                return [FieldError(field=PAYLOAD_FIELD, message=str(exc), index=report_index)]
            view = observation_graph(item, index)
            data = DataGraph.from_triples([*view.triples(), *extra])
            payload_nodes = {t for s, _, o in extra for t in (s, o)}
        try:
            outcome = compiled.validate(data)
        except ShaclRuntimeError as exc:
            return [
                FieldError(
                    field="$",
                    message=f"the sector's shapes cannot be evaluated on this observation: {exc}",
                    index=report_index,
                )
            ]
        rejecting = [r for r in outcome.results if r.severity not in _TOLERATED]
        if not rejecting:
            return []
        return _errors_for(item, index, rejecting, payload_nodes, report_index)

    def validate_batch(self, items: Sequence[ObservationIn], single: bool) -> list[FieldError]:
        errors: list[FieldError] = []
        for i, item in enumerate(items):
            errors.extend(self.validate_item(item, i, None if single else i))
        return errors

    @staticmethod
    def needs_thread(items: Sequence[ObservationIn], inline_max_items: int) -> bool:
        """Whether checking ``items`` may block the caller for long: more than
        ``inline_max_items`` items, or any RDF payload to parse."""
        return len(items) > inline_max_items or any(it.rdf is not None for it in items)


def rejection(items: Sequence[ObservationIn], errors: list[FieldError]) -> ShaclRejected | None:
    """The refusal of a request whose items have ``errors`` (None: accepted)."""
    if not errors:
        return None
    bad = sorted({0 if e.index is None else e.index for e in errors})
    return ShaclRejected(errors, len(bad), len(items), Counter(items[i].sector for i in bad))
