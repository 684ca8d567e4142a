"""The validation benchmark: the full default pipeline (all seven stages) on a
20-triple ΔΣ against generated 1 k- and 10 k-triple snapshots.

What one validation is here: ``Pipeline.run`` exactly as the executor calls it,
with the shipped shapes, doctrines (conf/doctrines) and guards (conf/guards),
measured runtime figures and a snapshot ancestry, so every stage does its real
work: stage 1 SHACL of the result (incremental, knowledge/shacl/incremental.py),
stage 2 Q1–Q5, stage 3 the three finance doctrines including the Schema
doctrine's SHACL, stage 4 the guards, stage 5 the cost formula, stage 6
reversibility, stage 7 data compatibility and ontology versions.

Each ΔΣ (20 triples, finance, signed) adds two rate-limit policies (10), two
accounts (6) and a transaction (2), and changes one existing policy's
maxEvents (1 removed, 1 added); every iteration validates a different one of
64 such deltas. The first validation against a snapshot also computes the
snapshot's SHACL baselines (once per snapshot; reported as "cold"); the
figures are the validations after it. Before measuring, ``gc.collect();
gc.freeze()`` as the daemon does after start-up.

Target: p95 <= 10 ms at both sizes. Exit status 0 met, 1 missed.

    .venv/bin/python bench/validation.py [--iterations 400] [--sizes 1000 10000] [--json]
"""

from __future__ import annotations

import argparse
import gc
import json
import statistics
import sys
import time
from datetime import UTC, datetime
from pathlib import Path

from rdflib import Graph

from knhkd.governance.doctrines import load_doctrines
from knhkd.governance.guards import load_guards
from knhkd.knowledge.rdf import apply_delta, canonical_ntriples, graph_from_ntriples, load_ontology
from knhkd.knowledge.shacl import Shapes
from knhkd.model import Delta, Proposal, ProposalIn, RuntimeFigures, Snapshot, Triple
from knhkd.plan.proposals import make_proposal
from knhkd.validate.pipeline import default_pipeline
from knhkd.validate.types import ValidationInputs

REPO = Path(__file__).resolve().parents[1]
K = "urn:knhk:ontology#"
TYPE = "<http://www.w3.org/1999/02/22-rdf-syntax-ns#type>"
INT = "<http://www.w3.org/2001/XMLSchema#integer>"
DEC = "<http://www.w3.org/2001/XMLSchema#decimal>"
NOW = int(datetime(2025, 6, 11, 12, tzinfo=UTC).timestamp()) * 1_000_000_000
H = 3_600_000_000_000
SECTORS = ("finance", "healthcare", "manufacturing", "logistics", "generic")
TARGET_P95_MS = 10.0


def policy(name: str, sector: str, max_events: int) -> list[Triple]:
    s = f"<urn:knhk:policy:{name}>"
    return [
        Triple(s, TYPE, f"<{K}RateLimitPolicy>"),
        Triple(s, f"<{K}eventType>", f'"{name}"'),
        Triple(s, f"<{K}sector>", f"<{K}{sector}>"),
        Triple(s, f"<{K}maxEvents>", f'"{max_events}"^^{INT}'),
        Triple(s, f"<{K}windowSeconds>", f'"60.0"^^{DEC}'),
    ]


def account(name: str) -> list[Triple]:
    s = f"<urn:knhk:account:{name}>"
    return [Triple(s, TYPE, f"<{K}Account>"), Triple(s, f"<{K}account_id>", f'"{name}"'),
            Triple(s, "<http://www.w3.org/2000/01/rdf-schema#label>", f'"account {name}"')]


def transaction(name: str) -> list[Triple]:
    s = f"<urn:knhk:transaction:{name}>"
    return [Triple(s, TYPE, f"<{K}Transaction>"), Triple(s, f"<{K}transaction_id>", f'"{name}"')]


def snapshot(size: int) -> tuple[Graph, int]:
    """The ontology plus policies, accounts and transactions, ``size`` triples
    in all, as the daemon holds a snapshot (parsed from canonical text)."""
    onto = load_ontology(REPO / "conf" / "ontology")
    add: list[Triple] = []
    i = 0
    while True:
        entity = [*policy(f"p{i}", SECTORS[i % 5], 10 + i % 50), *account(f"a{i}"),
                  *transaction(f"t{i}")]
        if len(onto) + len(add) + len(entity) > size:
            break
        add += entity
        i += 1
    # Pad with labels (valid anywhere) to the exact size.
    label = "<http://www.w3.org/2000/01/rdf-schema#label>"
    add += [Triple(f"<urn:knhk:policy:p{j}>", label, f'"policy {j}"')
            for j in range(size - len(onto) - len(add))]
    g = apply_delta(onto, Delta(add=add))
    assert len(g) == size
    return graph_from_ntriples(canonical_ntriples(g)), i


