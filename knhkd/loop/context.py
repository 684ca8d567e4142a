"""What every loop actor shares, passed as one value.

Guarantees: the configuration and the knowledge are read through callables,
so an actor always sees the current ones (a SIGHUP reload, a promotion)
without being rebuilt. Must never: hold state of its own.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

from knhkd.config import Config
from knhkd.loop.knowledge_state import KnowledgeState
from knhkd.loop.writer import StoreWriter
from knhkd.receipts.log import ReceiptLog
from knhkd.store.env import Store
from knhkd.telemetry.metrics import Metrics


@dataclass(frozen=True)
class LoopContext:
    config: Callable[[], Config]
    store: Store
    writer: StoreWriter
    receipts: ReceiptLog
    knowledge: Callable[[], KnowledgeState]
    metrics: Metrics
