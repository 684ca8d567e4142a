"""knhkd.validate stages 2 (invariants), 3 (doctrines), 4 (guards),
5 (performance budget) and 7 (compatibility), stage time budgets, and the
default pipeline running all seven."""

from __future__ import annotations

from collections.abc import Iterator
from datetime import UTC, datetime
from pathlib import Path

import msgspec
import pytest
from rdflib import Graph

from knhkd.config import (
    BudgetConfig,
    GovernanceConfig,
    InvariantsConfig,
    StageTimeBudgets,
    ValidateConfig,
)
from knhkd.governance.doctrines import DoctrineSet, load_doctrines
from knhkd.governance.guards import GuardSet, load_guards
from knhkd.governance.relaxation import GuardRelaxations
from knhkd.knowledge.rdf import apply_delta, load_ontology
from knhkd.knowledge.shacl import Shapes
from knhkd.model import (
    Delta,
    Proposal,
    ProposalIn,
    ProposalSignature,
    RuntimeFigures,
    Snapshot,
    StageResult,
    Triple,
    ValidationReport,
)
from knhkd.plan.proposals import make_proposal
from knhkd.validate.pipeline import default_pipeline
from knhkd.validate.stages.s5_budget import cost
from knhkd.validate.types import ValidationInputs

REPO = Path(__file__).resolve().parents[2]
K = "urn:knhk:ontology#"
RDF_TYPE = "<http://www.w3.org/1999/02/22-rdf-syntax-ns#type>"
RDF = "http://www.w3.org/1999/02/22-rdf-syntax-ns#"
RDFS = "http://www.w3.org/2000/01/rdf-schema#"
OWL = "http://www.w3.org/2002/07/owl#"
XSD = "http://www.w3.org/2001/XMLSchema#"
SH = "http://www.w3.org/ns/shacl#"
NOW = int(datetime(2025, 6, 11, 12, tzinfo=UTC).timestamp()) * 1_000_000_000  # a Wednesday
H = 3_600_000_000_000
GOOD = RuntimeFigures(rss_mb=200, cpu_percent=10, p99_ms=5, hot_path_ticks_p99=6,
                      tick_baseline_p99=6, warm_path_ms=3, schema_violation_rate=0.0)
ANCESTRY = (
    Snapshot("p" * 64, "g" * 64, 1, NOW - 2 * H, 100),
    Snapshot("g" * 64, None, 0, NOW - 3 * H, 90),
)
SIGNED = ["alice:controller@finance", "bob:auditor@compliance"]


@pytest.fixture(scope="module")
def shapes() -> Shapes:
    return Shapes.load(REPO / "conf" / "shapes")


@pytest.fixture(scope="module")
def onto() -> Graph:
    return load_ontology(REPO / "conf" / "ontology")


@pytest.fixture(scope="module")
def doctrines() -> DoctrineSet:
    return load_doctrines(REPO / "conf" / "doctrines")


@pytest.fixture(scope="module")
def guards() -> GuardSet:
    return load_guards(REPO / "conf" / "guards")


def _clock(step_ms: float = 2.5) -> Iterator[float]:
    t = 0.0
    while True:
        yield t
        t += step_ms / 1e3


def _signature(text: str) -> ProposalSignature:
    """``name[:role][@unit]`` as the signature of principal ``name``."""
    rest, _, unit = text.partition("@")
    name, _, role = rest.partition(":")
    cap = f"{role}@{unit}" if unit else role
    return ProposalSignature(principal=name, capacities=[cap] if cap else [], at_ns=NOW - H)


def _proposal(delta: Delta, *, sector: str = "finance", signers: list[str] | None = None,
              ticks: int = 0, created: int = NOW - H,
              resources: dict[str, float] | None = None,
              declared: list[str] | None = None) -> Proposal:
    """A proposal signed by ``signers`` (as principals' signatures) and
    declaring ``declared`` in its body."""
    p = make_proposal(
        ProposalIn(sector=sector, description="t", delta=delta,  # type: ignore[arg-type]
                   signers=declared or [], estimated_ticks=ticks,
                   resources=resources or {}),
        ANCESTRY[0].snapshot_id, created,
    )
    p.signatures = [_signature(t) for t in (SIGNED if signers is None else signers)]
    return p