def delta(k: int, policies: int) -> Delta:
    old = k % policies
    remove = [Triple(f"<urn:knhk:policy:p{old}>", f"<{K}maxEvents>",
                     f'"{10 + old % 50}"^^{INT}')]
    add = [*policy(f"new{k}a", "finance", 5), *policy(f"new{k}b", "finance", 7),
           *account(f"new{k}a")[:2], *account(f"new{k}b")[:2],
           *account(f"new{k}c")[:2], *transaction(f"new{k}")[:2],
           Triple(f"<urn:knhk:policy:p{old}>", f"<{K}maxEvents>", f'"{11 + old % 50}"^^{INT}')]
    d = Delta(remove=remove, add=add[:19])
    assert len(d.remove) + len(d.add) == 20
    return d


def proposals(policies: int, n: int) -> list[Proposal]:
    return [
        make_proposal(
            ProposalIn(sector="finance", description=f"bench {k}", delta=delta(k, policies),
                       signers=["alice:controller@finance", "bob:auditor@compliance"],
                       estimated_ticks=2, resources={"transaction_amount": 1000.0}),
            "p" * 64, NOW - H,
        )
        for k in range(n)
    ]


def percentile(xs: list[float], q: float) -> float:
    ordered = sorted(xs)
    return ordered[min(len(ordered) - 1, round(q * (len(ordered) - 1)))]


def run(size: int, iterations: int) -> dict[str, object]:
    graph, policies = snapshot(size)
    shapes = Shapes.load(REPO / "conf" / "shapes")
    inputs = ValidationInputs(
        doctrines=load_doctrines(REPO / "conf" / "doctrines"),
        guards=load_guards(REPO / "conf" / "guards"),
        figures=RuntimeFigures(rss_mb=180, cpu_percent=12, p99_ms=4, hot_path_ticks_p99=6,
                               tick_baseline_p99=6, warm_path_ms=3, schema_violation_rate=0.0),
        ancestry=(Snapshot("p" * 64, "g" * 64, 1, NOW - 2 * H, len(graph)),
                  Snapshot("g" * 64, None, 0, NOW - 3 * H, 131)),
    )
    pipeline = default_pipeline()
    batch = proposals(policies, 64)

    def once(p: Proposal) -> tuple[float, list[float], bool]:
        started = time.perf_counter()
        report = pipeline.run(p, graph, shapes, strict=False, now_ns=NOW,
                              perf_counter=time.perf_counter, inputs=inputs)
        return ((time.perf_counter() - started) * 1e3,
                [s.duration_ms for s in report.stages], report.passed)

    cold, _, passed = once(batch[0])
    if not passed:
        raise SystemExit("bench: the benchmark delta did not pass validation")
    gc.collect()
    gc.freeze()
    totals: list[float] = []
    stages: list[list[float]] = [[] for _ in range(7)]
    for i in range(iterations):
        total, per_stage, passed = once(batch[i % len(batch)])
        assert passed and len(per_stage) == 7
        totals.append(total)
        for j, ms in enumerate(per_stage):
            stages[j].append(ms)
    gc.unfreeze()
    return {
        "snapshot_triples": len(graph),
        "delta_triples": 20,
        "iterations": iterations,
        "cold_ms": round(cold, 2),
        "p50_ms": round(percentile(totals, 0.50), 3),
        "p95_ms": round(percentile(totals, 0.95), 3),
        "p99_ms": round(percentile(totals, 0.99), 3),
        "max_ms": round(max(totals), 3),
        "mean_ms": round(statistics.fmean(totals), 3),
        "stage_p50_ms": [round(percentile(s, 0.50), 3) for s in stages],
        "stage_p95_ms": [round(percentile(s, 0.95), 3) for s in stages],
    }


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--iterations", type=int, default=400)
    ap.add_argument("--sizes", type=int, nargs="+", default=[1000, 10000])
    ap.add_argument("--json", action="store_true")
    args = ap.parse_args(argv)
    results = [run(size, args.iterations) for size in args.sizes]
    met = all(float(r["p95_ms"]) <= TARGET_P95_MS for r in results)  # type: ignore[arg-type]
    if args.json:
        print(json.dumps({"target_p95_ms": TARGET_P95_MS, "met": met, "results": results}))
    else:
        names = ["static", "invariants", "doctrines", "guards", "budget", "rollback", "compat"]
        for r in results:
            print(f"snapshot {r['snapshot_triples']:>6} triples, ΔΣ 20 triples, "
                  f"{r['iterations']} validations (cold first: {r['cold_ms']} ms)")
            print(f"  total  p50 {r['p50_ms']:>7.3f} ms   p95 {r['p95_ms']:>7.3f} ms   "
                  f"p99 {r['p99_ms']:>7.3f} ms   max {r['max_ms']:>7.3f} ms")
            per = zip(names, r["stage_p50_ms"], r["stage_p95_ms"], strict=True)  # type: ignore[call-overload]
            print("  stage p50/p95 ms: " + ", ".join(f"{n} {a:.3f}/{b:.3f}" for n, a, b in per))
        print(f"target p95 <= {TARGET_P95_MS:g} ms: {'met' if met else 'MISSED'}")
    return 0 if met else 1


if __name__ == "__main__":
    sys.exit(main())
