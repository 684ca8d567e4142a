"""The daemon facade: the one object the API and the admin socket call, one
method per use case (``ingest``, ``submit_proposal``, ``promote_proposal``,
``rollback``, the relaxation steps, ``run_cycle``, proofs, reads …).

It is built whole, after start-up (loop/startup.py) and with the actors
(loop/actors.py), by the nursery tree (loop/tree.py), before any server
starts. Reads are answered by loop/queries.py (short read transactions);
every write goes through the store writer. SIGHUP (``reload``) takes a new
configuration, doctrine and guard set, or keeps the old ones and logs why.

Must never: acknowledge before commit; hand the API an actor, the writer or
the store (the API calls these methods only).
"""

from __future__ import annotations

import collections
import logging
import os
import ssl
import time
from collections.abc import Sequence
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import msgspec
import trio

from knhkd import __version__
from knhkd.analyze.detectors import detect_batch
from knhkd.auth.tls import TlsError, server_context
from knhkd.config import Config, ConfigError
from knhkd.errors import Conflict, KnhkdError, PrincipalMismatch
from knhkd.governance.relaxation import RelaxationError
from knhkd.hotpath.ring import Consumer, RingError
from knhkd.knowledge.rdf import KnowledgeError, diff_ntriples
from knhkd.loop import knowledge_state as kn
from knhkd.loop.actors import Actors
from knhkd.loop.backup import Backups
from knhkd.loop.cycle import Cycle
from knhkd.loop.erasure import erase_job, matching, scrub_free_pages
from knhkd.loop.ingest import Closed, Items
from knhkd.loop.knowledge_state import SnapshotConflict
from knhkd.loop.planner import proposal_draft, sign_job, store_proposals_job
from knhkd.loop.queries import NotFound as NotFound  # noqa: PLC0414 (its old home)
from knhkd.loop.retention import Retention
from knhkd.loop.startup import MB, Opened, Prepared, StartupError, publish_keyring
from knhkd.loop.state import LoopState
from knhkd.loop.supervisor import Supervisor
from knhkd.model import (
    AuditEntry,
    AuditRecord,
    BackupManifest,
    ChainVerification,
    ConsistencyFile,
    CycleReport,
    DetectedPattern,
    Erasure,
    ExportFile,
    FigureSamples,
    Health,
    Observation,
    ObservationIn,
    Principal,
    ProofFile,
    Proposal,
    ProposalIn,
    ProposalSignature,
    PublicKeyring,
    ReceiptView,
    Relaxation,
    RetentionRun,
    RingSummary,
    RuntimeFigures,
    Snapshot,
    StatusReport,
    ValidationReport,
)
from knhkd.monitor.decode import Decoded
from knhkd.plan.proposals import make_proposal
from knhkd.receipts import audit as audit_trail
from knhkd.receipts import backup as backup_copy
from knhkd.receipts import canonical, keyring, merkle, offline
from knhkd.receipts.log import verify_store
from knhkd.receipts.tlog_checkpoint import Checkpoint
from knhkd.telemetry import logs
from knhkd.telemetry.metrics import WRITE_REFUSAL_CAUSES, Metrics
from knhkd.telemetry.tracing import span

log = logging.getLogger("knhkd")

# Settings a running daemon cannot take over on SIGHUP.
RESTART_ONLY = (
    ("storage", "data_dir"),
    ("http", "bind"),
    ("http", "max_connections"),
    ("http", "max_header_bytes"),
    ("http", "max_body_bytes"),
    ("admin", "socket"),
    ("keys", "signing_key"),
    ("knowledge", "ontology_dir"),
    ("knowledge", "shapes_dir"),
    ("ingest", "shacl"),
    ("ingest", "observation_shapes_dir"),
    ("ring", "enabled"),
    ("ring", "path"),
    ("ring", "lanes"),
    ("ring", "capacity"),
    ("ring", "mode"),
    ("ring", "tsc_hz"),
)