def _run(parent: Graph, shapes: Shapes, proposal: Proposal, inputs: ValidationInputs, *,
         strict: bool = False, now: int = NOW, step_ms: float = 2.5) -> ValidationReport:
    ticks = _clock(step_ms)
    return default_pipeline().run(
        proposal, parent, shapes, strict=strict, now_ns=now,
        perf_counter=lambda: next(ticks), inputs=inputs,
    )


@pytest.fixture
def inputs(doctrines: DoctrineSet, guards: GuardSet) -> ValidationInputs:
    return ValidationInputs(doctrines=doctrines, guards=guards, figures=GOOD,
                            ancestry=ANCESTRY)


def _stage(report: ValidationReport, number: int) -> StageResult:
    (found,) = [s for s in report.stages if s.stage == number]
    return found


def _policy(i: int, max_events: str = "5") -> list[Triple]:
    s = f"<urn:knhk:policy:{i}>"
    return [
        Triple(s, RDF_TYPE, f"<{K}RateLimitPolicy>"),
        Triple(s, f"<{K}eventType>", '"login"'),
        Triple(s, f"<{K}sector>", f"<{K}finance>"),
        Triple(s, f"<{K}maxEvents>", f'"{max_events}"^^<{XSD}integer>'),
        Triple(s, f"<{K}windowSeconds>", f'"60.0"^^<{XSD}decimal>'),
    ]


def test_a_good_proposal_passes_all_seven_stages(
    onto: Graph, shapes: Shapes, inputs: ValidationInputs
) -> None:
    report = _run(onto, shapes, _proposal(Delta(add=_policy(1))), inputs)
    assert report.passed and report.stages_not_run == []
    assert [(s.stage, s.verdict) for s in report.stages] == [
        (n, "passed") for n in range(1, 8)
    ]
    assert [v.id for v in _stage(report, 2).sub_verdicts] == ["Q1", "Q2", "Q3", "Q4", "Q5"]
    assert {v.id for v in _stage(report, 3).sub_verdicts} == {
        "FIN-APPROVAL-001", "FIN-BUDGET-001", "FIN-SCHEMA-001"
    }
    assert _stage(report, 3).message.startswith(f"doctrine set {inputs.doctrines.digest[:16]}")
    # The report, sub-verdicts included, is a storable record.
    assert msgspec.msgpack.decode(msgspec.msgpack.encode(report),
                                  type=ValidationReport) == report


# --------------------------------------------------------------------------- #
# the list
# --------------------------------------------------------------------------- #


def test_removing_a_guarded_class_is_rejected_at_stage_4_naming_it(
    onto: Graph, shapes: Shapes, inputs: ValidationInputs
) -> None:
    delta = Delta(remove=[Triple(f"<{K}Account>", RDF_TYPE, f"<{OWL}Class>")])
    report = _run(onto, shapes, _proposal(delta), inputs)
    assert not report.passed
    last = report.stages[-1]
    assert (last.stage, last.verdict) == (4, "failed")
    assert f"<{K}Account>" in last.message and "finance-core" in last.message
    assert [(v.id, v.verdict) for v in last.sub_verdicts] == [
        ("finance-core", "failed"), ("knhk-core", "passed")
    ]


def test_a_delta_violating_a_shape_is_rejected_at_stage_1(
    onto: Graph, shapes: Shapes, inputs: ValidationInputs
) -> None:
    report = _run(onto, shapes, _proposal(Delta(add=_policy(1, "0"))), inputs)
    assert not report.passed
    (only,) = report.stages
    assert (only.stage, only.verdict) == (1, "failed")
    assert "MinInclusiveConstraintComponent" in only.message


@pytest.mark.parametrize("stage", ["guards", "compatibility"])
def test_a_stage_over_its_time_budget_rejects(
    onto: Graph, shapes: Shapes, inputs: ValidationInputs, stage: str
) -> None:
    budgets = msgspec.structs.replace(StageTimeBudgets(), **{stage: 1.0})
    tight = _with(inputs, settings=ValidateConfig(time_budget_ms=budgets))
    # Every stage takes 2.5 ms on the injected clock; this one may take 1 ms.
    report = _run(onto, shapes, _proposal(Delta(add=_policy(1))), tight, strict=False)
    assert not report.passed
    last = report.stages[-1]
    assert last.name == stage and last.verdict == "failed"
    assert "over its time budget: took 2.500 ms, budget 1 ms" in last.message
    assert "the stage itself concluded passed" in last.message


