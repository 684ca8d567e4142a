"""The daemon facade: the one object the API and the admin socket call, one
method per use case (``ingest``, ``submit_proposal``, ``promote_proposal``,
``rollback``, the relaxation steps, ``run_cycle``, proofs, reads …), and the
start-up steps the nursery tree (loop/tree.py) runs in order.

Start-up, in order; a failed step raises ``StartupError`` naming the step:
  1. data directory (0700) and the LMDB store (exclusive lock, reader_check,
     schema version);
  2. the signing key (generated 0600 on first start) and the public keyring
     file ``keys/public.json``; the shared-memory ring when ``[ring] enabled``
     (created when absent; a header or layout mismatch is refused);
  3. the receipt writer, then knowledge: the current snapshot, or genesis from
     ``knowledge.ontology_dir`` with its receipt, published to the ring's
     snapshot descriptor (as is every later promotion and rollback); before
     it, the sectors' observation shapes when ``[ingest] shacl`` is on (a
     missing or broken file fails the step ``observation_shapes``);
  4. the actors under the supervisor, the admin socket, the HTTP server, the
     ring drain (loop/tree.py); then ready.

Reads are answered by loop/queries.py (short read transactions); every write
goes through the writer actor. SIGHUP (``reload``) takes a new configuration,
doctrine and guard set, or keeps the old ones and logs why.

Must never: acknowledge before commit; hand the API an actor, the writer or
the store (the API calls these methods only).
"""

from __future__ import annotations

import logging
import os
import random
import time
from collections.abc import Mapping
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import msgspec
import trio

from knhkd import __version__
from knhkd.analyze.detectors import detect_batch
from knhkd.config import Config, ConfigError, load
from knhkd.crypto.keys import KeyFileError, Signer, Verifier, load_or_create
from knhkd.errors import KnhkdError
from knhkd.governance.relaxation import RelaxationError
from knhkd.hotpath.ring import Consumer, RingError
from knhkd.knowledge.rdf import KnowledgeError, diff_ntriples
from knhkd.knowledge.shacl import Shapes, ShapesError
from knhkd.loop import knowledge_state as kn
from knhkd.loop.checkpointer import Checkpointer
from knhkd.loop.context import LoopContext
from knhkd.loop.cycle import Cycle, CycleScheduler
from knhkd.loop.executor import Executor
from knhkd.loop.figures import Figures
from knhkd.loop.governance_state import Governance
from knhkd.loop.ingest import Closed, Ingest
from knhkd.loop.knowledge_state import SnapshotConflict
from knhkd.loop.planner import proposal_draft, store_proposals_job
from knhkd.loop.queries import NotFound as NotFound  # noqa: PLC0414 (its old home)
from knhkd.loop.queries import Queries
from knhkd.loop.ring_drain import RingDrain
from knhkd.loop.shapes_gate import ShapesGate
from knhkd.loop.supervisor import Supervisor
from knhkd.loop.writer import StoreWriter
from knhkd.model import (
    ChainVerification,
    ConsistencyFile,
    CycleReport,
    DetectedPattern,
    ExportFile,
    Health,
    Observation,
    ObservationIn,
    ProofFile,
    Proposal,
    ProposalIn,
    PublicKeyring,
    ReceiptView,
    Relaxation,
    RingSummary,
    Snapshot,
    StatusReport,
    ValidationReport,
)
from knhkd.monitor.decode import Decoded
from knhkd.monitor.shapes import ObservationGate, load_observation_shapes
from knhkd.plan.proposals import make_proposal
from knhkd.receipts import canonical, keyring, offline
from knhkd.receipts.checkpoints import set_origin_job
from knhkd.receipts.log import ReceiptLog, verify_store
from knhkd.receipts.tlog_checkpoint import Checkpoint
from knhkd.store.env import Store, StoreError, open_store
from knhkd.telemetry.metrics import Metrics
from knhkd.validate.types import ValidationInputs

log = logging.getLogger("knhkd")

MB = 1024 * 1024

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


class StartupError(KnhkdError):
    """A start-up step failed; the daemon exits non-zero with this one line."""

    problem = "startup-failed"
    title = "Start-up failed"

    def __init__(self, step: str, message: str) -> None:
        super().__init__(f"{step}: {message}")
        self.step = step


def write_public_keyring(path: Path, ring: PublicKeyring) -> None:
    tmp = path.with_suffix(".tmp")
    tmp.write_bytes(msgspec.json.format(msgspec.json.encode(ring), indent=2) + b"\n")
    os.chmod(tmp, 0o644)
    tmp.replace(path)