class Daemon:
    """The facade the API and admin layers call; built whole by loop/tree.py
    from start-up's results and the actors, before any server starts."""

    def __init__(
        self,
        state: LoopState,
        opened: Opened,
        prepared: Prepared,
        actors: Actors,
        *,
        supervisor: Supervisor,
        metrics: Metrics,
    ) -> None:
        self._state = state
        self.store = opened.store
        self.writer = opened.writer
        self.receipts = opened.receipts
        self.write_gate = opened.write_gate
        self.ring = opened.ring
        self.signer = opened.signer
        self.verifier = prepared.verifier
        self.governance = prepared.governance
        self.queries = state.queries
        self.actors = actors
        self.backups = Backups(state.ctx, actors.checkpointer)
        self.retention = Retention(state.ctx, actors.checkpointer)
        self.supervisor = supervisor
        self.metrics = metrics
        self.started_monotonic = time.monotonic()
        self.ready = False
        self.draining = False
        self.shutdown_requested = trio.Event()
        self.http_done = trio.Event()
        self.http_bound: list[str] = []
        self._tls: ssl.SSLContext | None = None
        if self.cfg.http.tls.enabled:
            try:
                self._tls = server_context(self.cfg.http.tls)
            except TlsError as exc:
                raise StartupError("tls", str(exc)) from None

    def tls_context(self) -> ssl.SSLContext:
        """The HTTPS context new connections get (a SIGHUP may replace it)."""
        if self._tls is None:
            raise RuntimeError("http.tls is not configured")
        return self._tls

    @property
    def cfg(self) -> Config:
        """The configuration in force (a SIGHUP reload replaces it)."""
        return self._state.settings()

    @property
    def knowledge(self) -> kn.KnowledgeState:
        return self._state.knowledge

    def refresh_keyring(self) -> None:
        self.verifier = publish_keyring(self.cfg, self.store)

    # The audit trail -------------------------------------------------- #

    async def audit(self, record: AuditRecord) -> None:
        """The one entry point of the audit trail (api/authn.py, the admin
        socket, PHI reads, reloads): queue ``record`` for the auditor's next
        group commit (loop/auditor.py). Returns once queued, not once durable;
        waits for room up to ``audit.enqueue_wait_s``, then the record is
        counted as dropped. Must never be given a token or key material."""
        await self.actors.auditor.audit(record)

    def audit_nowait(self, record: AuditRecord) -> bool:
        """``audit`` for a caller that may not wait (a synchronous check in a
        route): False when the record could not be queued (counted as
        dropped); a PHI read then refuses to answer rather than go unaudited."""
        return self.actors.auditor.audit_nowait(record)

    def audit_entries(
        self, *, since_ns: int = 0, principal: str | None = None, limit: int = 1000
    ) -> list[AuditEntry]:
        """The newest ``limit`` audit entries at or after ``since_ns`` (of
        ``principal`` if given), oldest first."""
        with self.store.reader() as txn:
            found = audit_trail.entries(self.store, txn, since_ns=since_ns, principal=principal)
            return list(collections.deque(found, maxlen=limit))

    # Guards, relaxations, doctrines, diffs -------------------------------- #

    def guards_overview(self) -> dict[str, Any]:
        now = time.time_ns()
        book = self.governance.book
        return {
            "digest": self.governance.guards.digest,
            "guards": list(self.governance.guards.guards),
            "relaxed_now": sorted(book.relaxed_guards(now)),
            "relaxations": book.records(),
        }

    def relaxation(self, relaxation_id: str) -> Relaxation:
        return self.governance.book.get(relaxation_id)

    # Each step is taken by ``by`` (its ``name`` is the requester, approver
    # or actor the rules compare and the receipt records): quorum counts
    # distinct principals.

    async def request_relaxation(self, guard_id: str, by: Principal, reason: str) -> Relaxation:
        now = time.time_ns()
        events = await self.governance.step(
            lambda book: [book.request(guard_id, by.name, reason, now)]
        )
        return events[-1].record

    async def approve_relaxation(self, relaxation_id: str, by: Principal) -> Relaxation:
        now = time.time_ns()
        await self.governance.step(lambda book: book.approve(relaxation_id, by.name, now))
        return self.relaxation(relaxation_id)

    async def activate_relaxation(self, relaxation_id: str, by: Principal) -> Relaxation:
        now = time.time_ns()
        await self.governance.step(lambda book: book.activate(relaxation_id, by.name, now))
        return self.relaxation(relaxation_id)

    async def revoke_relaxation(
        self, relaxation_id: str, by: Principal, reason: str
    ) -> Relaxation:
        now = time.time_ns()
        await self.governance.step(
            lambda book: [book.revoke(relaxation_id, by.name, reason, now)]
        )
        return self.relaxation(relaxation_id)

    def doctrines_overview(self) -> dict[str, Any]:
        return {
            "digest": self.governance.doctrines.digest,
            "doctrines": list(self.governance.doctrines.doctrines),
        }

    def snapshot_diff(self, a: str, b: str) -> dict[str, Any]:
        rec_a, rec_b = self.queries.snapshot_pair(a, b)
        removed, added = diff_ntriples(rec_a.ntriples, rec_b.ntriples)
        return {"from": rec_a.meta, "to": rec_b.meta, "removed": removed, "added": added}

    # ------------------------------------------------------------------ #
    # Reads for the API and admin layers (short read transactions)
    # ------------------------------------------------------------------ #

    def get_observation(self, obs_id: str) -> Observation:
        return self.queries.get_observation(obs_id)

    def observation_count(self) -> int:
        return self.queries.observation_count()

    def list_snapshots(self) -> list[Snapshot]:
        return self.queries.list_snapshots()

    def list_receipts(self, *, after: int, limit: int) -> list[ReceiptView]:
        return self.queries.list_receipts(after=after, limit=limit)

    def list_patterns(self, *, limit: int) -> list[DetectedPattern]:
        return self.queries.list_patterns(limit=limit)

    def receipt_head(self) -> tuple[int, str]:
        return self.queries.receipt_head()

    async def verify(self) -> ChainVerification:
        with span("knhk.receipt.verify") as s:
            report = await trio.to_thread.run_sync(verify_store, self.store, self.verifier)
            broken = (
                len(report.chain_breaks)
                + len(report.signature_failures)
                + len(report.retrocausation_violations)
            )
            s.set_attribute("validation.passed", not broken)
            if broken:
                s.set_attribute("validation.failure_reason", f"{broken} finding(s)")
        if broken:
            self.metrics.receipt_chain_breaks.inc(broken)
        return report

    def public_keyring(self) -> PublicKeyring:
        return self.queries.public_keyring()

    async def erase_subject(self, subject: str, by: Principal) -> Erasure:
        """Erase the observations whose ``[privacy] subject_fields`` name
        ``subject`` (loop/erasure.py), then overwrite the pages LMDB freed."""
        self.write_gate.check()
        fields = self.cfg.privacy.subject_fields

        def scan() -> tuple[list[int], int]:
            with self.store.reader() as txn:
                return matching(self.store, txn, subject, fields)

        # The O(n) look for matches off the writer: ingest goes on meanwhile.
        candidates, scanned_to = await trio.to_thread.run_sync(scan)
        result = await self.writer.submit(
            erase_job(
                self.store,
                self.receipts,
                subject=subject,
                fields=fields,
                principal=by.name,
                candidates=candidates,
                scanned_to=scanned_to,
            )
        )
        self.metrics.receipts_appended.labels("observations_erased").inc()
        result.scrubbed_pages = await scrub_free_pages(self.writer, self.store)
        backups = self.cfg.backup.dir
        if backups:
            # A restore re-applies the erasures that a later backup records
            # (datadir/backup.py); the next scheduled backup may be an hour
            # away, and the store may not survive that long.
            try:
                result.backup_id = (await self.backups.take(Path(backups), small=True)).id
            except KnhkdError as exc:
                # The erasure stands; the caller learns that no backup records it yet.
                result.backup_error = str(exc)
                log.error(
                    "erasure %s: the backup that would record it failed: %s",
                    result.receipt_id,
                    exc,
                )
        # Never the subject: it is the personal data being erased.
        log.info(
            "erasure %s by %s: %d observation(s) erased, free pages overwritten %s",
            result.receipt_id,
            by.name,
            result.erased,
            result.scrubbed_pages,
        )
        return result

    async def rotate_key(self) -> dict[str, str]:
        """knhkctl keys rotate: the protocol of receipts/keyring.py. Returns the
        ``key_rotated`` receipt's id and the new key id."""
        self.write_gate.check()  # before the new key file is written
        if self.cfg.signing_key_is_credential:
            raise Conflict(
                "the signing key is a systemd credential (keys.signing_key = "
                f"{self.cfg.keys.signing_key!r}), read-only to the daemon: rotation "
                "needs a key file it may replace (systemd/README.md, Rotating the key)"
            )
        path = self.cfg.signing_key_path
        outgoing = self.signer.key_id
        new = keyring.prepare_rotation(path, time.time_ns())
        self.receipts.add_signer(new)
        signed = await self.writer.submit(
            keyring.rotation_job(self.store, self.receipts, outgoing, new)
        )
        keyring.finish_rotation(path)
        self.signer = new
        self.refresh_keyring()
        self.metrics.receipts_appended.labels("key_rotated").inc()
        log.info("signing key rotated: %s -> %s", outgoing, new.key_id)
        return {"receipt": canonical.receipt_id(signed.body.seq), "key_id": new.key_id}

    # Proofs ----------------------------------------------------------- #

    def latest_checkpoint(self) -> Checkpoint | None:
        return self.queries.latest_checkpoint()

    def inclusion_proof(self, index: int, tree_size: int) -> list[bytes]:
        return self.queries.inclusion_proof(index, tree_size)

    def consistency_proof(self, size1: int, size2: int) -> list[bytes]:
        return self.queries.consistency_proof(size1, size2)

    async def covering_checkpoint(self, size: int) -> Checkpoint:
        """A signed checkpoint of at least ``size`` leaves, issuing one if needed."""
        cp = self.queries.covering_checkpoint(size)
        if cp is None:
            cp = await self.actors.checkpointer.issue()
        if cp is None or cp.size < size:
            raise NotFound(f"the log has fewer than {size} receipts")
        return cp

    async def prove(self, index: int) -> ProofFile:
        cp = await self.covering_checkpoint(index + 1)
        record, path = self.queries.receipt_with_path(index, cp.size)
        return offline.proof_file(index, cp, record, path)

    async def export(self, start: int, end: int | None) -> ExportFile:
        if end is None:
            # Everything committed so far, under a checkpoint that covers it.
            fresh = await self.actors.checkpointer.issue() or self.latest_checkpoint()
            if fresh is None:
                raise NotFound("the log is empty")
            cp, end = fresh, fresh.size
        else:
            cp = await self.covering_checkpoint(max(end, 1))
        if not 0 <= start <= end <= cp.size:
            raise NotFound(f"range [{start}, {end}) is not in the log")
        records, proof = self.queries.receipts_with_range_proof(start, end, cp.size)
        return offline.export_file(start, cp, records, proof)

    async def consistency_file(self, size1: int, size2: int | None) -> ConsistencyFile:
        old = self.queries.checkpoint_at_size(size1)
        if old is None:
            raise NotFound(f"no signed checkpoint of size {size1}")
        new = await self.covering_checkpoint(size2 or size1)
        if size2 is not None and new.size != size2:
            exact = self.queries.checkpoint_at_size(size2)
            if exact is None:
                raise NotFound(f"no signed checkpoint of size {size2}")
            new = exact
        return offline.consistency_file(old, new, self.consistency_proof(old.size, new.size))

    def detect(self, items: list[ObservationIn]) -> list[DetectedPattern]:
        """Dry-run detection over the given observations only; nothing stored."""
        now = time.time_ns()
        observations = [
            Observation(
                id=f"input-{i}",
                seq=i,
                event_type=it.event_type,
                sector=it.sector,
                value=it.value,
                metadata=it.metadata,
                ingested_at_ns=int(it.event_time.timestamp() * 1e9) if it.event_time else now,
                event_time=it.event_time,
            )
            for i, it in enumerate(items)
        ]
        return detect_batch(self.cfg.analyze, self.knowledge.schema, observations, now)

    # ------------------------------------------------------------------ #
    # Operations
    # ------------------------------------------------------------------ #

    def check_accepting(self) -> None:
        """Raises ``Closed`` (503, draining) once shutdown has begun."""
        if self.draining:
            raise Closed("knhkd is shutting down")

    async def ingest(self, decoded: Decoded) -> list[str]:
        """The sector shapes gate (``ShaclRejected``), then the durable commit:
        returns the ids once the observations and their receipts are fsynced.
        Raises ``Overloaded`` when the queue stays full, ``Closed`` or
        ``WriterClosed`` while stopping, ``CommitFailed`` when storage fails;
        nothing of a refused request is stored."""
        (result,) = await self.ingest_many([decoded])
        if isinstance(result, Exception):
            raise result
        return result

    async def ingest_many(self, batch: Sequence[Decoded]) -> list[list[str] | Exception]:
        """``ingest`` for each request of ``batch`` (a worker's lane batch),
        each stored or refused on its own, queued together so that they share
        a group commit: per request, its ids or what ``ingest`` would raise."""
        try:
            self.write_gate.check()
        except KnhkdError as exc:
            return [exc] * len(batch)
        out: list[list[str] | Exception] = []
        passed: list[Items] = []
        at: list[int] = []
        gate = self._state.shapes_gate
        for decoded in batch:
            try:
                if gate is not None:
                    await gate.check(decoded.items, single=decoded.single)
            except Exception as exc:  # answered for this request alone
                out.append(exc)
                continue
            at.append(len(out))
            out.append([])
            passed.append(decoded.items)
        if passed:
            cfg = self.cfg.http
            stored = await self.actors.ingest.submit_many(
                passed, enqueue_timeout=cfg.enqueue_timeout_s, commit_timeout=cfg.commit_timeout_s
            )
            for i, result in zip(at, stored, strict=True):
                out[i] = result
        return out

    async def run_cycle(self, by: Principal) -> CycleReport:
        """One cycle now; its ``cycle_completed`` receipt names ``by``."""
        self.write_gate.check()  # a cycle stores its report
        cycle: Cycle = await self.actors.scheduler.request("on_demand", principal=by.name)
        return await cycle.wait()

    # Proposals submitted by operators (the planner's take the same path) --- #

    def _as_proposal(self, p: ProposalIn, by: Principal) -> Proposal:
        if p.signers:
            raise PrincipalMismatch(
                "a proposal's signers are not declared: each signer signs the stored "
                "proposal as themselves (POST /api/v1/proposals/{id}/signatures); "
                "submit it with no signers"
            )
        current = self.knowledge.current.snapshot_id
        if p.parent_snapshot_id is not None and p.parent_snapshot_id != current:
            raise SnapshotConflict(
                f"the proposal is against {p.parent_snapshot_id[:16]}, "
                f"the current snapshot is {current[:16]}"
            )
        proposal = make_proposal(p, current, time.time_ns())
        return msgspec.structs.replace(proposal, submitted_by=by.name)

    async def submit_proposal(self, p: ProposalIn, by: Principal) -> tuple[Proposal, bool]:
        """Store ``p`` with a receipt naming ``by``. Returns (proposal,
        created); the same change against the same snapshot returns the
        stored one. ``PrincipalMismatch`` when ``p`` declares signers."""
        proposal = self._as_proposal(p, by)
        stored = await self.writer.submit(
            store_proposals_job(
                self.store,
                self.receipts,
                [(proposal, proposal_draft(proposal, principal=by.name))],
            )
        )
        if stored:
            return proposal, True
        existing = self.queries.proposal_with_change_of(proposal)
        if existing is None:
            # Stored by another request and gone since: nothing a client did.
            raise KnhkdError(f"proposal {proposal.id[:16]} was neither stored nor found")
        return self.get_proposal(existing)[0], False

    def get_proposal(self, proposal_id: str) -> tuple[Proposal, ValidationReport | None]:
        return self.queries.get_proposal(proposal_id)

    async def validate_dry(self, p: ProposalIn, by: Principal) -> ValidationReport:
        """The full report for ``p`` against the current snapshot; nothing is
        stored, receipted or promoted."""
        return await self.actors.executor.validate(self._as_proposal(p, by))

    async def sign_proposal(self, proposal_id: str, by: Principal) -> tuple[Proposal, bool]:
        """``by`` signs the stored proposal as the capacities its token gives
        it (``Principal.signing_as``), with a ``proposal_signed`` receipt in
        the same transaction. Returns (proposal, signed now); a principal that
        signed it already changes nothing."""
        self.write_gate.check()
        signature = ProposalSignature(
            principal=by.name, capacities=sorted(set(by.signing_as)), at_ns=time.time_ns()
        )
        return await self.writer.submit(
            sign_job(self.store, self.receipts, proposal_id, signature)
        )

    async def promote_proposal(
        self, proposal_id: str, by: Principal
    ) -> tuple[ValidationReport, bool]:
        """Validate the stored proposal (with its signatures), promote it if it
        passes; both receipts name ``by``."""
        proposal, _ = self.get_proposal(proposal_id)
        if proposal.parent_snapshot_id != self.knowledge.current.snapshot_id:
            raise SnapshotConflict(
                f"proposal {proposal_id[:16]} is against {proposal.parent_snapshot_id[:16]}, "
                f"not the current snapshot; submit it again"
            )
        return await self.actors.executor.judge(proposal, principal=by.name)

    async def rollback(self, by: Principal) -> Snapshot:
        """Make the current snapshot's parent current; the receipt names ``by``."""
        state = self.knowledge
        parent_id = state.current.parent_id
        baseline = None if parent_id is None else self._state.figures.take_baseline(parent_id)
        parent, _ = await self.writer.submit(
            kn.rollback_job(
                self.store,
                self.receipts,
                expect_current=state.current.snapshot_id,
                principal=by.name,
                baseline=baseline,
            )
        )
        self._state.set_knowledge(kn.state_of(parent, state.shapes), baseline)
        self.metrics.snapshots_rolled_back.inc()
        self.metrics.snapshot_version.set(parent.meta.version)
        return parent.meta

    async def backup(self, out_root: str, kind: str | None) -> BackupManifest:
        """A backup under ``out_root`` (loop/backup.py), receipted."""
        if kind not in (None, "base", "incremental"):
            raise Conflict(f"unknown backup kind {kind!r}")
        return await self.backups.take(Path(out_root), kind)  # type: ignore[arg-type]

    async def run_retention(self) -> RetentionRun:
        """One retention run now (loop/retention.py), receipted."""
        self.write_gate.check()
        return await self.retention.run_once()

    async def backup_consistency(self, size: int) -> dict[str, Any]:
        """The latest checkpoint and a consistency proof from ``size`` to it,
        for ``knhkctl backup verify``."""
        try:
            note, proof = await trio.to_thread.run_sync(
                backup_copy.consistency_to_latest, self.store, size
            )
        except backup_copy.BackupError as exc:
            raise Conflict(str(exc)) from None
        except merkle.ProofError as exc:
            raise Conflict(f"no consistency proof: {exc}") from None
        return {"checkpoint": note, "proof": [p.hex() for p in proof]}

    async def issue_checkpoint(self) -> Checkpoint | None:
        """Sign a checkpoint of everything committed now (None when the log is
        empty or nothing was added since the last one)."""
        return await self.actors.checkpointer.issue()

    def count_refused(self, reason: str, n: int = 1) -> None:
        """Count ingest requests refused before the loop saw them
        (``knhk_ingest_rejected{reason}``: invalid, too_large)."""
        self.metrics.ingest_rejected.labels(reason).inc(n)

    def count_response(self, status: int, route: str = "", seconds: float | None = None) -> None:
        """Count an HTTP answer by class (success, client error, error); one
        the app answered (``seconds`` since it began) also feeds the figures
        (route template, "-" for none)."""
        if seconds is not None:
            self._state.figures.record_request(route or "-", seconds)
        if status < 400:
            self.count_answers(1, 0, 0)
        elif status < 500:
            self.count_answers(0, 1, 0)
        else:
            self.count_answers(0, 0, 1)

    def count_answers(self, ok: int, client_error: int, error: int) -> None:
        """Count HTTP answers by class (an HTTP worker's, in one go)."""
        if ok:
            self.metrics.requests_success.inc(ok)
        if client_error:
            self.metrics.requests_client_error.inc(client_error)
        if error:
            self.metrics.requests_error.inc(error)

    def merge_figures(self, samples: FigureSamples) -> None:
        """Samples measured in another process (an HTTP worker) join the
        figures the loop judges by."""
        self._state.figures.merge(samples)

    def metrics_text(self) -> bytes:
        """The Prometheus exposition, with ``knhk_health_status`` refreshed."""
        self.health()
        return self.metrics.render()

    def uptime_s(self) -> int:
        return int(time.monotonic() - self.started_monotonic)

    def writes_refused(self) -> dict[str, str]:
        """Why the store takes no writes now, by cause (empty: it does)."""
        return self.write_gate.closed_causes()

    def health(self) -> Health:
        writer_ok = self.supervisor.status.get("receipt_writer")
        storage = "healthy" if writer_ok and writer_ok.state == "running" else "unhealthy"
        refused = self.writes_refused()
        # "healthy", or each cause that refuses writes with its detail.
        writes = "; ".join(f"{k}: {v}" for k, v in refused.items()) or "healthy"
        degraded = storage != "healthy" or bool(refused) or self.supervisor.degraded()
        self.metrics.health_status.set(0 if degraded else 1)
        for cause in {*WRITE_REFUSAL_CAUSES, *refused}:
            self.metrics.storage_writes_refused.labels(cause).set(1 if cause in refused else 0)
        return Health(
            status="degraded" if degraded else "healthy",
            timestamp=_utcnow(),
            uptime_seconds=self.uptime_s(),
            dependencies={
                "storage": storage,
                "writes": writes,
                "signing_key": "healthy",
                "knowledge": "healthy",
            },
            actors=dict(self.supervisor.status),
            authentication="on" if self.cfg.auth_enabled else "off",
            figures=self.figures(),
        )

    def figures(self) -> RuntimeFigures:
        """What the daemon measured about itself (loop/figures.py), also set
        on the ``knhk_figure_*`` gauges."""
        f = self._state.figures.snapshot()
        self.metrics.set_figures(f)
        return f

    def status(self) -> StatusReport:
        next_seq, head_hash = self.receipt_head()
        return StatusReport(
            version=__version__,
            pid=os.getpid(),
            uptime_seconds=self.uptime_s(),
            data_dir=str(self.cfg.data_dir.resolve()),
            http_bind=self.cfg.http.bind,
            observations=self.observation_count(),
            receipts=next_seq,
            head_hash=head_hash,
            current_snapshot=self.knowledge.current,
            actors=dict(self.supervisor.status),
            key_id=self.signer.key_id,
            ring=self.ring_summary(),
        )

    def ring_summary(self) -> RingSummary | None:
        if self.ring is None or self.ring.closed:
            return None
        stats = self.ring.lane_stats()
        return RingSummary(
            path=self.ring.path,
            lanes=self.ring.lanes,
            capacity=self.ring.capacity,
            backlog=sum(s.backlog for s in stats),
            full_count=sum(s.full_count for s in stats),
            corrupt_count=sum(s.corrupt_count for s in stats),
            stale=self._ring_stale(self.ring),
        )

    @staticmethod
    def _ring_stale(ring: Consumer) -> bool:
        try:
            return ring.stale()
        except RingError:
            return False  # cannot tell (stat failed): status reports what it knows

    async def reload(self) -> None:
        """SIGHUP: a new configuration, doctrine and guard sets; keep the old
        ones if anything is invalid. Every attempt is audited (event
        ``config_reload``, allow or deny with the reason)."""
        why = await self._reload()
        await self.audit(
            AuditRecord(
                event="config_reload",
                principal=f"uid:{os.getuid()}",
                route="SIGHUP",
                decision="deny" if why else "allow",
                reason=why or f"configuration {self.cfg.digest()[:16]} in force",
            )
        )

    async def _reload(self) -> str:
        """The reload; "" when the new configuration is in force, else why not."""
        try:
            new = self._state.settings.read()
        except ConfigError as exc:
            log.error("reload refused, keeping the running configuration: %s", exc)
            return f"invalid configuration: {exc}"
        for section, key in RESTART_ONLY:
            old_v = getattr(getattr(self.cfg, section), key)
            new_v = getattr(getattr(new, section), key)
            if old_v != new_v:
                log.error(
                    "reload refused, keeping the running configuration: %s.%s changed "
                    "(%r -> %r) and needs a restart",
                    section,
                    key,
                    old_v,
                    new_v,
                )
                return f"{section}.{key} changed and needs a restart"
        if new.http.tls.enabled != self.cfg.http.tls.enabled:
            log.error(
                "reload refused, keeping the running configuration: "
                "turning http.tls on or off needs a restart"
            )
            return "turning http.tls on or off needs a restart"
        try:
            self.governance.load(new)
        except (KnowledgeError, RelaxationError) as exc:
            log.error("reload refused, keeping the running configuration: governance: %s", exc)
            return f"governance: {exc}"
        except Exception as exc:
            # Anything else (a stored relaxation that no longer decodes ...):
            # still the new input's fault, never the daemon's end.
            log.error(
                "reload refused, keeping the running configuration: governance: %s: %s",
                type(exc).__name__,
                exc,
            )
            return f"governance: {type(exc).__name__}"
        self._state.settings.current = new
        # Level, format: the log follows the file like everything reloadable.
        logs.configure(new.telemetry)
        log.info("configuration reloaded (digest %s)", new.digest()[:16])
        if new.http.tls.enabled:
            # The files are read again even when the settings did not change:
            # a renewed certificate keeps its path. A bad pair keeps the old one.
            try:
                self._tls = server_context(new.http.tls)
                log.info("TLS certificate and key reloaded for new connections")
            except TlsError as exc:
                log.error("TLS reload refused, keeping the running certificate: %s", exc)
        # The map's ceiling is the running configuration's: a raised ceiling
        # lets a map-full store take writes again at once.
        self.store.max_map_size = new.storage.max_map_size_mb * MB
        self.writer.storage_changed()
        try:
            if self.store.frozen is None:
                await self.governance.record_digests()
        except KnhkdError as exc:
            # In force already; the receipt of the change waits for the next reload.
            log.error("governance digests not receipted: %s", exc.detail or exc)
        return ""


def _utcnow() -> datetime:
    return datetime.now(UTC)