# --------------------------------------------------------------------------- #
# stage 2: invariants
# --------------------------------------------------------------------------- #


def _q(report: ValidationReport, q: str) -> tuple[str, str]:
    (sub,) = [v for v in _stage(report, 2).sub_verdicts if v.id == q]
    return sub.verdict, sub.message


def _with(inputs: ValidationInputs, **changes: object) -> ValidationInputs:
    fields = {f: getattr(inputs, f) for f in ValidationInputs.__dataclass_fields__}
    fields.update(changes)
    return ValidationInputs(**fields)  # type: ignore[arg-type]


def test_q1_no_retrocausation(onto: Graph, shapes: Shapes, inputs: ValidationInputs) -> None:
    ok = _run(onto, shapes, _proposal(Delta(add=_policy(1))), inputs)
    assert _q(ok, "Q1")[0] == "passed"
    noop = _run(onto, shapes, _proposal(Delta()), inputs)
    assert _q(noop, "Q1")[0] == "failed" and "changes nothing" in _q(noop, "Q1")[1]
    assert _stage(noop, 2).verdict == "failed" and not noop.passed
    # Written against the grandparent: a history rewrite.
    old = make_proposal(ProposalIn(sector="finance", description="t",
                                   delta=Delta(add=_policy(1)), signers=SIGNED),
                        ANCESTRY[1].snapshot_id, NOW - H)
    rewrite = _run(onto, shapes, old, inputs)
    assert "rewrite history" in _q(rewrite, "Q1")[1]
    # A proposal made before its parent existed.
    early = _run(onto, shapes, _proposal(Delta(add=_policy(1)), created=NOW - 10 * H), inputs)
    assert "before its parent snapshot was promoted" in _q(early, "Q1")[1]
    # An ancestry in which a snapshot is its own ancestor.
    loop = (ANCESTRY[0], msgspec.structs.replace(ANCESTRY[0], version=0, parent_id=None))
    looped = _run(onto, shapes, _proposal(Delta(add=_policy(1))), _with(inputs, ancestry=loop))
    assert "its own ancestor" in _q(looped, "Q1")[1]
    unknown = _run(onto, shapes, _proposal(Delta(add=_policy(1))), _with(inputs, ancestry=()))
    assert _q(unknown, "Q1")[0] == "not_measured"


def test_q2_type_soundness(onto: Graph, shapes: Shapes, inputs: ValidationInputs) -> None:
    prop = f"<{K}colour>"
    declared = [Triple(prop, RDF_TYPE, f"<{OWL}DatatypeProperty>")]
    bare = _run(onto, shapes, _proposal(Delta(add=declared)), inputs)
    verdict, why = _q(bare, "Q2")
    assert verdict == "failed" and "has no rdfs:domain" in why and "has no rdfs:range" in why
    sound = [*declared, Triple(prop, f"<{RDFS}domain>", f"<{K}Account>"),
             Triple(prop, f"<{RDFS}range>", f"<{XSD}string>")]
    assert _q(_run(onto, shapes, _proposal(Delta(add=sound)), inputs), "Q2")[0] == "passed"
    undeclared_range = [*declared, Triple(prop, f"<{RDFS}domain>", f"<{K}Account>"),
                        Triple(prop, f"<{RDFS}range>", f"<{K}Colour>")]
    verdict, why = _q(_run(onto, shapes, _proposal(Delta(add=undeclared_range)), inputs), "Q2")
    assert verdict == "failed" and f"<{K}Colour>" in why
    # Using an undeclared predicate is unsound too.
    used = [Triple("<urn:knhk:account:1>", "<urn:ex:undeclared>", '"x"')]
    assert _q(_run(onto, shapes, _proposal(Delta(add=used)), inputs), "Q2")[0] == "failed"
    rate = _with(inputs, figures=msgspec.structs.replace(GOOD, schema_violation_rate=0.02))
    verdict, why = _q(_run(onto, shapes, _proposal(Delta(add=_policy(1))), rate), "Q2")
    assert verdict == "failed" and "schema-violation rate 0.02 > 0.01" in why


