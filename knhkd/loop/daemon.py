"""The daemon: start-up as a sequence with a result, the actor tree, shutdown.

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
  4. the actors (ingest, analyzer, planner, executor, scheduler) under the
     supervisor, the admin socket, the HTTP server, the ring drain;
  5. ``gc.freeze()`` of the start-up heap, then ready (``/ready`` 200,
     ``READY=1`` to systemd).

Shutdown (SIGTERM/SIGINT), bounded by ``shutdown.timeout_s``: stop accepting
(``/ready`` 503), let Hypercorn finish in-flight requests, close the ingest
intake and commit what it holds, stop the loop actors, commit what the writer
holds, close the store, exit 0. SIGHUP reloads the configuration file; an
invalid one keeps the old configuration and logs why.

Nesting of nurseries is the shutdown order: front (HTTP, admin, signals) inside
ingest inside the loop actors inside the receipt writer. An actor past its
restart budget raises ``ActorFailed`` out of all of them: exit status 1.

Must never: acknowledge before commit; exit 0 after losing an acknowledged write.
"""

from __future__ import annotations

import gc
import logging
import os
import random
import signal
import sys
import time
from collections.abc import Awaitable, Callable, Mapping, Sequence
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import msgspec
import trio

from knhkd import __version__, errors
from knhkd.analyze.detectors import detect_batch
from knhkd.config import Config, ConfigError, load
from knhkd.crypto.keys import KeyFileError, Signer, Verifier, load_or_create
from knhkd.errors import KnhkdError
from knhkd.governance.relaxation import RelaxationError
from knhkd.hotpath.ring import Consumer, RingError
from knhkd.knowledge.rdf import KnowledgeError, diff_ntriples
from knhkd.knowledge.shacl import Shapes, ShapesError
from knhkd.loop import knowledge_state as kn
from knhkd.loop.analyzer import Analyzer
from knhkd.loop.checkpointer import Checkpointer
from knhkd.loop.context import LoopContext
from knhkd.loop.cycle import AnalyzerMessage, Cycle, CycleScheduler
from knhkd.loop.executor import Executor
from knhkd.loop.figures import Figures
from knhkd.loop.governance_state import Governance
from knhkd.loop.ingest import Closed, Ingest
from knhkd.loop.knowledge_state import SnapshotConflict
from knhkd.loop.planner import Planner, change_key, proposal_draft, store_proposals_job
from knhkd.loop.ring_drain import RingDrain
from knhkd.loop.sdnotify import notify, watchdog_interval_s
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
from knhkd.receipts import canonical, checkpoints, keyring, offline
from knhkd.receipts.checkpoints import set_origin_job
from knhkd.receipts.log import ReceiptLog, iter_raw, verify_store, view
from knhkd.receipts.tlog_checkpoint import Checkpoint
from knhkd.store import ids
from knhkd.store.env import META_OBS_NEXT, Store, StoreError, open_store
from knhkd.store.ids import seq_key
from knhkd.telemetry.metrics import Metrics
from knhkd.telemetry.tracing import setup_tracing, shutdown_tracing
from knhkd.validate.pipeline import default_pipeline
from knhkd.validate.types import ValidationInputs

log = logging.getLogger("knhkd")

MB = 1024 * 1024
SWITCH_INTERVAL_S = 0.0005
_obs_decoder = msgspec.msgpack.Decoder(Observation)
_pattern_decoder = msgspec.msgpack.Decoder(DetectedPattern)
_proposal_decoder = msgspec.msgpack.Decoder(Proposal)
_report_decoder = msgspec.msgpack.Decoder(ValidationReport)
_OBS_NOT_FOUND = "Observation not found"

