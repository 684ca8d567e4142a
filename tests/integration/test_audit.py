"""The audit trail through the real daemon: decisions at the HTTP door, the
admin socket and SIGHUP become signed, chained receipts of kind ``audit``,
listed by ``knhkctl audit list`` and verified offline by ``knhkctl audit
verify``, which names a record whose bytes were changed on disk."""

from __future__ import annotations

import base64
import json
import signal
import time
from typing import Any

import httpx

from tests.integration.conftest import RunningDaemon, wait_for_log

OBS = {"event_type": "t.audit", "value": 1, "sector": "generic", "metadata": {}}


def audit_list(d: RunningDaemon, *extra: str) -> list[dict[str, Any]]:
    r = d.ctl("audit", "list", "--format", "json", *extra)
    assert r.returncode == 0, r.stderr
    return json.loads(r.stdout)  # type: ignore[no-any-return]


def wait_audit(d: RunningDaemon, pred: Any, timeout: float = 20.0) -> list[dict[str, Any]]:
    """The trail once ``pred`` holds for it (records are group-committed)."""
    deadline = time.monotonic() + timeout
    while True:
        entries = audit_list(d)
        if pred(entries) or time.monotonic() > deadline:
            return entries
        time.sleep(0.1)


def test_audit_trail_records_decisions_and_names_a_damaged_record(make_daemon: Any) -> None:
    d: RunningDaemon = make_daemon(auth=True)
    assert d.issuer is not None
    token = d.issuer.token("administrator")
    with httpx.Client(base_url=d.base, timeout=30.0) as anon:
        assert anon.post("/api/v1/observations", json=OBS).status_code == 401
        bad = anon.post("/api/v1/snapshots/rollback", headers={"Authorization": "Bearer not.a.jwt"})
        assert bad.status_code == 401
    with d.client("observer") as observer:
        assert observer.post("/api/v1/snapshots/rollback").status_code == 403
        assert observer.get("/api/v1/snapshots").status_code == 200  # a read: not audited
    with d.client("administrator") as admin:
        for _ in range(5):
            assert admin.post("/api/v1/observations", json=OBS).status_code == 201
    d.proc.send_signal(signal.SIGHUP)  # type: ignore[union-attr]
    wait_for_log(d, "configuration reloaded")

    def complete(entries: list[dict[str, Any]]) -> bool:
        ingest = [e for e in entries if e["route"] == "POST /api/v1/observations"]
        allowed = sum(e["count"] for e in ingest if e["decision"] == "allow")
        return allowed == 5 and any(e["event"] == "config_reload" for e in entries)

    entries = wait_audit(d, complete)
    assert complete(entries), entries
    by_reason = {(e["event"], e["decision"], e["route"]): e for e in entries}
    no_token = by_reason[("authn", "deny", "POST /api/v1/observations")]
    assert no_token["principal"] == "-" and no_token["peer"] == "127.0.0.1"
    assert "bearer token" in no_token["reason"]
    assert ("authn", "deny", "POST /api/v1/snapshots/rollback") in by_reason
    refused = by_reason[("authz", "deny", "POST /api/v1/snapshots/rollback")]
    assert refused["reason"] == "needs PROMOTE_SNAPSHOTS"
    assert refused["principal"] == f"{d.issuer.name}#user-observer"
    assert not any(e["route"].startswith("GET ") for e in entries)
    reload = next(e for e in entries if e["event"] == "config_reload")
    assert reload["decision"] == "allow" and reload["route"] == "SIGHUP"
    # The admin socket's own mutating commands are audited too.
    assert d.ctl("checkpoint", "--issue").returncode == 0
    entries = wait_audit(d, lambda es: any(e["route"] == "admin checkpoint.latest" for e in es))
    assert any(e["route"] == "admin checkpoint.latest" for e in entries), entries
    # --principal filters; no token ever appears in the trail.
    mine = audit_list(d, "--principal", refused["principal"])
    assert mine and all(e["principal"] == refused["principal"] for e in mine)
    listed = d.ctl("audit", "list", "--format", "table")
    assert listed.returncode == 0 and "needs PROMOTE_SNAPSHOTS" in listed.stdout
    for part in token.split("."):
        assert part not in listed.stdout

    # The trail verifies with the receipts' own machinery, online and offline.
    ok = d.ctl("audit", "verify")
    assert ok.returncode == 0, ok.stdout + ok.stderr
    assert "audit trail verified" in ok.stdout
    keys = d.data_dir.parent / "keys.json"
    keys.write_text(d.ctl("keys", "export-public").stdout)
    export = d.data_dir.parent / "export.json"
    assert d.ctl("receipts", "export", "--out", str(export)).returncode == 0
    off = d.ctl("audit", "verify", "--keys", str(keys), str(export))
    assert off.returncode == 0, off.stdout + off.stderr
    assert "audit records: " in off.stdout and "audit records: 0" not in off.stdout

    # One byte of one audit record flipped on disk: named, exit 1.
    assert d.stop() == 0
    fsck = d.ctl("fsck")
    assert fsck.returncode == 0, fsck.stdout
    data = d.data_dir / "lmdb" / "data.mdb"
    raw = bytearray(data.read_bytes())
    marker = b"needs PROMOTE_SNAPSHOTS"
    at = raw.find(marker)
    assert at >= 0
    while at >= 0:  # every copy LMDB left of the record's page (freed ones too)
        raw[at + len(marker) - 1] ^= 0x01
        at = raw.find(marker, at + 1)
    data.write_bytes(bytes(raw))
    bad_verify = d.ctl("audit", "verify", "--keys", str(keys))
    assert bad_verify.returncode == 1, bad_verify.stdout + bad_verify.stderr
    assert f"audit record {refused['id']}: NOT VERIFIED" in bad_verify.stdout
    assert "audit trail COMPROMISED" in bad_verify.stdout
    # The export taken before still verifies; one flipped byte in it does not.
    text = export.read_text()
    doc = json.loads(text)
    rec = bytearray(base64.b64decode(doc["records"][refused["seq"]]))
    rec[-1] ^= 0x01
    doc["records"][refused["seq"]] = base64.b64encode(bytes(rec)).decode()
    export.write_text(json.dumps(doc))
    tampered = d.ctl("audit", "verify", "--keys", str(keys), str(export))
    assert tampered.returncode == 1, tampered.stdout + tampered.stderr
    assert "NOT VERIFIED" in tampered.stdout