def test_q3_estimated_ticks(onto: Graph, shapes: Shapes, inputs: ValidationInputs) -> None:
    assert _q(_run(onto, shapes, _proposal(Delta(add=_policy(1)), ticks=8), inputs),
              "Q3")[0] == "passed"
    report = _run(onto, shapes, _proposal(Delta(add=_policy(1)), ticks=9), inputs)
    assert _q(report, "Q3") == ("failed", "estimated_ticks 9 > 8")
    assert not report.passed and report.stages[-1].stage == 2


@pytest.mark.parametrize(
    ("q", "figure", "value", "text"),
    [
        ("Q4", "hot_path_ticks_p99", 9.0, "hot-path p99 9 ticks > 8 ticks"),
        ("Q4", "warm_path_ms", 101.0, "warm-path p99 101 ms > 100 ms"),
        ("Q5", "rss_mb", 1025.0, "RSS 1025 MB > 1024 MB"),
        ("Q5", "cpu_percent", 51.0, "CPU 51 % > 50 %"),
        ("Q5", "p99_ms", 501.0, "API p99 501 ms > 500 ms"),
        ("Q5", "tick_baseline_p99", 5.0, "hot-path tick regression 20 % > 10 %"),
    ],
)
def test_q4_q5_runtime_bounds(onto: Graph, shapes: Shapes, inputs: ValidationInputs,
                              q: str, figure: str, value: float, text: str) -> None:
    bad = _with(inputs, figures=msgspec.structs.replace(GOOD, **{figure: value}))
    report = _run(onto, shapes, _proposal(Delta(add=_policy(1))), bad)
    verdict, why = _q(report, q)
    assert verdict == "failed" and text in why
    assert not report.passed


def test_q4_judges_against_the_floor_only_where_it_exceeds_the_bound(
    onto: Graph, shapes: Shapes, inputs: ValidationInputs
) -> None:
    def q4(**figures: float) -> tuple[str, str]:
        f = msgspec.structs.replace(GOOD, **figures)
        return _q(_run(onto, shapes, _proposal(Delta(add=_policy(1))),
                       _with(inputs, figures=f)), "Q4")

    # Floor below the bound of 8: the bound judges, 11 ticks fail.
    verdict, why = q4(hot_path_ticks_p99=11, hot_path_floor_ticks_p99=5)
    assert verdict == "failed" and "11 ticks > 8 ticks" in why and "floor p99 5" in why
    # Floor of 10 above the bound: 11 <= 10 x 1.5 passes, naming bound and floor.
    verdict, why = q4(hot_path_ticks_p99=11, hot_path_floor_ticks_p99=10)
    assert verdict == "passed" and "11 ticks <= 15 ticks" in why
    assert "bound 8 ticks" in why and "floor p99 10 ticks" in why
    verdict, why = q4(hot_path_ticks_p99=16, hot_path_floor_ticks_p99=10)
    assert verdict == "failed" and "16 ticks > 15 ticks" in why


def test_unmeasured_figures_are_never_passed(
    onto: Graph, shapes: Shapes, inputs: ValidationInputs
) -> None:
    blind = _with(inputs, figures=RuntimeFigures(rss_mb=100))
    report = _run(onto, shapes, _proposal(Delta(add=_policy(1))), blind)
    assert report.passed and _stage(report, 2).verdict == "warning"
    assert _q(report, "Q4")[0] == "not_measured" and "not measured" in _q(report, "Q4")[1]
    assert _q(report, "Q5")[0] == "not_measured"
    assert "not measured: Q2, Q4, Q5" in _stage(report, 2).message
    strict = _with(blind, settings=ValidateConfig(
        invariants=InvariantsConfig(unmeasured="reject")))
    rejected = _run(onto, shapes, _proposal(Delta(add=_policy(1))), strict)
    assert not rejected.passed and rejected.stages[-1].stage == 2


# --------------------------------------------------------------------------- #
# stage 3: doctrines
# --------------------------------------------------------------------------- #


