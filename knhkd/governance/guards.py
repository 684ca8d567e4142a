"""Guards: protected vocabulary and a run-length bound, loaded from TOML.

Files: ``<guards_dir>/*.toml``, each an array of ``[[guard]]`` tables (fields
of ``model.Guard``): ``id``, ``name``, ``criticality`` (critical, high, medium,
low), ``immutable``, ``protected_classes`` and ``protected_properties``
(absolute IRIs, no angle brackets), ``max_run_length`` (ticks).

The rules:
- A ΔΣ *removes* a protected item when a triple it removes (and does not add
  back) mentions the item in any position: the item's own triples
  (declaration, domain, range, labels), a use of the property, a typing as the
  class, a reference to it (``rdfs:subClassOf``, ``rdfs:domain`` ...). Adding
  triples never trips a guard.
- A proposal whose ``estimated_ticks`` exceed a guard's ``max_run_length``
  trips it.
- A tripped guard rejects the proposal at stage 4 unless it is relaxed at the
  time of judgement (see relaxation.py).

Guarantees: the guard set's ``digest`` is the SHA-256 of a canonical encoding
of every guard (sorted by id); load errors name the file and the key; ids are
unique across files.

Must never: read files other than the directory's ``*.toml``, or read a clock.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from pathlib import Path

from rdflib import URIRef
from rdflib.term import Node

from knhkd.governance.files import GovernanceFileError, convert, entries, read_toml
from knhkd.knowledge.rdf import NodeTriple, TermError, content_hash, parse_term
from knhkd.model import Guard

_DIGEST_DOMAIN = "knhkd/guard-set/v1"


@dataclass(frozen=True)
class GuardSet:
    """Loaded guards. Build with ``load_guards`` (or from records, in tests)."""

    guards: tuple[Guard, ...] = ()
    digest: str = ""
    _protected: Mapping[str, frozenset[URIRef]] = field(default_factory=dict, repr=False)

    def __post_init__(self) -> None:
        ordered = tuple(sorted(self.guards, key=lambda g: g.id))
        object.__setattr__(self, "guards", ordered)
        if not self.digest:
            object.__setattr__(self, "digest", content_hash(_DIGEST_DOMAIN, list(ordered)))
        object.__setattr__(self, "_protected", {
            g.id: frozenset(URIRef(i) for i in (*g.protected_classes, *g.protected_properties))
            for g in ordered
        })

    def get(self, guard_id: str) -> Guard | None:
        for g in self.guards:
            if g.id == guard_id:
                return g
        return None

    def protected(self, guard_id: str) -> frozenset[URIRef]:
        return self._protected.get(guard_id, frozenset())


@dataclass(frozen=True, slots=True)
class Trip:
    """Why a guard objects to a proposal."""

    guard: Guard
    # Protected IRIs the delta removes, sorted; and the run length, when exceeded.
    removed: tuple[str, ...]
    run_length: int | None

    def describe(self) -> str:
        parts = []
        if self.removed:
            parts.append(f"removes protected {', '.join(f'<{i}>' for i in self.removed)}")
        if self.run_length is not None:
            parts.append(
                f"estimated_ticks {self.run_length} exceeds max run length "
                f"{self.guard.max_run_length}"
            )
        return "; ".join(parts)


def trips(guards: GuardSet, gone: Iterable[NodeTriple], estimated_ticks: int) -> list[Trip]:
    """The guards the proposal trips, in guard id order (relaxation not considered)."""
    touched: set[Node] = set()
    for t in gone:
        touched.update(t)
    out = []
    for g in guards.guards:
        removed = tuple(sorted(str(i) for i in guards.protected(g.id) & touched))
        over = (
            estimated_ticks
            if g.max_run_length is not None and estimated_ticks > g.max_run_length
            else None
        )
        if removed or over is not None:
            out.append(Trip(g, removed, over))
    return out


def _check_iri(path: Path, key: str, iri: str) -> None:
    try:
        node = parse_term(f"<{iri}>")
    except TermError as exc:
        raise GovernanceFileError(path, key, str(exc)) from None
    if str(node) != iri:
        raise GovernanceFileError(path, key, f"write the IRI unescaped: {iri!r}")


def load_guards(directory: Path) -> GuardSet:
    """Every ``*.toml`` in ``directory``; errors name the file and key."""
    if not directory.is_dir():
        raise GovernanceFileError(directory, "", "not a directory")
    guards: list[Guard] = []
    seen: dict[str, Path] = {}
    for path in sorted(directory.glob("*.toml"), key=lambda p: p.name):
        for i, raw in enumerate(entries(read_toml(path), "guard", path)):
            key = f"guard[{i}]"
            g = convert(raw, Guard, path, key)
            if g.id in seen:
                raise GovernanceFileError(path, f"{key}.id",
                                          f"{g.id} is already defined in {seen[g.id]}")
            seen[g.id] = path
            for field_name in ("protected_classes", "protected_properties"):
                for j, iri in enumerate(getattr(g, field_name)):
                    _check_iri(path, f"{key}.{field_name}[{j}]", iri)
            if not (g.protected_classes or g.protected_properties
                    or g.max_run_length is not None):
                raise GovernanceFileError(path, key, "protects nothing")
            guards.append(g)
    return GuardSet(tuple(guards))
