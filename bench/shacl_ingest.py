"""SHACL ingest throughput: the compiled validator against plain ``pyshacl.validate``,
on the same generated observations, in the same run, with verdicts compared.

One run:
1. generate ``--count`` observations (seeded) over the five sectors, with the
   shipped shapes of conf/shapes/observations; about one in ten violates them;
2. compiled: ``ObservationGate.validate_batch`` (what the ingest path runs:
   build each observation's RDF view, validate it, map violations to errors)
   over batches of ``--batch``, ``--rounds`` times; throughput per core is
   observations per CPU second of this (single-threaded) process;
3. pySHACL, one plain call per observation, on an rdflib graph of the same
   view (graphs built before timing, so pySHACL's figure is its best case);
4. pySHACL, one plain call per batch of ``--batch`` observations of a sector
   in one graph (PLATFORM_NOTES' cheapest way to call it);
5. verdicts: for every observation, the compiled ``conforms`` and results
   (focus, path, component, severity, source shape, value) must equal the
   per-observation pySHACL call's; for every batch, the union of the compiled
   results must equal the batched call's.

Prints the figures; exit status 0 when every verdict is identical and the
compiled validator reaches ``--target`` obs/s per core, 1 otherwise.

Guarantees: no network, no files written; pySHACL is never given
``focus_nodes``. Run: ``.venv/bin/python bench/shacl_ingest.py``.
"""

from __future__ import annotations

import argparse
import gc
import logging
import os
import random
import statistics
import sys
import time
import warnings
from collections import Counter
from collections.abc import Callable
from pathlib import Path
from typing import Any

HERE = Path(__file__).resolve().parent
REPO = HERE.parent
sys.path.insert(0, str(REPO))

import msgspec  # noqa: E402
import pyshacl  # noqa: E402
from rdflib import Graph  # noqa: E402

from knhkd.knowledge.observation_rdf import observation_graph  # noqa: E402
from knhkd.knowledge.shacl import CompiledShapes, Result, report_results  # noqa: E402
from knhkd.model import SECTORS, ObservationIn  # noqa: E402
from knhkd.monitor.shapes import ObservationGate, load_observation_shapes  # noqa: E402

SHAPES = REPO / "conf" / "shapes" / "observations"


# --------------------------------------------------------------------------- #
# Inputs
# --------------------------------------------------------------------------- #


def generate(count: int, seed: int) -> list[ObservationIn]:
    """A seeded mix like production traffic: mostly valid, ~10 % violating."""
    rnd = random.Random(seed)
    out: list[dict[str, Any]] = []
    for i in range(count):
        bad = rnd.random() < 0.1
        kind = rnd.choices(range(6), weights=[35, 10, 15, 10, 15, 15])[0]
        if kind == 0:
            value: dict[str, Any] = {
                "amount": rnd.choice([rnd.randint(0, 10**6), round(rnd.uniform(0, 5000), 2)]),
                "currency": rnd.choice(["EUR", "USD", "GBP"]),
                "account": f"AC-{rnd.randint(1, 9999):04d}",
            }
            if bad:
                value["amount"] = rnd.choice([-1, "12", None])
            meta = {"terminal_id": f"T-{rnd.randint(1, 99)}", "channel": "pos"}
            out.append({"event_type": "transaction.execute", "sector": "finance",
                        "value": value, "metadata": meta})  # fmt: skip
        elif kind == 1:
            out.append({"event_type": "balance.read", "sector": "finance",
                        "value": {"balance": rnd.randint(0, 10**5)},
                        "metadata": {"currency": "EURO" if bad else "EUR"}})  # fmt: skip
        elif kind == 2:
            meta = {"encounter_id": f"E{rnd.randint(1, 10**6)}"}
            if not bad:
                meta["patient_id"] = f"P-{rnd.randint(1, 10**6)}"
            out.append({"event_type": rnd.choice(["admit", "vitals.read", "discharge"]),
                        "sector": "healthcare", "value": {"hr": rnd.randint(40, 180)},
                        "metadata": meta})  # fmt: skip
        elif kind == 3:
            rate = rnd.uniform(1.01, 2.0) if bad else rnd.uniform(0, 0.01)
            out.append({"event_type": "quality.inspect", "sector": "manufacturing",
                        "value": {"defect_rate": round(rate, 5), "sampled": rnd.randint(1, 500)},
                        "metadata": {"line_id": f"L-{rnd.randint(1, 40)}"}})  # fmt: skip
        elif kind == 4:
            shipment = f"shp-{i}" if bad else f"SHP-{i:06d}"
            out.append({"event_type": rnd.choice(["scan", "depart", "arrive"]),
                        "sector": "logistics", "value": {"hub": rnd.choice(["FRA", "CDG"])},
                        "metadata": {"shipment_id": shipment, "carrier": "DHL"}})  # fmt: skip
        else:
            sector = rnd.choice(["generic", "manufacturing"])
            out.append({"event_type": "sensor.read", "sector": sector,
                        "value": {"n": i, "t": round(rnd.uniform(-10, 40), 1)}})  # fmt: skip
    return [msgspec.convert(o, ObservationIn) for o in out]


# --------------------------------------------------------------------------- #
# Measuring
# --------------------------------------------------------------------------- #


def cpu_rate(n: int, fn: Callable[[], object], rounds: int) -> tuple[float, float, float]:
    """(best, median obs per CPU second, best obs per wall second) over ``rounds``."""
    cpu: list[float] = []
    wall: list[float] = []
    for _ in range(rounds):
        gc.collect()
        c0, w0 = time.process_time(), time.perf_counter()
        fn()
        cpu.append(time.process_time() - c0)
        wall.append(time.perf_counter() - w0)
    rates = [n / max(c, 1e-9) for c in cpu]
    return max(rates), statistics.median(rates), n / max(min(wall), 1e-9)