def test_a_mandatory_doctrine_blocks(onto: Graph, shapes: Shapes,
                                     inputs: ValidationInputs) -> None:
    report = _run(onto, shapes, _proposal(Delta(add=_policy(1)), signers=["alice@finance"]),
                  inputs)
    last = report.stages[-1]
    assert (last.stage, last.verdict) == (3, "failed") and "FIN-APPROVAL-001" in last.message
    over = _run(onto, shapes, _proposal(Delta(add=_policy(1)),
                                        resources={"transaction_amount": 2e6}), inputs)
    assert over.stages[-1].stage == 3 and "FIN-BUDGET-001" in over.stages[-1].message


def test_warning_and_advisory_doctrines_are_reported(
    onto: Graph, shapes: Shapes, inputs: ValidationInputs
) -> None:
    saturday = int(datetime(2025, 6, 14, 12, tzinfo=UTC).timestamp()) * 1_000_000_000
    p = _proposal(Delta(add=_policy(1)), sector="logistics", created=NOW)
    report = _run(onto, shapes, p, _with(inputs, ancestry=()), now=saturday)
    stage3 = _stage(report, 3)
    assert report.passed and stage3.verdict == "warning"
    assert [(v.id, v.verdict) for v in stage3.sub_verdicts] == [
        ("LOG-DELIVERY-SLA-001", "warning")
    ]
    blank = Delta(add=[Triple("_:b1", f"<{K}eventType>", '"x"'),
                       Triple("_:b1", RDF_TYPE, f"<{K}Policy>"),
                       Triple("_:b1", f"<{K}sector>", f"<{K}generic>")])
    generic = _run(onto, shapes, _proposal(blank, sector="generic"), inputs)
    assert _stage(generic, 3).verdict == "warning"
    assert ("GEN-NO-BNODES-001", "warning") in [
        (v.id, v.verdict) for v in _stage(generic, 3).sub_verdicts
    ]


def test_declared_signers_are_not_counted_only_signatures(
    onto: Graph, shapes: Shapes, inputs: ValidationInputs
) -> None:
    declared = _proposal(Delta(add=_policy(1)), signers=[], declared=SIGNED)
    report = _run(onto, shapes, declared, inputs)
    assert report.stages[-1].stage == 3 and "FIN-APPROVAL-001" in report.stages[-1].message
    # One principal signing in both capacities is one person: still short.
    one = _proposal(Delta(add=_policy(1)), signers=[])
    one.signatures = [ProposalSignature("mallory", ["cfo@finance", "auditor@compliance"], NOW)]
    report = _run(onto, shapes, one, inputs)
    assert "1 distinct signer(s), 2 required" in report.stages[-1].message


# --------------------------------------------------------------------------- #
# stage 4: guards and relaxation
# --------------------------------------------------------------------------- #


def test_a_relaxed_guard_lets_the_removal_through_with_a_warning(
    onto: Graph, shapes: Shapes, inputs: ValidationInputs
) -> None:
    book = GuardRelaxations(inputs.guards, GovernanceConfig())
    rid = book.request("finance-core", "rita", "retire Account", NOW - 30 * H).relaxation_id
    for who in ("a", "b", "c"):
        book.approve(rid, who, NOW - 29 * H)
    book.activate(rid, "rita", NOW - 1)
    relaxed = _with(inputs, relaxations=tuple(book.records()))
    delta = Delta(remove=[Triple(f"<{K}Account>", RDF_TYPE, f"<{OWL}Class>")])
    report = _run(onto, shapes, _proposal(delta), relaxed)
    assert report.passed and _stage(report, 4).verdict == "warning"
    assert "relaxed" in _stage(report, 4).message
    # After the activation window the guard is back on.
    later = _run(onto, shapes, _proposal(delta), relaxed, now=NOW + 2 * H)
    assert not later.passed and later.stages[-1].stage == 4


def test_max_run_length_is_a_guard(onto: Graph, shapes: Shapes, guards: GuardSet,
                                   inputs: ValidationInputs) -> None:
    # Q3's bound raised so that the guard's own bound decides.
    loose = _with(inputs, settings=ValidateConfig(
        invariants=InvariantsConfig(max_estimated_ticks=100)))
    report = _run(onto, shapes, _proposal(Delta(add=_policy(1)), ticks=9), loose)
    assert report.stages[-1].stage == 4
    assert "max run length 8" in report.stages[-1].message


