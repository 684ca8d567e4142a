"""Layer 5: the running loop. The actors that carry the MAPE-K flow (ingest,
ring drain, analyzer, planner, executor, checkpointer, the store writer),
their supervisor, the cycle and scheduler, start-up and the nursery tree, and
the ``Daemon`` the API calls.

Every actor runs in one trio nursery under ``supervisor.Supervisor``; actors
talk over bounded memory channels that carry batches, and every write goes
through the one store writer (``writer``). The decisions themselves are made
by the pure packages below (``monitor``, ``analyze``, ``plan``, ``validate``,
``governance``, ``execute``); this layer feeds them, times them, and stores
what they decide.
"""
