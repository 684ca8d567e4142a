"""Stage 2, invariants: the hard invariants Q1–Q5, one sub-verdict each.

- Q1 no retrocausation: the delta changes something (a no-op would make the
  result its own parent); the proposal is judged no earlier than it was made;
  given the snapshot ancestry (parent first): the proposal is written against
  the parent itself (one written against an ancestor would rewrite history),
  the ancestry is a chain (each parent id is the next entry, versions fall by
  one, promotion times never rise going back, no snapshot repeats: none is
  its own ancestor), and neither the proposal nor its judgement precedes the
  parent's promotion.
- Q2 type soundness: every property the delta declares, uses as a predicate,
  or whose domain or range it changes (terms of RDF, RDFS, OWL, XSD and SHACL
  excepted) has, in the result, at least one ``rdfs:domain`` and one
  ``rdfs:range``; each domain is an IRI declared as a class (or rdfs:Resource,
  owl:Thing), each range an IRI declared as a class or a datatype (XSD,
  rdfs:Literal, rdf:langString ...); and the observations' schema-violation
  rate is at most ``max_schema_violation_rate``.
- Q3 hot-path bound: ``estimated_ticks <= max_estimated_ticks`` (8).
- Q4 SLO compliance: hot-path p99 <= ``hot_path_max_ticks`` and warm-path p99
  <= ``warm_path_max_ms``. Where the machine's floor (p99 of a bare 64-byte
  store, ``hot_path_floor_ticks_p99``) already exceeds ``hot_path_max_ticks``,
  no implementation could meet it there: the hot path is judged against
  ``floor x hot_path_floor_tolerance`` instead, and the verdict states the
  bound, the floor and the limit used.
- Q5 performance bounds: RSS <= ``max_memory_mb``, CPU <= ``max_cpu_percent``,
  API p99 <= ``max_tail_ms``, and hot-path p99 at most
  ``max_tick_regression`` above its baseline.

A figure the runtime did not supply (``RuntimeFigures`` field None, or no
ancestry) makes its invariant "not_measured", never "passed": the stage then
warns naming it (``invariants.unmeasured = "warn"``, the default, so a daemon
that has not measured yet still works) or fails (``"reject"``). A measured
failure always fails the stage.

Must never: mutate the context's graphs, read a clock, or perform I/O.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from itertools import pairwise

from rdflib import URIRef
from rdflib.namespace import RDF, RDFS, XSD
from rdflib.term import Node

from knhkd.config import InvariantsConfig
from knhkd.knowledge.rdf import DeltaView
from knhkd.knowledge.vocabulary import (
    CLASS_TYPES,
    PROPERTY_TYPES,
    WELL_KNOWN_CLASSES,
    WELL_KNOWN_DATATYPES,
    declared,
    is_builtin,
)
from knhkd.model import RuntimeFigures, SubVerdict
from knhkd.validate.types import StageOutcome, ValidationContext, listing


@dataclass
class _Judgement:
    id: str
    problems: list[str] = field(default_factory=list)
    unmeasured: list[str] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)

    def bound(self, what: str, value: float | None, limit: float, unit: str = "",
              why: str = "") -> None:
        tail = f" ({why})" if why else ""
        if value is None:
            self.unmeasured.append(f"{what} not measured{tail}")
        elif value > limit:
            self.problems.append(f"{what} {value:g}{unit} > {limit:g}{unit}{tail}")
        else:
            self.notes.append(f"{what} {value:g}{unit} <= {limit:g}{unit}{tail}")

    def verdict(self) -> SubVerdict:
        if self.problems:
            return SubVerdict(self.id, "failed", listing(self.problems + self.unmeasured))
        if self.unmeasured:
            return SubVerdict(self.id, "not_measured", listing(self.unmeasured + self.notes))
        return SubVerdict(self.id, "passed", listing(self.notes) or "holds")


def _q1(ctx: ValidationContext) -> SubVerdict:
    j = _Judgement("Q1")
    p = ctx.proposal
    if ctx.result is not None and ctx.result.is_noop:
        j.problems.append("the delta changes nothing: the result would be its own parent")
    if ctx.now_ns < p.created_at_ns:
        j.problems.append(f"judged at {ctx.now_ns}, before the proposal was made at "
                          f"{p.created_at_ns}")
    anc = ctx.inputs.ancestry
    if not anc:
        j.unmeasured.append("snapshot ancestry not supplied")
        return j.verdict()
    parent = anc[0]
    if parent.snapshot_id != p.parent_snapshot_id:
        if any(a.snapshot_id == p.parent_snapshot_id for a in anc[1:]):
            j.problems.append(
                f"written against ancestor {p.parent_snapshot_id[:16]}, not the parent "
                f"{parent.snapshot_id[:16]}: it would rewrite history"
            )
        else:
            j.problems.append(f"written against {p.parent_snapshot_id[:16]}, not the parent "
                              f"{parent.snapshot_id[:16]}")
    ids = [a.snapshot_id for a in anc]
    if len(set(ids)) != len(ids):
        j.problems.append("the ancestry repeats a snapshot: one would be its own ancestor")
    for child, older in pairwise(anc):
        if child.parent_id != older.snapshot_id:
            j.problems.append(f"ancestry broken: {child.snapshot_id[:16]}'s parent is not "
                              f"{older.snapshot_id[:16]}")
        if child.version != older.version + 1:
            j.problems.append(f"version {child.version} follows {older.version}")
        if child.promoted_at_ns < older.promoted_at_ns:
            j.problems.append(f"snapshot {child.snapshot_id[:16]} was promoted before its "
                              f"parent {older.snapshot_id[:16]}")
    if anc[-1].parent_id is None and anc[-1].version != 0:
        j.problems.append(f"a snapshot without parent has version {anc[-1].version}, not 0")
    if p.created_at_ns < parent.promoted_at_ns:
        j.problems.append("the proposal was made before its parent snapshot was promoted")
    if ctx.now_ns < parent.promoted_at_ns:
        j.problems.append("judged before the parent snapshot was promoted")
    if not j.problems:
        j.notes.append(f"parent {parent.snapshot_id[:16]} (version {parent.version}), "
                       f"{len(anc)} ancestor(s) in order")
    return j.verdict()


def _is_datatype(term: Node) -> bool:
    return isinstance(term, URIRef) and (
        str(term).startswith(str(XSD)) or term in WELL_KNOWN_DATATYPES
    )


def _is_class(view: DeltaView, term: Node) -> bool:
    return isinstance(term, URIRef) and (
        term in WELL_KNOWN_CLASSES or declared(view, term, CLASS_TYPES)
    )


def _checked_properties(view: DeltaView) -> set[Node]:
    props: set[Node] = set()
    for s, p, o in view.new:
        if not is_builtin(p):
            props.add(p)
        if p == RDF.type and o in PROPERTY_TYPES:
            props.add(s)
        if p in (RDFS.domain, RDFS.range):
            props.add(s)
    for s, p, _o in view.gone:
        if p in (RDFS.domain, RDFS.range) and declared(view, s, PROPERTY_TYPES):
            props.add(s)
    return {x for x in props if not is_builtin(x)}


def _q2(ctx: ValidationContext, cfg: InvariantsConfig, figures: RuntimeFigures) -> SubVerdict:
    j = _Judgement("Q2")
    view = ctx.result
    if view is None:
        j.problems.append("the delta does not apply")
        return j.verdict()
    props = sorted(_checked_properties(view), key=str)
    for prop in props:
        name = f"<{prop}>"
        domains = list(view.objects(prop, RDFS.domain))
        ranges = list(view.objects(prop, RDFS.range))
        if not domains:
            j.problems.append(f"{name} has no rdfs:domain")
        if not ranges:
            j.problems.append(f"{name} has no rdfs:range")
        j.problems.extend(
            f"{name} has domain {d.n3()}, not a declared class"
            for d in domains if not _is_class(view, d)
        )
        j.problems.extend(
            f"{name} has range {r.n3()}, neither a declared class nor a datatype"
            for r in ranges if not (_is_class(view, r) or _is_datatype(r))
        )
    if not j.problems:
        j.notes.append(f"{len(props)} propert(y/ies) typed soundly")
    j.bound("observation schema-violation rate", figures.schema_violation_rate,
            cfg.max_schema_violation_rate)
    return j.verdict()


def _q3(ctx: ValidationContext, cfg: InvariantsConfig) -> SubVerdict:
    j = _Judgement("Q3")
    j.bound("estimated_ticks", ctx.proposal.estimated_ticks, cfg.max_estimated_ticks)
    return j.verdict()


def hot_path_limit(cfg: InvariantsConfig, floor: float | None) -> tuple[float, str]:
    """The hot-path limit Q4 applies, and how it was chosen (for the verdict)."""
    bound = cfg.hot_path_max_ticks
    if floor is None:
        return bound, "floor not measured"
    if floor <= bound:
        return bound, f"floor p99 {floor:g} ticks"
    limit = floor * cfg.hot_path_floor_tolerance
    return limit, (f"bound {bound:g} ticks is below this machine's floor p99 {floor:g} "
                   f"ticks: limit floor x {cfg.hot_path_floor_tolerance:g}")


def _q4(cfg: InvariantsConfig, f: RuntimeFigures) -> SubVerdict:
    j = _Judgement("Q4")
    limit, why = hot_path_limit(cfg, f.hot_path_floor_ticks_p99)
    j.bound("hot-path p99", f.hot_path_ticks_p99, limit, " ticks", why)
    j.bound("warm-path p99", f.warm_path_ms, cfg.warm_path_max_ms, " ms")
    return j.verdict()


def _q5(cfg: InvariantsConfig, f: RuntimeFigures) -> SubVerdict:
    j = _Judgement("Q5")
    j.bound("RSS", f.rss_mb, cfg.max_memory_mb, " MB")
    j.bound("CPU", f.cpu_percent, cfg.max_cpu_percent, " %")
    j.bound("API p99", f.p99_ms, cfg.max_tail_ms, " ms")
    if f.hot_path_ticks_p99 is None or f.tick_baseline_p99 is None or f.tick_baseline_p99 <= 0:
        j.unmeasured.append("tick regression not measured (needs hot-path p99 and a baseline)")
    else:
        rise = (f.hot_path_ticks_p99 - f.tick_baseline_p99) / f.tick_baseline_p99
        taken = f.tick_baseline_source or "an unnamed point"
        if f.tick_baseline is not None:
            taken = f"promotion (snapshot {f.tick_baseline.snapshot_id[:16]} made current)"
        j.bound("hot-path tick regression", round(rise * 100, 3),
                cfg.max_tick_regression * 100, " %",
                f"baseline {f.tick_baseline_p99:g} ticks, taken at {taken}")
    return j.verdict()


class InvariantsStage:
    number = 2
    name = "invariants"

    def run(self, ctx: ValidationContext) -> StageOutcome:
        cfg = ctx.inputs.settings.invariants
        figures = ctx.inputs.figures
        subs = [_q1(ctx), _q2(ctx, cfg, figures), _q3(ctx, cfg), _q4(cfg, figures),
                _q5(cfg, figures)]
        message = "; ".join(f"{s.id} {s.verdict}: {s.message}" for s in subs)
        if any(s.verdict == "failed" for s in subs):
            return StageOutcome.failed(message, subs)
        unmeasured = [s.id for s in subs if s.verdict == "not_measured"]
        if unmeasured:
            if cfg.unmeasured == "reject":
                return StageOutcome.failed(
                    f"not measured: {', '.join(unmeasured)} (invariants.unmeasured = reject); "
                    f"{message}", subs)
            return StageOutcome.warning(f"not measured: {', '.join(unmeasured)}; {message}",
                                        subs)
        return StageOutcome.passed(message, subs)