# --------------------------------------------------------------------------- #
# stage 5: performance budget
# --------------------------------------------------------------------------- #


def test_the_cost_formula() -> None:
    assert cost(0, 0, 0, 1.0, 0.5, 3.0) == 0
    assert cost(3, 3, 1, 1.0, 0.5, 3.0) == 3 + 2 + 3
    assert cost(1, 1, 1, 1.0, 0.5, 3.0) == 1 + 1 + 3
    assert cost(10, 0, 0, 0.7, 0.5, 3.0) == 7  # decimal: not ⌈7.000000000000001⌉ = 8


def _vocabulary(n_classes: int, n_props: int, n_shapes: int) -> Delta:
    add = []
    for i in range(n_classes):
        add.append(Triple(f"<{K}C{i}>", RDF_TYPE, f"<{OWL}Class>"))
    for i in range(n_props):
        p = f"<{K}p{i}>"
        add += [Triple(p, RDF_TYPE, f"<{OWL}DatatypeProperty>"),
                Triple(p, f"<{RDFS}domain>", f"<{K}Account>"),
                Triple(p, f"<{RDFS}range>", f"<{XSD}string>")]
    for i in range(n_shapes):
        add.append(Triple(f"<{K}S{i}>", RDF_TYPE, f"<{SH}NodeShape>"))
    return Delta(add=add)


def test_the_budget_against_what_remains(onto: Graph, shapes: Shapes,
                                         inputs: ValidationInputs) -> None:
    delta = _vocabulary(3, 3, 1)  # ⌈3⌉ + ⌈1.5⌉ + ⌈3⌉ = 8 ticks
    fits = _run(onto, shapes, _proposal(delta), _with(inputs, budget_remaining_ticks=8.0))
    assert _stage(fits, 5).verdict == "passed" and "= 8 tick(s)" in _stage(fits, 5).message
    short = _run(onto, shapes, _proposal(delta), _with(inputs, budget_remaining_ticks=7.0))
    assert short.stages[-1].stage == 5 and not short.passed
    assert "exceeds the remaining budget of 7" in short.stages[-1].message
    # Without a figure from the runtime, the configured total is what remains.
    small = _with(inputs, settings=ValidateConfig(budget=BudgetConfig(total_ticks=7.0)))
    assert _run(onto, shapes, _proposal(delta), small).stages[-1].stage == 5
    # Declaring a known property once more (another type) costs nothing.
    again = Delta(add=[Triple(f"<{K}amount>", RDF_TYPE, f"<{OWL}AnnotationProperty>")])
    assert "= 0 tick(s)" in _stage(_run(onto, shapes, _proposal(again), inputs), 5).message


# --------------------------------------------------------------------------- #
# stage 7: compatibility
# --------------------------------------------------------------------------- #


def _compat(report: ValidationReport, sub: str) -> tuple[str, str]:
    (v,) = [x for x in _stage(report, 7).sub_verdicts if x.id == sub]
    return v.verdict, v.message


@pytest.fixture(scope="module")
def with_instances(onto: Graph) -> Graph:
    return apply_delta(onto, Delta(add=_policy(1)))


def _undeclare(term: str, types: list[str]) -> list[Triple]:
    return [Triple(f"<{K}{term}>", RDF_TYPE, f"<{t}>") for t in types]


def test_removing_a_class_still_used_warns_or_rejects_when_strict(
    with_instances: Graph, shapes: Shapes, inputs: ValidationInputs
) -> None:
    # RateLimitPolicy is not guarded; one policy instance still uses it.
    delta = Delta(remove=_undeclare("RateLimitPolicy", [f"{RDFS}Class", f"{OWL}Class"]))
    report = _run(with_instances, shapes, _proposal(delta), inputs)
    verdict, why = _compat(report, "data")
    assert verdict == "failed" and "1 instance(s)" in why
    assert report.passed and _stage(report, 7).verdict == "warning"
    strict = _run(with_instances, shapes, _proposal(delta), inputs, strict=True)
    assert not strict.passed
    # Stage 6 (reversibility) already rejects this delta when strict.
    assert strict.stages[-1].stage == 6


