"""The actors of one running loop, built together with the channels that
join them: ingest → analyzer → planner → executor, the scheduler feeding the
analyzer, the checkpointer, the auditor (the audit trail's group commit),
and the ring drain when the ring is on.

Guarantees: every channel is bounded (``loop.channel_capacity``; the ingest
intake 16 times that) and carries batches; building the actors starts
nothing (loop/tree.py starts each under the supervisor, in shutdown order).

Must never: start a task, or hand an actor anything but the shared state it
reads through (loop/state.py).
"""

from __future__ import annotations

from dataclasses import dataclass

import trio

from knhkd.loop.analyzer import Analyzer
from knhkd.loop.auditor import Auditor
from knhkd.loop.checkpointer import Checkpointer
from knhkd.loop.cycle import AnalyzerMessage, BatchLinks, Cycle, CycleScheduler
from knhkd.loop.executor import Executor
from knhkd.loop.ingest import Ingest
from knhkd.loop.planner import Planner
from knhkd.loop.ring_drain import RingDrain
from knhkd.loop.startup import Opened
from knhkd.loop.state import LoopState
from knhkd.validate.pipeline import default_pipeline


@dataclass(frozen=True)
class Actors:
    ingest: Ingest
    analyzer: Analyzer
    planner: Planner
    executor: Executor
    scheduler: CycleScheduler
    checkpointer: Checkpointer
    # None when [ring] is off.
    ring_drain: RingDrain | None
    auditor: Auditor


def build_actors(state: LoopState, opened: Opened) -> Actors:
    cfg = state.settings()
    ctx = state.ctx
    capacity = cfg.loop.channel_capacity
    to_analyzer_send, to_analyzer_recv = trio.open_memory_channel[AnalyzerMessage](capacity)
    to_planner_send, to_planner_recv = trio.open_memory_channel[Cycle](capacity)
    to_exec_send, to_exec_recv = trio.open_memory_channel[Cycle](capacity)
    # Ingest requests committed since the last cycle, for its span's links.
    batch_links = BatchLinks()
    ingest = Ingest(
        opened.store,
        opened.writer,
        opened.receipts,
        ctx.metrics,
        to_analyzer_send,
        capacity=capacity * 16,
        shapes_digest=state.observation_shapes_digest,
        evidence_sample=lambda: state.settings().analyze.evidence_sample,
        batch_links=batch_links,
        figures=state.figures,
    )
    ring_drain = None
    if opened.ring is not None:
        ring_drain = RingDrain(
            state.settings,
            opened.ring,
            opened.store,
            ingest,
            ctx.metrics,
            # The same SHACL gate as HTTP ingest.
            shacl_gate=lambda: state.shapes_gate,
            figures=state.figures,
        )
    return Actors(
        ingest=ingest,
        analyzer=Analyzer(ctx, to_analyzer_recv, to_planner_send, batch_links),
        planner=Planner(ctx, to_planner_recv, to_exec_send),
        executor=Executor(
            ctx,
            state.set_knowledge,
            default_pipeline(),
            to_exec_recv,
            inputs=state.validation_inputs,
            before_cycle=state.advance_relaxations,
            take_baseline=state.figures.take_baseline,
        ),
        scheduler=CycleScheduler(to_analyzer_send, lambda: state.settings().loop.interval_s),
        checkpointer=Checkpointer(ctx),
        ring_drain=ring_drain,
        auditor=Auditor(state.settings, opened.store, opened.writer, opened.receipts, ctx.metrics),
    )
