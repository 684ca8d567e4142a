"""knhkd.validate: the pipeline's rules and stages 1 (static) and 6 (rollback);
stages 2–5 and 7 are tested in test_validate_stages.py."""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest
from rdflib import Graph

from knhkd.knowledge.rdf import KnowledgeError, load_ontology
from knhkd.knowledge.shacl import Shapes
from knhkd.model import Delta, Proposal, ProposalIn, Triple, ValidationReport
from knhkd.plan.proposals import make_proposal
from knhkd.validate.pipeline import Pipeline, default_pipeline
from knhkd.validate.stages import RollbackStage, StaticStage
from knhkd.validate.types import PipelineError, StageOutcome, ValidationContext

REPO = Path(__file__).resolve().parents[2]
K = "urn:knhk:ontology#"
RDF_TYPE = "<http://www.w3.org/1999/02/22-rdf-syntax-ns#type>"
OWL_CLASS = "<http://www.w3.org/2002/07/owl#Class>"
INT = "<http://www.w3.org/2001/XMLSchema#integer>"
DEC = "<http://www.w3.org/2001/XMLSchema#decimal>"
NOW = 1_700_000_000_000_000_000
# With default inputs nothing measured is passed in: stage 2 warns "not
# measured" (never passes); no doctrines, no guards, the whole budget.
DEFAULT_VERDICTS = [(2, "warning"), (3, "passed"), (4, "passed"), (5, "passed")]


@pytest.fixture(scope="module")
def shapes() -> Shapes:
    return Shapes.load(REPO / "conf" / "shapes")


@pytest.fixture(scope="module")
def parent() -> Graph:
    return load_ontology(REPO / "conf" / "ontology")


def _clock() -> Iterator[float]:
    t = 0.0
    while True:
        yield t
        t += 0.0025


def _proposal(delta: Delta) -> Proposal:
    return make_proposal(ProposalIn(sector="finance", description="t", delta=delta), "p", NOW)


def _run(
    parent: Graph,
    shapes: Shapes,
    delta: Delta,
    *,
    strict: bool = False,
    pipeline: Pipeline | None = None,
) -> ValidationReport:
    ticks = _clock()
    return (pipeline or default_pipeline()).run(
        _proposal(delta),
        parent,
        shapes,
        strict=strict,
        now_ns=NOW,
        perf_counter=lambda: next(ticks),
    )


def _policy(max_events: str = f'"10"^^{INT}') -> list[Triple]:
    s = "<urn:knhk:policy:rate-limit:finance:login>"
    return [
        Triple(s, RDF_TYPE, f"<{K}RateLimitPolicy>"),
        Triple(s, f"<{K}eventType>", '"login"'),
        Triple(s, f"<{K}sector>", f"<{K}finance>"),
        Triple(s, f"<{K}maxEvents>", max_events),
        Triple(s, f"<{K}windowSeconds>", f'"60.0"^^{DEC}'),
    ]


def test_conforming_delta_passes(parent: Graph, shapes: Shapes) -> None:
    before = len(parent)
    report = _run(parent, shapes, Delta(add=_policy()))
    assert report.passed
    assert [(s.stage, s.verdict, s.passed) for s in report.stages] == [
        (1, "passed", True),
        *((n, v, True) for n, v in DEFAULT_VERDICTS),
        (6, "passed", True),
        (7, "passed", True),
    ]
    assert [s.name for s in report.stages] == [
        "static", "invariants", "doctrines", "guards", "performance_budget", "rollback",
        "compatibility",
    ]
    assert report.stages_not_run == []
    assert report.timestamp_ns == NOW and report.proposal_id == _proposal(Delta(add=_policy())).id
    assert all(s.duration_ms == pytest.approx(2.5) for s in report.stages)
    assert len(parent) == before


def test_shape_violation_rejected_at_stage_1(parent: Graph, shapes: Shapes) -> None:
    report = _run(parent, shapes, Delta(add=_policy(f'"0"^^{INT}')))
    assert not report.passed
    (only,) = report.stages  # fail fast: stage 6 never ran
    assert (only.stage, only.verdict, only.passed) == (1, "failed", False)
    assert "<urn:knhk:policy:rate-limit:finance:login>" in only.message
    assert "<urn:knhk:ontology#maxEvents>" in only.message
    assert "MinInclusiveConstraintComponent" in only.message
    assert report.stages_not_run == []


def test_non_applying_delta_rejected_at_stage_1(parent: Graph, shapes: Shapes) -> None:
    absent = Triple("<urn:ex:nothing>", "<urn:ex:p>", '"x"')
    report = _run(parent, shapes, Delta(remove=[absent], add=_policy()))
    assert not report.passed
    (only,) = report.stages
    assert only.stage == 1 and only.verdict == "failed"
    assert "does not apply" in only.message and "<urn:ex:nothing>" in only.message


def test_malformed_term_rejected_at_stage_1(parent: Graph, shapes: Shapes) -> None:
    bad = Triple("<urn:ex:s>", "<urn:ex:p>", "<not absolute>")
    report = _run(parent, shapes, Delta(add=[bad]))
    assert not report.passed and report.stages[0].stage == 1
    assert "not absolute" in report.stages[0].message