Key = tuple[Any, ...]


def keys(results: list[Result]) -> Counter[Key]:
    return Counter(r.key() for r in results)


def plain_pyshacl(data: Graph, shapes: Graph) -> tuple[bool, list[Result]]:
    conforms, report, _ = pyshacl.validate(data, shacl_graph=shapes)
    results, _ = report_results(report)
    return bool(conforms), results


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--count", type=int, default=3000, help="observations (default 3000)")
    ap.add_argument("--batch", type=int, default=100, help="observations per batch (100)")
    ap.add_argument("--rounds", type=int, default=5, help="timed rounds of the compiled run")
    ap.add_argument("--seed", type=int, default=1)
    ap.add_argument("--target", type=float, default=20_000.0, help="obs/s per core (20000)")
    args = ap.parse_args(argv)
    logging.disable(logging.WARNING)
    warnings.simplefilter("ignore")

    items = generate(args.count, args.seed)
    loaded = load_observation_shapes(SHAPES)
    gate = ObservationGate(loaded)
    # pySHACL and the per-item comparison use the same parsed shapes graph the
    # compiled validator is built from (so blank-node shape names agree).
    graphs: dict[str, Graph] = {}
    compiled: dict[str, CompiledShapes] = {}
    for sector in SECTORS:
        g = Graph()
        g.parse(loaded[sector].path, format="turtle")
        graphs[sector], compiled[sector] = g, CompiledShapes.compile(g)
    batches = [items[i : i + args.batch] for i in range(0, len(items), args.batch)]

    # 2. compiled, as the ingest path runs it
    def run_compiled() -> None:
        for batch in batches:
            gate.validate_batch(batch, False)

    best, median, wall = cpu_rate(len(items), run_compiled, args.rounds)

    # 3. pySHACL, one call per observation; verdicts compared per observation
    views = [observation_graph(it, i % args.batch) for i, it in enumerate(items)]
    rdf = [v.to_rdflib() for v in views]
    mismatches: list[str] = []
    py_cpu = 0.0
    violating = 0
    for i, (item, view, g) in enumerate(zip(items, views, rdf, strict=True)):
        c0 = time.process_time()
        ref = plain_pyshacl(g, graphs[item.sector])
        py_cpu += time.process_time() - c0
        mine = compiled[item.sector].validate(view)
        violating += not ref[0]
        if mine.conforms != ref[0] or keys(mine.results) != keys(ref[1]):
            mismatches.append(f"observation {i} ({item.sector}/{item.event_type})")
    py_rate = len(items) / max(py_cpu, 1e-9)

    # 4. pySHACL, one call per batch of one sector's observations in one graph
    by_sector: dict[str, list[int]] = {}
    for i, item in enumerate(items):
        by_sector.setdefault(item.sector, []).append(i)
    groups = [
        idx[j : j + args.batch]
        for idx in by_sector.values()
        for j in range(0, len(idx), args.batch)
    ]
    merged = []
    for group in groups:
        g = Graph()
        # Distinct subjects per observation: re-view each at its position.
        for pos, i in enumerate(group):
            for t in observation_graph(items[i], pos).triples():
                g.add(t)
        merged.append(g)
    batch_cpu = 0.0
    batch_mismatch = 0
    for group, g in zip(groups, merged, strict=True):
        sector = items[group[0]].sector
        c0 = time.process_time()
        ref = plain_pyshacl(g, graphs[sector])
        batch_cpu += time.process_time() - c0
        mine_keys: Counter[Key] = Counter()
        conforms = True
        for pos, i in enumerate(group):
            v = compiled[sector].validate(observation_graph(items[i], pos))
            conforms = conforms and v.conforms
            mine_keys += keys(v.results)
        if conforms != ref[0] or mine_keys != keys(ref[1]):
            batch_mismatch += 1
    batch_rate = len(items) / max(batch_cpu, 1e-9)

    load1 = os.getloadavg()[0]
    identical = not mismatches and not batch_mismatch
    met = best >= args.target
    print(
        f"SHACL ingest bench: {len(items)} observations over {len(SECTORS)} sectors, "
        f"{violating} violating ({100 * violating / len(items):.1f} %), batches of {args.batch}, "
        f"seed {args.seed}; load average {load1:.2f} on {os.cpu_count()} CPUs"
    )
    print("  compiled, as ingest runs it (view + validate + errors):")
    print(f"      {best:>10,.0f} obs/s per core (best of {args.rounds}; median {median:,.0f}); "
          f"{wall:,.0f} obs/s wall")  # fmt: skip
    print("  pyshacl.validate, one plain call per observation:")
    print(f"      {py_rate:>10,.0f} obs/s per core  -> compiled is {best / py_rate:,.0f}x faster")
    print(f"  pyshacl.validate, one plain call per {args.batch} observations of a sector:")
    speedup = best / batch_rate
    print(f"      {batch_rate:>10,.0f} obs/s per core  -> compiled is {speedup:,.1f}x faster")
    print(
        f"  verdicts: {len(items) - len(mismatches)}/{len(items)} observations identical "
        f"(conforms + results); {len(groups) - batch_mismatch}/{len(groups)} batches identical"
    )
    for m in mismatches[:10]:
        print(f"    MISMATCH {m}")
    print(f"  target >= {args.target:,.0f} obs/s per core: {'met' if met else 'MISSED'}")
    return 0 if identical and met else 1


if __name__ == "__main__":
    sys.exit(main())