def test_removing_a_property_with_its_uses_is_compatible(
    with_instances: Graph, shapes: Shapes, inputs: ValidationInputs
) -> None:
    used = Delta(remove=_undeclare("windowSeconds", [f"{RDF}Property", f"{OWL}DatatypeProperty"]))
    verdict, why = _compat(_run(with_instances, shapes, _proposal(used), inputs), "data")
    assert verdict == "failed" and "using it as property" in why


def _versioned(onto: Graph, version: str) -> Graph:
    return apply_delta(onto, Delta(add=[
        Triple("<urn:knhk:ontology>", f"<{OWL}versionInfo>", f'"{version}"')
    ]))


def _bump(old: str, new: str | None, extra: list[Triple] | None = None,
          remove: list[Triple] | None = None) -> Delta:
    o = "<urn:knhk:ontology>"
    v = f"<{OWL}versionInfo>"
    add = [Triple(o, v, f'"{new}"')] if new is not None else []
    return Delta(remove=[Triple(o, v, f'"{old}"'), *(remove or [])], add=add + (extra or []))


@pytest.mark.parametrize(
    ("old", "new", "extra", "removed", "ok", "text"),
    [
        ("1.2.3", "1.2.4", False, False, True, ""),
        ("1.2.3", "1.3.0", True, False, True, ""),
        ("1.2.3", "1.2.4", True, False, False, "needs MINOR"),
        ("1.2.3", "1.3.0", False, True, False, "needs MAJOR"),
        ("1.2.3", "2.0.0", False, True, True, ""),
        ("1.2.3", "1.2.2", False, False, False, "does not follow 1.2.3"),
        ("1.2.3", "1.2.3-rc.1", False, False, False, "does not follow"),
        ("1.2.3-rc.1", "1.2.3", False, False, True, ""),
        ("1.2.3", "v1.2.4", False, False, False, "not semver"),
        ("1.2.3", None, False, False, False, "removed"),
    ],
)
def test_ontology_versions_follow_semver(
    onto: Graph, shapes: Shapes, inputs: ValidationInputs, old: str, new: str | None,
    extra: bool, removed: bool, ok: bool, text: str
) -> None:
    parent = _versioned(apply_delta(onto, Delta(add=[
        Triple(f"<{K}Obsolete>", RDF_TYPE, f"<{OWL}Class>")])), old)
    delta = _bump(
        old, new,
        extra=[Triple(f"<{K}Fresh>", RDF_TYPE, f"<{OWL}Class>")] if extra else None,
        remove=[Triple(f"<{K}Obsolete>", RDF_TYPE, f"<{OWL}Class>")] if removed else None,
    )
    verdict, why = _compat(_run(parent, shapes, _proposal(delta), inputs), "ontology_version")
    assert (verdict == "passed") == ok, why
    assert text in why


def test_vocabulary_changes_need_a_bump_once_versioned(
    onto: Graph, shapes: Shapes, inputs: ValidationInputs
) -> None:
    fresh = Delta(add=[Triple(f"<{K}Fresh>", RDF_TYPE, f"<{OWL}Class>")])
    unversioned = _run(onto, shapes, _proposal(fresh), inputs)
    assert _compat(unversioned, "ontology_version")[0] == "passed"
    versioned = _run(_versioned(onto, "1.0.0"), shapes, _proposal(fresh), inputs)
    verdict, why = _compat(versioned, "ontology_version")
    assert verdict == "failed" and "without a version bump (needs MINOR)" in why


def test_warm_computes_the_baselines_ahead(onto: Graph, shapes: Shapes,
                                           inputs: ValidationInputs) -> None:
    pipeline = default_pipeline()
    pipeline.warm(onto, shapes, inputs)
    schema = inputs.doctrines.schema_shapes["FIN-SCHEMA-001"]
    first = pipeline.shacl.baseline(shapes, onto)
    assert pipeline.shacl.baseline(schema, onto) is pipeline.shacl.baseline(schema, onto)
    ticks = _clock()
    report = pipeline.run(_proposal(Delta(add=_policy(1))), onto, shapes, strict=False,
                          now_ns=NOW, perf_counter=lambda: next(ticks), inputs=inputs)
    assert report.passed and pipeline.shacl.baseline(shapes, onto) is first
