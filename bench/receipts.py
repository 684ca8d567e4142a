"""Receipt log figures (issue 4): signed receipts committed per second when
batched, verify-chain receipts per second, and inclusion proof generation and
verification times at 10^4 and 10^6 receipts.

Runs on real LMDB files in a temporary directory with ``sync=True`` (each
batch is one durable commit), real ed25519 keys. Prints a table, or JSON with
``--json``. ``--large N`` sets the big log's size (default 1,000,000).
"""

from __future__ import annotations

import argparse
import json
import os
import random
import statistics
import sys
import tempfile
import time
from pathlib import Path

from knhkd.crypto.batch import verify_many
from knhkd.crypto.keys import Verifier, keyring_of, load_or_create
from knhkd.model import Outcome
from knhkd.receipts import merkle
from knhkd.receipts.log import Draft, ReceiptLog, verify_store
from knhkd.store.env import MB, open_store
from knhkd.store.writer import run_transaction

BATCH = 1000


def build(path: Path, n: int) -> tuple[float, ReceiptLog, object, Verifier]:
    store = open_store(path, map_size=4096 * MB, max_map_size=65536 * MB)
    signer = load_or_create(path / "k", time.time_ns())
    log = ReceiptLog(store, signer, time.time_ns)
    draft = Draft(
        "observation_batch_committed",
        Outcome("approved"),
        ["a", "b"],
        "generic",
        {"count": "1", "records_sha256": "0" * 64},
    )
    started = time.perf_counter()
    done = 0
    while done < n:
        k = min(BATCH, n - done)
        job = lambda txn, k=k: log.append_many(txn, [draft] * k)  # noqa: E731
        [(_, err)] = run_transaction(store, [job])
        assert err is None
        done += k
    rate = n / (time.perf_counter() - started)
    return rate, log, store, Verifier(keyring_of(signer))


def proofs(log: ReceiptLog, store: object, n: int, samples: int = 200) -> dict[str, float]:
    rng = random.Random(7)
    gen, ver = [], []
    with store.reader() as txn:  # type: ignore[attr-defined]
        root = log.tree.root(txn, n)
        for _ in range(samples):
            i = rng.randrange(n)
            t0 = time.perf_counter()
            path = log.tree.inclusion(txn, i, n)
            t1 = time.perf_counter()
            record = store.tables.receipts.get_raw(txn, i)  # type: ignore[attr-defined]
            leaf = merkle.leaf_hash(record)
            t2 = time.perf_counter()
            assert merkle.verify_inclusion(leaf, i, n, path, root)
            t3 = time.perf_counter()
            gen.append((t1 - t0) * 1e6)
            ver.append((t3 - t2) * 1e6)
    return {
        "prove_p50_us": statistics.median(gen),
        "prove_p99_us": sorted(gen)[int(len(gen) * 0.99) - 1],
        "verify_p50_us": statistics.median(ver),
        "verify_p99_us": sorted(ver)[int(len(ver) * 0.99) - 1],
        "path_len": len(path),
    }


def baseline(n: int = 8000) -> dict[str, float]:
    """Raw ed25519 on this machine, in this run: the ceiling the log is held to."""
    signer = load_or_create(Path(tempfile.mkdtemp()) / "k", 1)
    msgs = [os.urandom(300) for _ in range(n)]
    t0 = time.perf_counter()
    sigs = [signer.sign(m) for m in msgs]
    t1 = time.perf_counter()
    par = signer.sign_many(msgs)
    t2 = time.perf_counter()
    items = [(signer.public_key, m, s) for m, s in zip(msgs, sigs, strict=True)]
    assert all(verify_many(items)) and par == sigs
    t3 = time.perf_counter()
    return {
        "raw_sign_per_s_1core": n / (t1 - t0),
        "raw_sign_per_s_all_cores": n / (t2 - t1),
        "raw_verify_per_s_all_cores": n / (t3 - t2),
    }


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--large", type=int, default=1_000_000)
    ap.add_argument("--json", action="store_true")
    args = ap.parse_args()
    out: dict[str, object] = {"cores": os.cpu_count(), "load_avg_1m": os.getloadavg()[0]}
    base = baseline()
    out.update(base)
    with tempfile.TemporaryDirectory() as tmp:
        rate, log, store, verifier = build(Path(tmp) / "small", 10_000)
        out["append_receipts_per_s_batch1000"] = rate
        out["append_vs_raw_sign_all_cores"] = rate / base["raw_sign_per_s_all_cores"]
        t0 = time.perf_counter()
        rep = verify_store(store, verifier)  # type: ignore[arg-type]
        vrate = rep.total_count / (time.perf_counter() - t0)
        out["verify_chain_receipts_per_s"] = vrate
        out["verify_chain_vs_raw_verify"] = vrate / base["raw_verify_per_s_all_cores"]
        assert rep.verified
        out["proof_1e4"] = proofs(log, store, 10_000)
        store.close()  # type: ignore[attr-defined]
        rate, log, store, _ = build(Path(tmp) / "large", args.large)
        out["append_receipts_per_s_large"] = rate
        out[f"proof_{args.large:.0e}".replace("+0", "")] = proofs(log, store, args.large)
        store.close()  # type: ignore[attr-defined]
    if args.json:
        print(json.dumps(out, indent=2))
    else:
        for k, v in out.items():
            shown = f"{v:,.2f}" if isinstance(v, float) and v < 100 else v
            shown = f"{v:,.0f}" if isinstance(v, float) and v >= 100 else shown
            print(f"{k:40} {shown}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