# Settings a running daemon cannot take over on SIGHUP.
RESTART_ONLY = (
    ("storage", "data_dir"),
    ("http", "bind"),
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


class NotFound(errors.NotFound):
    """The requested record does not exist."""


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
        self._ingest: Ingest
        self.scheduler: CycleScheduler
        self.executor: Executor
        self.checkpointer: Checkpointer
        self.ctx: LoopContext
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
        out: list[Snapshot] = []
        with self.store.reader() as txn:
            sid: str | None = self.knowledge.current.snapshot_id
            while sid is not None and len(out) < limit:
                rec = kn.read_record(self.store, txn, sid)
                if rec is None:
                    break
                out.append(rec.meta)
                sid = rec.meta.parent_id
        return tuple(out)

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
        with self.store.reader() as txn:
            rec_a = kn.read_record(self.store, txn, a)
            rec_b = kn.read_record(self.store, txn, b)
        for sid, rec in ((a, rec_a), (b, rec_b)):
            if rec is None:
                raise NotFound(f"no snapshot {sid!r}", title="Snapshot not found")
        assert rec_a is not None and rec_b is not None
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
        try:
            seq = ids.seq_of(obs_id)
        except ids.BadId:
            raise NotFound(f"no observation {obs_id!r}", title=_OBS_NOT_FOUND) from None
        with self.store.reader() as txn:
            raw = txn.get(ids.seq_key(seq), db=self.store.db("observations"))
        if raw is None:
            raise NotFound(f"no observation {obs_id!r}", title=_OBS_NOT_FOUND)
        obs = _obs_decoder.decode(raw)
        if obs.id != obs_id:
            raise NotFound(f"no observation {obs_id!r}", title=_OBS_NOT_FOUND)
        return obs

    def observation_count(self) -> int:
        with self.store.reader() as txn:
            raw = txn.get(META_OBS_NEXT, db=self.store.db("meta"))
        return int(raw) if raw is not None else 0

    def list_snapshots(self) -> list[Snapshot]:
        with self.store.reader() as txn:
            snaps = list(kn.iter_snapshots(self.store, txn))
        return sorted(snaps, key=lambda s: (s.version, s.promoted_at_ns))

    def list_receipts(self, *, after: int, limit: int) -> list[ReceiptView]:
        out: list[ReceiptView] = []
        with self.store.reader() as txn:
            for _, raw in iter_raw(self.store, txn, after=after):
                out.append(view(canonical.decode_record(raw)))
                if len(out) >= limit:
                    break
        return out

    def list_patterns(self, *, limit: int) -> list[DetectedPattern]:
        out: list[DetectedPattern] = []
        with self.store.reader() as txn:
            cursor = txn.cursor(db=self.store.db("patterns"))
            if cursor.last():
                for _, raw in cursor.iterprev():
                    out.append(_pattern_decoder.decode(raw))
                    if len(out) >= limit:
                        break
        return out

    def receipt_head(self) -> tuple[int, str]:
        with self.store.reader() as txn:
            head = self.receipts.head(txn)
        return head.next_seq, head.hash

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
        with self.store.reader() as txn:
            return keyring.read_keyring(self.store, txn)

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
        with self.store.reader() as txn:
            return checkpoints.latest(self.store, txn)

    def inclusion_proof(self, index: int, tree_size: int) -> list[bytes]:
        with self.store.reader() as txn:
            return self.receipts.tree.inclusion(txn, index, tree_size)

    def consistency_proof(self, size1: int, size2: int) -> list[bytes]:
        with self.store.reader() as txn:
            return self.receipts.tree.consistency(txn, size1, size2)

    async def covering_checkpoint(self, size: int) -> Checkpoint:
        """A signed checkpoint of at least ``size`` leaves, issuing one if needed."""
        with self.store.reader() as txn:
            cp = checkpoints.covering(self.store, txn, size)
        if cp is None:
            cp = await self.checkpointer.issue()
        if cp is None or cp.size < size:
            raise NotFound(f"the log has fewer than {size} receipts")
        return cp

    async def prove(self, index: int) -> ProofFile:
        cp = await self.covering_checkpoint(index + 1)
        with self.store.reader() as txn:
            record = txn.get(seq_key(index), db=self.store.db("receipts"))
            path = self.receipts.tree.inclusion(txn, index, cp.size)
        if record is None:
            raise NotFound(f"no receipt {index}")
        return offline.proof_file(index, cp, bytes(record), path)

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
        with self.store.reader() as txn:
            records = [bytes(raw) for _, raw in iter_raw(self.store, txn, after=start - 1)][
                : end - start
            ]
            proof = self.receipts.tree.range_proof(txn, start, end, cp.size)
        return offline.export_file(start, cp, records, proof)

    async def consistency_file(self, size1: int, size2: int | None) -> ConsistencyFile:
        with self.store.reader() as txn:
            old = checkpoints.at_size(self.store, txn, size1)
        if old is None:
            raise NotFound(f"no signed checkpoint of size {size1}")
        new = await self.covering_checkpoint(size2 or size1)
        if size2 is not None and new.size != size2:
            with self.store.reader() as txn:
                exact = checkpoints.at_size(self.store, txn, size2)
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
        return await self._ingest.submit(
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
        with self.store.reader() as txn:
            existing = txn.get(change_key(proposal), db=self.store.db("proposal_deltas"))
        if existing is None:
            # Stored by another request and gone since: nothing a client did.
            raise KnhkdError(f"proposal {proposal.id[:16]} was neither stored nor found")
        return self.get_proposal(bytes(existing).decode())[0], False

    def get_proposal(self, proposal_id: str) -> tuple[Proposal, ValidationReport | None]:
        with self.store.reader() as txn:
            raw = txn.get(proposal_id.encode(), db=self.store.db("proposals"))
            report = txn.get(proposal_id.encode(), db=self.store.db("validations"))
        if raw is None:
            raise NotFound(f"no proposal {proposal_id!r}", title="Proposal not found")
        return (
            _proposal_decoder.decode(raw),
            None if report is None else _report_decoder.decode(report),
        )

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


# ---------------------------------------------------------------------- #
# The actor tree
# ---------------------------------------------------------------------- #


async def _watch_signals(daemon: Daemon) -> None:
    with trio.open_signal_receiver(signal.SIGTERM, signal.SIGINT, signal.SIGHUP) as signals:
        async for signum in signals:
            if signum == signal.SIGHUP:
                notify("RELOADING=1")
                await daemon.reload()
                notify("READY=1")
                continue
            log.info("received %s: shutting down", signal.Signals(signum).name)
            daemon.draining = True
            daemon.ready = False
            notify("STOPPING=1")
            daemon.shutdown_requested.set()
            return


async def _watchdog(daemon: Daemon, interval: float) -> None:
    while True:
        if daemon.health().status == "healthy":
            notify("WATCHDOG=1")
        await trio.sleep(interval)


Server = Callable[..., Awaitable[None]]


async def run_daemon(daemon: Daemon, servers: Sequence[Server]) -> int:
    """Run until shutdown; ``servers`` (admin socket, HTTP) are started in order
    with ``nursery.start`` once the actors run. Returns the exit status."""
    # The writer thread hands the GIL back and forth with the event loop on
    # every LMDB call; with CPython's 5 ms switch interval a busy loop makes
    # each hand-off wait, and a commit's latency is mostly that waiting
    # (measured: 12.7 ms -> 9.5 ms per commit, ingest/no-op 0.66 -> 0.81).
    sys.setswitchinterval(SWITCH_INTERVAL_S)
    cfg = daemon.cfg
    daemon.open()
    setup_tracing(cfg.telemetry)
    sup = daemon.supervisor
    to_analyzer_send, to_analyzer_recv = trio.open_memory_channel[AnalyzerMessage](
        cfg.loop.channel_capacity
    )
    to_planner_send, to_planner_recv = trio.open_memory_channel[Cycle](cfg.loop.channel_capacity)
    to_exec_send, to_exec_recv = trio.open_memory_channel[Cycle](cfg.loop.channel_capacity)
    deadline_scope = trio.CancelScope()
    clean = True
    try:
        with deadline_scope:
            async with trio.open_nursery() as writer_n:
                writer_n.start_soon(sup.supervise, "receipt_writer", daemon.writer.run)
                await daemon.register_keys()
                await daemon.load_knowledge()
                await daemon.load_governance()
                daemon.scheduler = CycleScheduler(
                    to_analyzer_send, lambda: daemon.cfg.loop.interval_s
                )
                daemon.executor = Executor(
                    daemon.ctx,
                    daemon.set_knowledge,
                    default_pipeline(),
                    to_exec_recv,
                    inputs=daemon.validation_inputs,
                    before_cycle=daemon.advance_relaxations,
                )
                analyzer = Analyzer(daemon.ctx, to_analyzer_recv, to_planner_send)
                planner = Planner(daemon.ctx, to_planner_recv, to_exec_send)
                daemon._ingest = Ingest(
                    daemon.store,
                    daemon.writer,
                    daemon.receipts,
                    daemon.metrics,
                    to_analyzer_send,
                    capacity=cfg.loop.channel_capacity * 16,
                    shapes_digest=daemon.observation_shapes_digest,
                    evidence_sample=lambda: daemon.cfg.analyze.evidence_sample,
                )
                async with trio.open_nursery() as loop_n:
                    loop_n.start_soon(sup.supervise, "analyzer", analyzer.run)
                    loop_n.start_soon(sup.supervise, "planner", planner.run)
                    loop_n.start_soon(sup.supervise, "executor", daemon.executor.run)
                    loop_n.start_soon(sup.supervise, "scheduler", daemon.scheduler.run)
                    loop_n.start_soon(sup.supervise, "checkpointer", daemon.checkpointer.run)
                    async with trio.open_nursery() as ingest_n:
                        ingest_n.start_soon(sup.supervise, "ingest", daemon._ingest.run)
                        async with trio.open_nursery() as front_n:
                            front_n.start_soon(_watch_signals, daemon)
                            for server in servers:
                                await front_n.start(server, daemon)
                            interval = watchdog_interval_s()
                            if interval:
                                front_n.start_soon(_watchdog, daemon, interval)
                            if daemon.ring is not None:
                                # A producer like any other: stops with the front,
                                # before the ingest intake closes. A batch cut off
                                # mid-commit is found by its stored cursor at start.
                                daemon.ring_drain = RingDrain(
                                    lambda: daemon.cfg,
                                    daemon.ring,
                                    daemon.store,
                                    daemon._ingest,
                                    daemon.metrics,
                                    # The same SHACL gate as HTTP ingest.
                                    shacl_gate=lambda: daemon.shacl_gate,
                                )
                                front_n.start_soon(
                                    sup.supervise, "ring_drain", daemon.ring_drain.run
                                )
                            # Start-up garbage is long-lived: keep it out of every
                            # later full collection (PLATFORM_NOTES, CPython GC).
                            gc.collect()
                            gc.freeze()
                            daemon.figures.start()
                            daemon.ready = True
                            notify("READY=1")
                            log.info(
                                "knhkd %s ready: http %s, admin %s, data %s",
                                __version__,
                                ",".join(daemon.http_bound) or cfg.http.bind,
                                cfg.admin_socket,
                                cfg.data_dir,
                            )
                            await daemon.shutdown_requested.wait()
                            deadline_scope.deadline = trio.current_time() + cfg.shutdown.timeout_s
                            # serve_http returns once Hypercorn has drained;
                            # the admin socket and watchdog are cancelled then.
                            await daemon.http_done.wait()
                            front_n.cancel_scope.cancel()
                        daemon._ingest.close()
                    loop_n.cancel_scope.cancel()
                # The last word of a clean stop: a checkpoint of everything committed.
                await daemon.checkpointer.issue()
                daemon.writer.close()
        if deadline_scope.cancelled_caught:
            clean = False
            log.warning("shutdown deadline of %.1fs reached", cfg.shutdown.timeout_s)
    finally:
        if daemon.ring is not None:
            daemon.ring.close()
        daemon.store.close()
        shutdown_tracing()
    log.info(
        "knhkd stopped%s: %d ingest commits, %d of them on the event loop's thread",
        "" if clean else " (deadline reached)",
        daemon.writer.commits,
        daemon.writer.inline_commits,
    )
    return 0
