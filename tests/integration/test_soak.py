"""The soak and the load profile, short, through the real daemon (bench/soak.py,
bench/load.py as subprocesses: real HTTP on loopback, real LMDB, the real ring).

The soak runs a minute at a rate two shared cores sustain and must pass on
what does not depend on the machine's speed: no error, anonymous memory bounded
after warm-up, no descriptor growth, every acknowledged write counted. Latency
is reported, never judged here. Deselect with ``-m 'not soak'``.
"""

from __future__ import annotations

import importlib.util
import json
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

pytestmark = [pytest.mark.integration, pytest.mark.soak]

BENCH = Path(__file__).resolve().parents[2] / "bench"


def _run(script: str, *args: str, timeout: float) -> tuple[int, dict[str, object], str]:
    done = subprocess.run(
        [sys.executable, str(BENCH / script), "--json", *args],
        capture_output=True,
        text=True,
        timeout=timeout,
        check=False,
    )
    assert done.returncode in (0, 1), done.stderr
    return done.returncode, json.loads(done.stdout), done.stderr


def _outputs(out: Path, name: str) -> None:
    assert json.loads((out / f"{name}.json").read_text())
    if importlib.util.find_spec("matplotlib") is None:
        print("matplotlib (the bench extra) is not installed: no plot to check")
    else:
        assert (out / f"{name}.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


@pytest.mark.timeout(240)
def test_soak_one_minute(tmp_path: Path) -> None:
    code, r, err = _run(
        "soak.py",
        "--duration",
        "60",
        "--rate",
        "200",
        "--read-rate",
        "20",
        "--sample",
        "5",
        "--warmup",
        "15",
        "--max-rss-growth",
        "0.25",
        "--fd-slack",
        "4",
        "--no-latency-verdict",
        "--out",
        str(tmp_path),
        timeout=200,
    )
    v = r["verdict"]
    assert isinstance(v, dict)
    assert v["errors"]["value"] == 0, v
    assert v["rss_growth"]["pass"] and v["fd_growth"]["pass"], v
    assert v["durability"]["pass"], v
    assert v["p99_drift"]["pass"] is None  # reported, not judged
    assert v["pass"] and code == 0, (v, err)
    samples = r["samples"]
    assert isinstance(samples, list) and len(samples) >= 12
    assert all(s["fds"] > 0 and s["rss_anon_mb"] > 0 for s in samples)
    writes = r["writes"]
    assert isinstance(writes, dict) and writes["ok"] >= 60 * 200 // r["obs_per_write"] - 1
    _outputs(tmp_path, "soak")


@pytest.mark.timeout(180)
def test_load_profile_short(tmp_path: Path) -> None:
    """The profile's phases, streams and ring at a small scale, plus the wrk
    cross-check: every observation acknowledged was counted, nothing failed."""
    code, r, err = _run(
        "load.py",
        "--scale",
        "0.01",
        "--baseline-rate",
        "200",
        "--spike-rate",
        "500",
        "--ring-rate",
        "500",
        "--detect-per-min",
        "30",
        "--validate-per-min",
        "30",
        "--wrk",
        "--wrk-duration",
        "2",
        "--out",
        str(tmp_path),
        timeout=150,
    )
    assert r["durability"]["pass"], (r["durability"], err)  # type: ignore[index]
    for phase, names in (
        ("baseline", ("observations", "patterns_detect", "proposals_validate")),
        ("spike", ("observations", "ring")),
    ):
        streams = r[phase]["streams"]  # type: ignore[index]
        for name in names:
            s = streams[name]
            assert s["error_rate"] == 0, (phase, name, s)
    assert r["spike"]["streams"]["ring"]["durable"] > 0  # type: ignore[index]
    w = r["wrk_crosscheck"]
    assert isinstance(w, dict) and w["loadgen"]["ok_rps"] > 0
    if shutil.which("wrk") is None:
        print("wrk not installed: its half of the cross-check is skipped")
    else:
        assert w["wrk"]["rps"] > 0 and w["wrk"]["non_2xx"] == 0, w["wrk"]
    _outputs(tmp_path, "load")
    assert code in (0, 1)  # thresholds are wall-clock figures: reported, not judged here
