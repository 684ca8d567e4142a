"""knhkd: a single-node, self-governing knowledge daemon.

An observation is judged by ``monitor`` (HTTP or the shared-memory ring), is
made durable by ``store``, feeds the detectors of ``analyze``, whose patterns
``plan`` turns into ΔΣ proposals, which ``validate`` judges in seven stages and
``execute`` promotes against ``knowledge``. Every decision leaves a signed,
chained record in ``receipts``. ``loop`` runs the actors that carry this flow
(the decisions are pure; the loop does the I/O); ``api`` and ``cli`` are how
operators reach it. ``.importlinter`` holds the layers.
"""

__version__ = "0.1.0"
