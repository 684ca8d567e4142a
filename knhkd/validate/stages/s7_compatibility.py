"""Stage 7, compatibility: the ΔΣ does not break what the knowledge still
uses, and ontology versions follow semver.

Two sub-verdicts:
- ``data``: a class or property whose every declaration the delta removes must
  not still be used in the result: as the type of an instance, as a
  predicate, or as the object of rdfs:subClassOf, rdfs:subPropertyOf,
  rdfs:domain or rdfs:range. (Removing the declaration together with all its
  uses is compatible.)
- ``ontology_version``: for every ontology (a subject typed owl:Ontology in
  parent or result) the ``owl:versionInfo`` (at most one) follows Semantic
  Versioning 2.0.0:
  * a version, once given, is not removed;
  * a new or changed version is valid semver and, when the old one is semver
    too, strictly greater by semver precedence (never backwards or equal);
  * when the delta changes the ontology's vocabulary (terms whose IRI starts
    with the ontology IRI, or that are rdfs:isDefinedBy it) and the ontology
    is versioned: removing a term (no declaration left) needs a MAJOR bump,
    declaring a new term at least a MINOR bump, and either without a bump
    fails; an unversioned ontology is not judged (and said so).

A failure is a warning unless the pipeline is strict.

Must never: mutate the context's graphs, read a clock, or perform I/O.
"""

from __future__ import annotations

from rdflib import Literal, URIRef
from rdflib.namespace import OWL, RDF, RDFS
from rdflib.term import Node

from knhkd.knowledge import semver
from knhkd.knowledge.rdf import DeltaView
from knhkd.knowledge.vocabulary import DECLARATION_TYPES, newly_declared, undeclared
from knhkd.model import SubVerdict
from knhkd.validate.types import StageOutcome, ValidationContext, listing

_REFERENCES = (RDFS.subClassOf, RDFS.subPropertyOf, RDFS.domain, RDFS.range)


def _uses(view: DeltaView, term: Node) -> list[str]:
    instances = sum(1 for _ in view.triples((None, RDF.type, term)))
    as_property = sum(1 for _ in view.triples((None, term, None)))
    references = sum(1 for p in _REFERENCES for _ in view.triples((None, p, term)))
    found = []
    if instances:
        found.append(f"{instances} instance(s)")
    if as_property:
        found.append(f"{as_property} triple(s) using it as property")
    if references:
        found.append(f"{references} reference(s) to it")
    return found


def _data(view: DeltaView) -> SubVerdict:
    problems = []
    gone = sorted(undeclared(view, DECLARATION_TYPES), key=str)
    for term in gone:
        uses = _uses(view, term)
        if uses:
            problems.append(f"{term.n3()} is no longer declared but the result still has "
                            f"{', '.join(uses)}")
    if problems:
        return SubVerdict("data", "failed", listing(problems))
    if gone:
        return SubVerdict("data", "passed",
                          f"{len(gone)} term(s) removed with all their uses")
    return SubVerdict("data", "passed", "no class or property removed")


def _version_of(triples: list[Node]) -> tuple[str | None, str | None]:
    """(version text, problem)."""
    if len(triples) > 1:
        return None, f"{len(triples)} owl:versionInfo values"
    if not triples:
        return None, None
    v = triples[0]
    if not isinstance(v, Literal):
        return None, f"owl:versionInfo {v.n3()} is not a literal"
    return str(v), None


def _belongs(view: DeltaView, term: Node, ontology: Node) -> bool:
    if isinstance(term, URIRef) and isinstance(ontology, URIRef) and str(term).startswith(
        str(ontology)
    ):
        return True
    return (term, RDFS.isDefinedBy, ontology) in view or (
        term, RDFS.isDefinedBy, ontology
    ) in view.parent


def _ontology(view: DeltaView, ontology: Node, removed: set[Node], added: set[Node]
              ) -> list[str]:
    name = ontology.n3()
    old, old_problem = _version_of(list(view.parent.objects(ontology, OWL.versionInfo)))
    new, new_problem = _version_of(list(view.objects(ontology, OWL.versionInfo)))
    problems = [f"{name}: {p}" for p in (new_problem,) if p]
    if new_problem:
        return problems
    lost = sorted(str(t) for t in removed if _belongs(view, t, ontology))
    gained = sorted(str(t) for t in added if _belongs(view, t, ontology))
    if old is None and old_problem is None and new is None:
        return []
    if new is None:
        return [f"{name}: owl:versionInfo {old!r} removed"] if old is not None else []
    new_v = semver.parse(new)
    if new_v is None:
        return [f"{name}: version {new!r} is not semver (MAJOR.MINOR.PATCH)"]
    old_v = semver.parse(old) if old is not None else None
    if old is None or old_v is None:
        # First version, or the old one was not semver: nothing to compare with.
        return []
    if new == old:
        if lost:
            return [f"{name}: removes {len(lost)} term(s) without a version bump "
                    f"(needs MAJOR): {listing(lost, 3)}"]
        if gained:
            return [f"{name}: declares {len(gained)} term(s) without a version bump "
                    f"(needs MINOR): {listing(gained, 3)}"]
        return []
    if not old_v.precedes(new_v):
        return [f"{name}: version {new} does not follow {old} (semver precedence)"]
    kind = old_v.bump_kind(new_v)
    if lost and kind != "major":
        return [f"{name}: {old} → {new} is a {kind} bump but removes term(s) "
                f"(needs MAJOR): {listing(lost, 3)}"]
    if gained and kind == "patch":
        return [f"{name}: {old} → {new} is a patch bump but declares term(s) "
                f"(needs MINOR): {listing(gained, 3)}"]
    return []


def _versions(view: DeltaView) -> SubVerdict:
    ontologies = sorted(
        {s for s, _, _ in view.union_triples((None, RDF.type, OWL.Ontology))}, key=str
    )
    removed = undeclared(view, DECLARATION_TYPES)
    added = newly_declared(view, DECLARATION_TYPES)
    problems = [p for o in ontologies for p in _ontology(view, o, removed, added)]
    if problems:
        return SubVerdict("ontology_version", "failed", listing(problems))
    versioned = [o for o in ontologies if next(view.objects(o, OWL.versionInfo), None)]
    return SubVerdict(
        "ontology_version", "passed",
        f"{len(versioned)} of {len(ontologies)} ontolog(y/ies) versioned; versions follow semver",
    )


class CompatibilityStage:
    number = 7
    name = "compatibility"

    def run(self, ctx: ValidationContext) -> StageOutcome:
        view = ctx.result
        if view is None:
            return StageOutcome.failed(f"delta does not apply: {ctx.delta_error}")
        subs = [_data(view), _versions(view)]
        message = "; ".join(f"{s.id} {s.verdict}: {s.message}" for s in subs)
        if any(s.verdict == "failed" for s in subs):
            return StageOutcome.failed(message, subs)
        return StageOutcome.passed(message, subs)