def test_ill_typed_literal_rejected_at_stage_1(parent: Graph, shapes: Shapes) -> None:
    bad = Triple("<urn:ex:s>", "<urn:ex:p>", f'"many"^^{INT}')
    report = _run(parent, shapes, Delta(add=[bad]))
    assert not report.passed and "ill-typed" in report.stages[0].message


def _class_removal() -> Delta:
    return Delta(remove=[Triple(f"<{K}Account>", RDF_TYPE, OWL_CLASS)])


def test_removing_a_class_declaration_warns_at_stage_6(parent: Graph, shapes: Shapes) -> None:
    report = _run(parent, shapes, _class_removal())
    assert report.passed
    assert [(s.stage, s.verdict) for s in report.stages] == [
        (1, "passed"), *DEFAULT_VERDICTS, (6, "warning"), (7, "passed")
    ]
    assert report.stages[5].passed
    assert f"<{K}Account>" in report.stages[5].message


def test_removing_a_class_declaration_rejected_when_strict(parent: Graph, shapes: Shapes) -> None:
    report = _run(parent, shapes, _class_removal(), strict=True)
    assert not report.passed
    assert [(s.stage, s.verdict, s.passed) for s in report.stages] == [
        (1, "passed", True),
        *((n, v, True) for n, v in DEFAULT_VERDICTS),
        (6, "failed", False),
    ]


# --------------------------------------------------------------------------- #
# the pipeline's own rules, with stand-in stages
# --------------------------------------------------------------------------- #


@dataclass
class Fixed:
    number: int
    name: str
    outcome: StageOutcome
    calls: int = 0

    def run(self, ctx: ValidationContext) -> StageOutcome:
        self.calls += 1
        return self.outcome


@dataclass
class Raising:
    number: int = 3
    name: str = "doctrines"

    def run(self, ctx: ValidationContext) -> StageOutcome:
        raise KnowledgeError("doctrine set unreadable")


def test_stages_run_in_number_order_and_fail_fast(parent: Graph, shapes: Shapes) -> None:
    guards = Fixed(4, "guards", StageOutcome.failed("protected"))
    compat = Fixed(7, "compatibility", StageOutcome.passed())
    budget = Fixed(5, "performance_budget", StageOutcome.passed())
    p = Pipeline([compat, guards, budget, Fixed(2, "invariants", StageOutcome.warning("q"))])
    report = _run(parent, shapes, Delta(), pipeline=p)
    assert [(s.stage, s.verdict) for s in report.stages] == [(2, "warning"), (4, "failed")]
    assert not report.passed and budget.calls == 0 and compat.calls == 0
    assert report.stages_not_run == ["static", "doctrines", "rollback"]


def test_late_stage_failures_warn_unless_strict(parent: Graph, shapes: Shapes) -> None:
    p = Pipeline(
        [
            Fixed(6, "rollback", StageOutcome.failed("r")),
            Fixed(7, "compatibility", StageOutcome.failed("c")),
        ]
    )
    lenient = _run(parent, shapes, Delta(), pipeline=p)
    assert lenient.passed and [s.verdict for s in lenient.stages] == ["warning", "warning"]
    strict = _run(parent, shapes, Delta(), pipeline=p, strict=True)
    assert not strict.passed and [s.verdict for s in strict.stages] == ["failed"]


def test_knowledge_error_in_a_stage_is_a_failure(parent: Graph, shapes: Shapes) -> None:
    report = _run(parent, shapes, Delta(), pipeline=Pipeline([Raising()]))
    assert not report.passed and "doctrine set unreadable" in report.stages[0].message


def test_pipeline_rejects_misnumbered_stages() -> None:
    with pytest.raises(PipelineError):
        Pipeline([Fixed(2, "static", StageOutcome.passed())])
    with pytest.raises(PipelineError):
        Pipeline([StaticStage(), StaticStage()])
    with pytest.raises(PipelineError):
        Pipeline([Fixed(8, "extra", StageOutcome.passed())])
    assert Pipeline([RollbackStage()]).stages_not_run == [
        "static",
        "invariants",
        "doctrines",
        "guards",
        "performance_budget",
        "compatibility",
    ]


def test_shacl_warnings_give_a_stage_1_warning(tmp_path: Path, parent: Graph) -> None:
    (tmp_path / "soft.ttl").write_text(
        "@prefix sh: <http://www.w3.org/ns/shacl#> .\n"
        "@prefix knhk: <urn:knhk:ontology#> .\n"
        "knhk:Soft a sh:NodeShape ; sh:targetClass knhk:RateLimitPolicy ;\n"
        "  sh:severity sh:Warning ;\n"
        "  sh:property [ sh:path knhk:owner ; sh:minCount 1 ] .\n"
    )
    report = _run(parent, Shapes.load(tmp_path), Delta(add=_policy()))
    assert report.passed
    first = report.stages[0]
    assert (first.stage, first.verdict, first.passed) == (1, "warning", True)
    assert "<urn:knhk:ontology#owner>" in report.stages[0].message