def test_the_trail_survives_a_restart_and_shutdown_flushes_it(make_daemon: Any) -> None:
    """Records queued when SIGTERM arrives are committed before exit."""
    d: RunningDaemon = make_daemon(auth=True)
    with httpx.Client(base_url=d.base, timeout=30.0) as anon:
        for _ in range(3):
            assert anon.post("/api/v1/mape-k/execute").status_code == 401
    assert d.stop() == 0
    d.start()
    entries = audit_list(d)
    denied = [e for e in entries if e["route"] == "POST /api/v1/mape-k/execute"]
    assert sum(e["count"] for e in denied) == 3, entries
    assert d.ctl("audit", "verify").returncode == 0


def test_reads_of_healthcare_observations_are_audited_with_their_justification(
    make_daemon: Any,
) -> None:
    d: RunningDaemon = make_daemon(auth=True)
    health = {
        "event_type": "admit",
        "sector": "healthcare",
        "value": {"ward": "W-7"},
        "metadata": {"patient_id": "P-1"},
    }
    with d.client("producer") as c:
        hid = c.post("/api/v1/observations", json=health).json()["id"]
    with d.client("observer") as c:
        path = f"/api/v1/observations/{hid}"
        assert c.get(path).status_code == 403
        ok = c.get(path, headers={"X-Access-Justification": "treating P-1"})
        assert ok.status_code == 200, ok.text

    def both(es: list[dict[str, Any]]) -> bool:
        return {e["decision"] for e in es if e["event"] == "phi_read"} == {"allow", "deny"}

    entries = wait_audit(d, both)
    phi = {e["decision"]: e for e in entries if e["event"] == "phi_read"}
    assert set(phi) == {"allow", "deny"}, entries
    assert phi["allow"]["detail"] == {"observation_id": hid, "justification": "treating P-1"}
    assert phi["allow"]["principal"].endswith("#user-observer")
    assert phi["allow"]["peer"] == "127.0.0.1"
    assert phi["deny"]["reason"] == "no valid justification"
    assert all("W-7" not in json.dumps(e) for e in entries)  # never the content