class Daemon:
    """Owns the running daemon's parts; the API and admin layers call it."""

    def __init__(
        self,
        cfg: Config,
        *,
        config_path: Path | None = None,
        env: Mapping[str, str] | None = None,
        overrides: Mapping[tuple[str, str], Any] | None = None,
    ) -> None:
        self.cfg = cfg
        self.config_path = config_path
        self._env = env
        self._overrides = dict(overrides or {})
        self.metrics = Metrics()
        self.started_ns = time.time_ns()
        self.started_monotonic = time.monotonic()
        self.ready = False
        self.draining = False
        self.shutdown_requested = trio.Event()
        self.figures = Figures()
        self.http_done = trio.Event()
        self.supervisor = Supervisor(cfg.supervisor, self.metrics, random.Random())
        self.store: Store
        self.signer: Signer
        self.verifier: Verifier
        self.receipts: ReceiptLog
        self.writer: StoreWriter
        self.ingest_actor: Ingest
        self.scheduler: CycleScheduler
        self.executor: Executor
        self.checkpointer: Checkpointer
        self.ctx: LoopContext
        self.queries: Queries
        self._knowledge: kn.KnowledgeState
        # SHACL at ingest (monitor/shapes.py); None when [ingest] shacl = false.
        self.shacl_gate: ShapesGate | None = None
        self.http_bound: list[str] = []
        # The shared-memory ring's consumer handle ([ring] enabled), and its drain.
        self.ring: Consumer | None = None
        self.ring_drain: RingDrain | None = None

    # ------------------------------------------------------------------ #
    # Start-up steps
    # ------------------------------------------------------------------ #

    def open(self) -> None:
        """Steps 1–2: store and keys (synchronous, before any actor runs)."""
        cfg = self.cfg
        try:
            cfg.data_dir.mkdir(parents=True, exist_ok=True, mode=0o700)
            self.store = open_store(
                cfg.data_dir,
                map_size=cfg.storage.map_size_mb * MB,
                max_map_size=cfg.storage.max_map_size_mb * MB,
            )
        except (StoreError, OSError) as exc:
            raise StartupError("storage", str(exc)) from None
        try:
            load_or_create(cfg.signing_key_path, time.time_ns())
            # Finish or discard a rotation a crash interrupted (receipts/keyring.py).
            self.signer = keyring.reconcile(self.store, cfg.signing_key_path)
        except (KeyFileError, OSError) as exc:
            self.store.close()
            raise StartupError("keys", str(exc)) from None
        if cfg.ring.enabled:
            try:
                self.ring = Consumer.create_or_open(
                    cfg.ring_path,
                    lanes=cfg.ring.lanes,
                    capacity=cfg.ring.capacity,
                    mode=cfg.ring.mode,
                )
            except (RingError, OSError) as exc:
                self.store.close()
                raise StartupError("ring", str(exc)) from None
        self.receipts = ReceiptLog(self.store, self.signer, time.time_ns)
        self.writer = StoreWriter(
            self.store,
            self.metrics,
            inline_max_s=lambda: self.cfg.storage.inline_commit_max_ms / 1000.0,
        )
        self.ctx = LoopContext(
            config=lambda: self.cfg,
            store=self.store,
            writer=self.writer,
            receipts=self.receipts,
            knowledge=lambda: self.knowledge,
            metrics=self.metrics,
        )
        self.checkpointer = Checkpointer(self.ctx)
        self.queries = Queries(self.store, self.receipts)
        self.governance = Governance(self.store, self.writer, self.receipts)

    async def register_keys(self) -> None:
        """Step 3a (needs the writer): the keyring, the log's origin, the tree."""
        await self.writer.submit(keyring.register_job(self.store, self.signer))
        origin = self.cfg.receipts.origin or f"knhkd.local/{self.signer.key_id}"
        fixed = await self.writer.submit(set_origin_job(self.store, origin))
        if self.cfg.receipts.origin and fixed != self.cfg.receipts.origin:
            raise StartupError(
                "receipts", f"the log's origin is {fixed!r}; receipts.origin may not rename it"
            )
        added = await self.writer.submit(self.receipts.backfill_tree)
        if added:
            log.info("Merkle tree backfilled with %d receipts", added)
        self.refresh_keyring()

    def refresh_keyring(self) -> None:
        ring = self.public_keyring()
        self.verifier = Verifier(ring)
        write_public_keyring(self.cfg.signing_key_path.parent / "public.json", ring)

    async def load_governance(self) -> None:
        """Step 3b: doctrines, guards and relaxations; receipt changed digests."""
        try:
            self.governance.load(self.cfg)
        except (KnowledgeError, RelaxationError) as exc:
            raise StartupError("governance", str(exc)) from None
        await self.governance.record_digests()

    def ancestry(self, limit: int = 64) -> tuple[Snapshot, ...]:
        """The current snapshot, then its parent, ... (at most ``limit``)."""
        return self.queries.ancestry(self.knowledge.current.snapshot_id, limit)

    def observation_shapes_digest(self, sector: str) -> str | None:
        """The digest of the shapes a sector's observations were checked
        against (None when SHACL at ingest is off)."""
        shapes = None if self.shacl_gate is None else self.shacl_gate.gate.shapes
        return None if shapes is None or sector not in shapes else shapes[sector].digest

    def validation_inputs(self) -> ValidationInputs:
        return self.governance.inputs(self.cfg, self.figures.snapshot(), self.ancestry())

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

    async def request_relaxation(self, guard_id: str, requester: str, reason: str) -> Relaxation:
        now = time.time_ns()
        events = await self.governance.step(
            lambda book: [book.request(guard_id, requester, reason, now)]
        )
        return events[-1].record

    async def approve_relaxation(self, relaxation_id: str, approver: str) -> Relaxation:
        now = time.time_ns()
        await self.governance.step(lambda book: book.approve(relaxation_id, approver, now))
        return self.relaxation(relaxation_id)

    async def activate_relaxation(self, relaxation_id: str, actor: str) -> Relaxation:
        now = time.time_ns()
        await self.governance.step(lambda book: book.activate(relaxation_id, actor, now))
        return self.relaxation(relaxation_id)

    async def revoke_relaxation(self, relaxation_id: str, actor: str, reason: str) -> Relaxation:
        now = time.time_ns()
        await self.governance.step(lambda book: [book.revoke(relaxation_id, actor, reason, now)])
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

    async def advance_relaxations(self) -> None:
        """Expiries and closed windows become receipted steps (each cycle)."""
        now = time.time_ns()
        await self.governance.step(lambda book: book.advance(now))

    async def load_knowledge(self) -> None:
        """Step 3 (needs the writer running): current snapshot or genesis."""
        cfg = self.cfg
        if cfg.ingest.shacl:
            try:
                sector_shapes = load_observation_shapes(cfg.observation_shapes_dir)
            except ShapesError as exc:
                raise StartupError("observation_shapes", str(exc)) from None
            self.shacl_gate = ShapesGate(
                ObservationGate(sector_shapes),
                self.metrics.shacl_failures_by_sector,
                inline_max_items=lambda: self.cfg.ingest.shacl_inline_max_items,
            )
        try:
            shapes = Shapes.load(Path(cfg.knowledge.shapes_dir))
            record = kn.load_current(self.store)
            if record is None:
                record = kn.build_genesis(Path(cfg.knowledge.ontology_dir), time.time_ns())
                await self.writer.submit(
                    kn.install_job(self.store, self.receipts, record, expect_current=None)
                )
                log.info(
                    "genesis snapshot %s (%d triples) promoted",
                    record.meta.snapshot_id[:16],
                    record.meta.triple_count,
                )
            self.set_knowledge(kn.state_of(record, shapes))
        except (KnowledgeError, OSError) as exc:
            raise StartupError("knowledge", str(exc)) from None
        self.metrics.snapshot_version.set(record.meta.version)

    @property
    def knowledge(self) -> kn.KnowledgeState:
        return self._knowledge

    def set_knowledge(self, state: kn.KnowledgeState) -> None:
        """Every change of the current snapshot (start, promotion, rollback) comes
        here, on the trio thread, so the ring's descriptor follows it and has
        one writer."""
        self._knowledge = state
        if self.ring is not None:
            meta = state.current
            self.ring.publish_snapshot(meta.snapshot_id, meta.version, meta.promoted_at_ns)

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
        report = await trio.to_thread.run_sync(verify_store, self.store, self.verifier)
        broken = (
            len(report.chain_breaks)
            + len(report.signature_failures)
            + len(report.retrocausation_violations)
        )
        if broken:
            self.metrics.receipt_chain_breaks.inc(broken)
        return report

    def public_keyring(self) -> PublicKeyring:
        return self.queries.public_keyring()

    async def rotate_key(self) -> dict[str, str]:
        """knhkctl keys rotate: the protocol of receipts/keyring.py. Returns the
        ``key_rotated`` receipt's id and the new key id."""
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
            cp = await self.checkpointer.issue()
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
            fresh = await self.checkpointer.issue() or self.latest_checkpoint()
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
        if self.shacl_gate is not None:
            await self.shacl_gate.check(decoded.items, single=decoded.single)
        cfg = self.cfg.http
        return await self.ingest_actor.submit(
            decoded.items,
            enqueue_timeout=cfg.enqueue_timeout_s,
            commit_timeout=cfg.commit_timeout_s,
        )

    async def run_cycle(self) -> CycleReport:
        cycle: Cycle = await self.scheduler.request("on_demand")
        return await cycle.wait()

    # Proposals submitted by operators (the planner's take the same path) --- #

    def _as_proposal(self, p: ProposalIn) -> Proposal:
        current = self.knowledge.current.snapshot_id
        if p.parent_snapshot_id is not None and p.parent_snapshot_id != current:
            raise SnapshotConflict(
                f"the proposal is against {p.parent_snapshot_id[:16]}, "
                f"the current snapshot is {current[:16]}"
            )
        return make_proposal(p, current, time.time_ns())

    async def submit_proposal(self, p: ProposalIn) -> tuple[Proposal, bool]:
        """Store ``p`` with a receipt. Returns (proposal, created); the same
        change against the same snapshot returns the stored one."""
        proposal = self._as_proposal(p)
        stored = await self.writer.submit(
            store_proposals_job(self.store, self.receipts, [(proposal, proposal_draft(proposal))])
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

    async def validate_dry(self, p: ProposalIn) -> ValidationReport:
        """The full report for ``p`` against the current snapshot; nothing is
        stored, receipted or promoted."""
        return await self.executor.validate(self._as_proposal(p))

    async def promote_proposal(self, proposal_id: str) -> tuple[ValidationReport, bool]:
        proposal, _ = self.get_proposal(proposal_id)
        if proposal.parent_snapshot_id != self.knowledge.current.snapshot_id:
            raise SnapshotConflict(
                f"proposal {proposal_id[:16]} is against {proposal.parent_snapshot_id[:16]}, "
                f"not the current snapshot; submit it again"
            )
        return await self.executor.judge(proposal)

    async def rollback(self) -> Snapshot:
        state = self.knowledge
        parent, _ = await self.writer.submit(
            kn.rollback_job(self.store, self.receipts, expect_current=state.current.snapshot_id)
        )
        self.set_knowledge(kn.state_of(parent, state.shapes))
        self.metrics.snapshots_rolled_back.inc()
        self.metrics.snapshot_version.set(parent.meta.version)
        return parent.meta

    async def issue_checkpoint(self) -> Checkpoint | None:
        """Sign a checkpoint of everything committed now (None when the log is
        empty or nothing was added since the last one)."""
        return await self.checkpointer.issue()

    def count_response(self, status: int) -> None:
        """Count an HTTP answer by class (success, client error, error)."""
        if status < 400:
            self.metrics.requests_success.inc()
        elif status < 500:
            self.metrics.requests_client_error.inc()
        else:
            self.metrics.requests_error.inc()

    def metrics_text(self) -> bytes:
        """The Prometheus exposition, with ``knhk_health_status`` refreshed."""
        self.health()
        return self.metrics.render()

    def uptime_s(self) -> int:
        return int(time.monotonic() - self.started_monotonic)

    def health(self) -> Health:
        writer_ok = self.supervisor.status.get("receipt_writer")
        storage = "healthy" if writer_ok and writer_ok.state == "running" else "unhealthy"
        degraded = storage != "healthy" or self.supervisor.degraded()
        self.metrics.health_status.set(0 if degraded else 1)
        return Health(
            status="degraded" if degraded else "healthy",
            timestamp=_utcnow(),
            uptime_seconds=self.uptime_s(),
            dependencies={
                "storage": storage,
                "signing_key": "healthy",
                "knowledge": "healthy",
            },
            actors=dict(self.supervisor.status),
        )

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
        ones if anything is invalid."""
        try:
            new = load(self.config_path, env=self._env, overrides=self._overrides)
        except ConfigError as exc:
            log.error("reload refused, keeping the running configuration: %s", exc)
            return
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
                return
        try:
            self.governance.load(new)
        except (KnowledgeError, RelaxationError) as exc:
            log.error("reload refused, keeping the running configuration: governance: %s", exc)
            return
        self.cfg = new
        await self.governance.record_digests()
        log.info("configuration reloaded (digest %s)", new.digest()[:16])


def _utcnow() -> datetime:
    return datetime.now(UTC)
